"""Short demo of the library: fit a mixture to rectified activations and compare
what batch normalization and mixture normalization see (the README's main command
until the Table 2 reproduction lands).

    python scripts/demo.py [--seed 0] [--components 3]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import mixnorm  # noqa: E402
from experiments import cli  # noqa: E402


def rectified_activations(rng, n_samples=64, channels=16, size=8):
    """The input of a conv layer after ReLU -> conv: a linear mix of rectified Gaussians,
    laid out (N*H*W, C) as MN sees it (paper Sec. 3.2)."""
    pre = rng.standard_normal((n_samples * size * size, channels)) * 1.5 + 0.3
    mix = rng.standard_normal((channels, channels)) / np.sqrt(channels)
    return (np.maximum(pre, 0) @ mix + np.maximum(-pre[:, :1], 0) * 2.0).astype(np.float32)


@cli.entry_point
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--components', type=int, default=3)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    x = rectified_activations(rng)
    n, d = x.shape
    print('activations: %d points in R^%d (rectified Gaussian mix), seed %d' % (n, d, args.seed))

    t = time.perf_counter()
    one = mixnorm.fit_gmm(x, 1, seed=args.seed)
    g = mixnorm.fit_gmm(x, args.components, kmeans_iters=1, em_iters=1, seed=args.seed)
    dt = time.perf_counter() - t
    print('fitted K=%d (EM iter. 2 = 1 K-means + 1 EM) in %.1f ms; K\' = %d after pruning'
          % (args.components, 1e3 * dt, g.n_components))
    print('mean log-likelihood per point: single Gaussian (BN) %.3f, mixture (MN) %.3f'
          % (mixnorm.log_likelihood(x, one), mixnorm.log_likelihood(x, g)))
    order = np.argsort(-g.weights)
    for k in order:
        print('  component: weight %.3f  |mean| %.3f  mean std %.3f'
              % (g.weights[k], np.linalg.norm(g.means[k]), np.sqrt(g.variances[k]).mean()))

    # BN and MN layers (training mode) on the same activations, as a (N, C) batch.
    import chainer.links as L
    bn = L.BatchNormalization(d)(x).array
    mn_link = mixnorm.MixtureNormalization(d, n_components=args.components, em_iters=2,
                                           seed=args.seed)
    mn = mn_link(x).array
    nu = mixnorm.responsibilities(x, mn_link.last_gmm)
    lam, mu, var = mixnorm.functions.mixture_moments(x, nu)

    def skew(a):
        a = a - a.mean(0)
        return float(((a ** 3).mean(0) / (a.var(0) ** 1.5 + 1e-12)).mean())

    print('\n%-28s %10s %10s %10s' % ('per-channel statistic', 'input', 'BN', 'MN'))
    for name, f in (('mean (avg over channels)', lambda a: float(a.mean(0).mean())),
                    ('std (avg over channels)', lambda a: float(a.std(0).mean())),
                    ('skewness (avg)', skew)):
        print('%-28s %10.3f %10.3f %10.3f' % (name, f(x), f(bn), f(mn)))
    hard = nu.argmax(1)
    comps = [k for k in range(g.n_components) if (hard == k).sum() > 1]
    bn_within = np.mean([bn[hard == k].std(0).mean() for k in comps])
    mn_within = np.mean([((x[hard == k] - mu[k]) / np.sqrt(var[k] + 2e-5)).std(0).mean()
                         for k in comps])  # x^k of Eq. 35 on the points of component k
    print('%-28s %10s %10.3f %10.3f' % ('std within a mode (avg)', '', bn_within, mn_within))
    print('\nMN standardizes each mode of variation separately; BN uses one mean and std.')


if __name__ == '__main__':
    main()
