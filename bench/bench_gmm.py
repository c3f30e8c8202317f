"""Benchmark: ``mixnorm.fit_gmm`` vs scikit-learn's ``GaussianMixture`` (not a test).

Same data, same process, interleaved repetitions; prints per case the median fit
times, their ratio (sklearn / ours, > 1 means ours is faster) and both mean
log-likelihoods (averaged over seeds), then writes ``results/bench/gmm_<host>.json``
and ``.md`` with the hardware named.  On a machine with CuPy and a GPU it also times
our fit on the GPU (median of synchronised runs) in the same run.

    python bench/bench_gmm.py [--repeats 15] [--blas-threads N] [--out results/bench]

Both fits use the same BLAS; on a machine shared with other work, ``--blas-threads 1``
(both sides limited through threadpoolctl) gives steadier numbers than BLAS threads
that wait for busy cores.
"""
import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import OUT_DIR, blas_limit, environment, write_record  # noqa: E402
from mixnorm import gmm as G  # noqa: E402

CASES = [(16384, 128, 3), (65536, 64, 3), (4096, 448, 5)]


def activations(n, d, seed=0):
    """Rectified, correlated activations (float32): what MN sees after a conv + ReLU."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, d)).astype(np.float32) / np.sqrt(d)
    pre = rng.standard_normal((n, d)).astype(np.float32) @ w + rng.normal(0.2, 0.5, d)
    return np.maximum(pre, 0).astype(np.float32)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_case(n, d, K, repeats, gpu):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture
    x = activations(n, d)
    ours_t, sk_t, ours_ll, sk_ll = [], [], [], []
    for r in range(repeats):
        t, g = timed(lambda: G.fit_gmm(x, K, kmeans_iters=1, em_iters=1, seed=r))
        ours_t.append(t)
        ours_ll.append(G.log_likelihood(x, g))
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', ConvergenceWarning)
            t, s = timed(lambda: GaussianMixture(
                n_components=K, covariance_type='diag', init_params='k-means++',
                max_iter=1, n_init=1, random_state=r).fit(x))
        sk_t.append(t)
        sk_ll.append(s.score(x))
    row = {'n': n, 'd': d, 'K': K, 'dtype': 'float32', 'kmeans_iters': 1, 'em_iters': 1,
           'repeats': repeats,
           'ours_cpu_s': float(np.median(ours_t)), 'sklearn_cpu_s': float(np.median(sk_t)),
           'ours_ll': float(np.mean(ours_ll)), 'sklearn_ll': float(np.mean(sk_ll))}
    row['speedup_vs_sklearn'] = row['sklearn_cpu_s'] / row['ours_cpu_s']
    if gpu:
        import cupy
        xg = cupy.asarray(x)
        G.fit_gmm(xg, K, 1, 1, seed=0)                     # compile kernels, warm cuBLAS
        ts, lls = [], []
        for r in range(repeats):
            cupy.cuda.Device().synchronize()
            t, g = timed(lambda: (G.fit_gmm(xg, K, 1, 1, seed=r),
                                  cupy.cuda.Device().synchronize())[0])
            ts.append(t)
            lls.append(G.log_likelihood(xg, g))
        row.update(ours_gpu_s=float(np.median(ts)), ours_gpu_ll=float(np.mean(lls)),
                   gpu_speedup_vs_sklearn_cpu=row['sklearn_cpu_s'] / float(np.median(ts)))
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--out', default=OUT_DIR)
    p.add_argument('--no-write', action='store_true', help='print only')
    p.add_argument('--blas-threads', type=int, default=None,
                   help='limit the BLAS threads of both fits (default: as configured)')
    args = p.parse_args(argv)
    env = environment.describe()
    gpu = env['gpu'] is not None
    print('# fit_gmm vs sklearn GaussianMixture(diag, k-means++, max_iter=1), float32')
    print('# cpu: %s x%s; gpu: %s; BLAS threads: %s' % (
        env['cpu'], env['cpu_count'], env['gpu']['name'] if gpu else 'none',
        args.blas_threads or 'as configured'))
    with blas_limit(args.blas_threads):
        rows = [bench_case(n, d, K, args.repeats, gpu) for n, d, K in CASES]
    for (n, d, K), row in zip(CASES, rows):
        row['blas_threads'] = args.blas_threads
        line = ('n=%-6d d=%-4d K=%d  ours %.2f ms  sklearn %.2f ms  ratio sklearn/ours %.2fx'
                '  ll ours %.3f sklearn %.3f' % (n, d, K, 1e3 * row['ours_cpu_s'],
                                                 1e3 * row['sklearn_cpu_s'],
                                                 row['speedup_vs_sklearn'], row['ours_ll'],
                                                 row['sklearn_ll']))
        if gpu:
            line += '  | gpu %.2f ms (sklearn cpu / ours gpu %.1fx)' % (
                1e3 * row['ours_gpu_s'], row['gpu_speedup_vs_sklearn_cpu'])
        print(line, flush=True)
    if args.no_write:
        return rows
    import sklearn
    for r in rows:
        r['ours_cpu_ms'], r['sklearn_cpu_ms'] = 1e3 * r['ours_cpu_s'], 1e3 * r['sklearn_cpu_s']
        r['ours_gpu_ms'] = 1e3 * r['ours_gpu_s'] if 'ours_gpu_s' in r else None
    columns = [('n', 'n', '%d'), ('d', 'd', '%d'), ('K', 'K', '%d'),
               ('ours CPU (ms)', 'ours_cpu_ms', '%.2f'),
               ('sklearn CPU (ms)', 'sklearn_cpu_ms', '%.2f'),
               ('sklearn / ours', 'speedup_vs_sklearn', '%.2fx'),
               ('LL ours', 'ours_ll', '%.3f'), ('LL sklearn', 'sklearn_ll', '%.3f'),
               ('ours GPU (ms)', 'ours_gpu_ms', '%.2f')]
    write_record('gmm_%s' % ('gpu' if gpu else 'cpu'),
                 'fit_gmm vs scikit-learn GaussianMixture', env, rows, columns,
                 'Median of %d interleaved fits on the same float32 activations (rectified '
                 'Gaussian), kmeans_iters = em_iters = 1; scikit-learn %s with '
                 "covariance_type='diag', init_params='k-means++', max_iter=1, n_init=1."
                 % (args.repeats, sklearn.__version__), out_dir=args.out,
                 extra={'sklearn': sklearn.__version__, 'blas_threads': args.blas_threads})
    return rows


if __name__ == '__main__':
    main()
