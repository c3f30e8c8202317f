"""Benchmark: forward+backward of one MixtureNormalization layer vs Chainer's
BatchNormalization on the same input (not a test).

For each shape (CIFAR CNN conv3; DenseNet-40's last BN at batch 64 and 128) and
K = 1..5 (EM iter. 2) it prints the median times of BN and MN, the MN/BN ratio measured
side by side in one run, and where MN's time goes: the mixture fit (layout + K-means++ /
K-means / EM + posteriors), the normalizing forward, and the backward; then the
inference forward of both (MN with its queue after one training step), and beside the
times the device operations of MN's training step and inference forward counted by
``mixnorm.testing.opcount`` (launches, host syncs, copies), which decide the GPU times.
Runs on the CPU, and on the GPU too when CuPy sees one; writes
``results/bench/layer_<cpu|gpu>.{json,md}``.

    python bench/bench_layer.py [--repeats 7] [--device cpu|gpu|all]
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import OUT_DIR, environment, median_time, write_record  # noqa: E402
import mixnorm  # noqa: E402
import chainer  # noqa: E402
import chainer.links as L  # noqa: E402
from mixnorm import functions  # noqa: E402
from mixnorm.testing import opcount  # noqa: E402

SHAPES = [(256, 128, 8, 8), (64, 448, 8, 8), (128, 448, 8, 8)]


@functools.lru_cache(maxsize=None)
def counted(K):
    """MN's device operations at K (counted on a small input: the counts do not depend on
    the shape, which tests/test_device_paths.py checks)."""
    return opcount.count_layer((64, 32, 4, 4), K)


def bench(shape, K, xp, repeats, sync):
    rng = np.random.default_rng(0)
    x = xp.asarray(np.maximum(rng.standard_normal(shape), 0).astype(np.float32))
    gy = xp.asarray(rng.standard_normal(shape).astype(np.float32))
    device = chainer.get_device('@cupy:0' if xp is not np else '@numpy')

    def fwd_bwd(link):
        xv = chainer.Variable(x)
        y = link(xv)
        y.grad = gy
        y.backward()

    bn = L.BatchNormalization(shape[1])
    bn.to_device(device)
    mn = mixnorm.MixtureNormalization(shape[1], n_components=K, em_iters=2, seed=0)
    mn.to_device(device)
    t_bn = median_time(lambda: fwd_bwd(bn), repeats, sync)
    t_mn = median_time(lambda: fwd_bwd(mn), repeats, sync)

    # where MN's time goes
    def fit():
        if K == 1:                  # the link needs no fit: nu = 1
            return xp.ones((x.size // shape[1], 1), dtype=x.dtype)
        pts = mn._points(x)
        return mixnorm.fit_gmm(pts, K, mn.kmeans_iters, mn.gmm_em_iters,
                               min_weight=mn.min_weight, min_count=mn.min_count, eps=mn.eps,
                               seed=0, return_responsibilities=True)[1]
    t_fit = median_time(fit, repeats, sync)
    resp = fit()

    def normalize():
        return functions.mixture_normalization(chainer.Variable(x), mn.gamma, mn.beta, resp)
    t_norm = median_time(normalize, repeats, sync)

    def norm_bwd():
        y = normalize()
        y.grad = gy
        y.backward()
    t_bwd = max(median_time(norm_bwd, repeats, sync) - t_norm, 0.0)

    def infer(link):
        with chainer.using_config('train', False), chainer.no_backprop_mode():
            link(x)
    t_bn_test = median_time(lambda: infer(bn), repeats, sync)
    t_mn_test = median_time(lambda: infer(mn), repeats, sync)
    ops = counted(K)
    return {'shape': 'x'.join(map(str, shape)), 'K': K, 'bn_ms': 1e3 * t_bn,
            'mn_ms': 1e3 * t_mn, 'ratio': t_mn / t_bn, 'fit_ms': 1e3 * t_fit,
            'normalize_ms': 1e3 * t_norm, 'backward_ms': 1e3 * t_bwd,
            'bn_test_ms': 1e3 * t_bn_test, 'mn_test_ms': 1e3 * t_mn_test,
            'test_ratio': t_mn_test / t_bn_test, 'train_launch': ops['train_launch'],
            'train_syncs': ops['train_syncs'], 'test_launch': ops['test_launch'],
            'test_copies': ops['test_copies']}


def run(device, repeats, env, out, write):
    if device == 'gpu':
        import cupy
        xp, sync = cupy, cupy.cuda.Device().synchronize
    else:
        xp, sync = np, None
    print('# %s: MixtureNormalization (EM iter. 2) vs BatchNormalization, fwd+bwd, float32'
          % device.upper())
    rows = []
    for shape in SHAPES:
        for K in range(1, 6):
            r = bench(shape, K, xp, repeats, sync)
            r['device'] = device
            rows.append(r)
            print('%-14s K=%d  BN %7.2f ms  MN %7.2f ms  MN/BN %5.2fx  | fit %6.2f  '
                  'normalize %6.2f  backward %6.2f ms | inference BN %6.2f  MN %6.2f ms  '
                  'MN/BN %5.2fx | counted: step %d launches, %d syncs; inference %d '
                  'launches, %d copies' % (
                      r['shape'], K, r['bn_ms'], r['mn_ms'], r['ratio'], r['fit_ms'],
                      r['normalize_ms'], r['backward_ms'], r['bn_test_ms'],
                      r['mn_test_ms'], r['test_ratio'], r['train_launch'],
                      r['train_syncs'], r['test_launch'], r['test_copies']), flush=True)
    if write:
        columns = [('shape', 'shape', '%s'), ('K', 'K', '%d'), ('BN (ms)', 'bn_ms', '%.2f'),
                   ('MN (ms)', 'mn_ms', '%.2f'), ('MN / BN', 'ratio', '%.2fx'),
                   ('MN fit (ms)', 'fit_ms', '%.2f'),
                   ('MN normalize (ms)', 'normalize_ms', '%.2f'),
                   ('MN backward (ms)', 'backward_ms', '%.2f'),
                   ('BN inference (ms)', 'bn_test_ms', '%.2f'),
                   ('MN inference (ms)', 'mn_test_ms', '%.2f'),
                   ('MN / BN inference', 'test_ratio', '%.2fx'),
                   ('step launches (counted)', 'train_launch', '%d'),
                   ('step syncs', 'train_syncs', '%d'),
                   ('inference launches', 'test_launch', '%d'),
                   ('inference copies', 'test_copies', '%d')]
        write_record('layer_%s' % device, 'MN vs BN layer, forward + backward (%s)'
                     % device.upper(), env, rows, columns,
                     'Median of %d runs each, interleaved per case; float32 rectified '
                     'Gaussian input; EM iter. 2 (1 K-means + 1 EM); Chainer BN %s.'
                     % (repeats, 'with its own CUDA kernels (no cuDNN)' if device == 'gpu'
                        else 'on NumPy'), out_dir=out)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--device', choices=['cpu', 'gpu', 'all'], default='all')
    p.add_argument('--out', default=OUT_DIR)
    p.add_argument('--no-write', action='store_true')
    args = p.parse_args(argv)
    env = environment.describe()
    devices = ['cpu', 'gpu'] if args.device == 'all' else [args.device]
    if 'gpu' in devices and env['gpu'] is None:
        if args.device == 'gpu':
            sys.exit('bench_layer: --device gpu needs CuPy and a CUDA device')
        devices.remove('gpu')
    for d in devices:
        run(d, args.repeats, env, args.out, not args.no_write)


if __name__ == '__main__':
    main()
