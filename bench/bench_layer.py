"""Benchmark: forward+backward of one MixtureNormalization layer vs Chainer's
BatchNormalization on the same input (not a test).

For each shape (CIFAR CNN conv3; DenseNet-40's last BN at batch 64 and 128) and
K = 1..5 (EM iter. 2) it prints the median times of BN and MN, the MN/BN ratio measured
side by side in one run, and where MN's time goes: the mixture fit (layout + K-means++ /
K-means / EM + posteriors), the normalizing forward, and the backward; then the
inference forward of both (MN with a full queue of T = 10 batches, and with a queue of
one batch), and beside the times the device operations of MN's training step and
inference forward counted by ``mixnorm.testing.opcount`` (launches, host syncs, copies),
which decide the GPU times.  Runs on the CPU, and on the GPU too when CuPy sees one;
writes ``results/bench/layer_<cpu|gpu>.{json,md}``.

BN and MN take turns, one call each, for ``--repeats`` rounds (side by side, so that
both see the same machine); the times are medians of wall time.  On the CPU the record
also holds each side's minimum and median process time (``*_cpu_min_ms``,
``*_cpu_med_ms``) and their ratios: on a shared machine the process-time minimum is the
steadiest figure.  ``--blas-threads 1`` limits BLAS (both sides) to one thread.

    python bench/bench_layer.py [--repeats 7] [--device cpu|gpu|all] [--blas-threads N]
                                [--shapes 64x448x8x8,...] [--K 1,3] [--no-write]
"""
import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import (OUT_DIR, blas_limit, environment, median_time,  # noqa: E402
                     write_record)
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


def side_by_side(fns, repeats, sync=None, warmup=1):
    """Time the callables of ``fns`` (a dict) taking turns, one call each per round: per
    name ``(median wall s, min process s, median process s)``."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if sync:
                sync()
            t, c = time.perf_counter(), time.process_time()
            fn()
            if sync:
                sync()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return {k: (float(np.median(wall[k])), min(cpu[k]), float(np.median(cpu[k])))
            for k in fns}


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
    mn1 = mixnorm.MixtureNormalization(shape[1], n_components=K, em_iters=2, seed=0)
    mn1.to_device(device)
    step = side_by_side({'bn': lambda: fwd_bwd(bn), 'mn': lambda: fwd_bwd(mn)}, repeats,
                        sync)
    t_bn, t_mn = step['bn'][0], step['mn'][0]

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
    while mn.n_fits < mn.queue_length:          # a full queue: T * K components
        fwd_bwd(mn)
    fwd_bwd(mn1)                                # a queue of one batch: K components
    test = side_by_side({'bn': lambda: infer(bn), 'mn': lambda: infer(mn),
                         'mn1': lambda: infer(mn1)}, repeats, sync)
    t_bn_test, t_mn_test, t_mn1_test = test['bn'][0], test['mn'][0], test['mn1'][0]
    ops = counted(K)
    row = {'shape': 'x'.join(map(str, shape)), 'K': K, 'bn_ms': 1e3 * t_bn,
           'mn_ms': 1e3 * t_mn, 'ratio': t_mn / t_bn, 'fit_ms': 1e3 * t_fit,
           'normalize_ms': 1e3 * t_norm, 'backward_ms': 1e3 * t_bwd,
           'bn_test_ms': 1e3 * t_bn_test, 'mn_test_ms': 1e3 * t_mn_test,
           'test_ratio': t_mn_test / t_bn_test, 'mn_test1_ms': 1e3 * t_mn1_test,
           'test1_ratio': t_mn1_test / t_bn_test, 'train_launch': ops['train_launch'],
           'train_syncs': ops['train_syncs'], 'test_launch': ops['test_launch'],
           'test_copies': ops['test_copies']}
    if xp is np:                                # process time: the CPU's own work
        for key, times, name in (('bn', step, 'bn'), ('mn', step, 'mn'),
                                 ('bn_test', test, 'bn'), ('mn_test', test, 'mn'),
                                 ('mn1_test', test, 'mn1')):
            row[key + '_cpu_min_ms'] = 1e3 * times[name][1]
            row[key + '_cpu_med_ms'] = 1e3 * times[name][2]
        for stat in ('min', 'med'):
            for ratio, mn_key, bn_key in (('ratio', 'mn', 'bn'),
                                          ('test_ratio', 'mn_test', 'bn_test'),
                                          ('test1_ratio', 'mn1_test', 'bn_test')):
                row['%s_cpu_%s' % (ratio, stat)] = row['%s_cpu_%s_ms' % (mn_key, stat)] / \
                    row['%s_cpu_%s_ms' % (bn_key, stat)]
    return row


def run(device, repeats, env, out, write, shapes=SHAPES, Ks=(1, 2, 3, 4, 5),
        blas_threads=None):
    if device == 'gpu':
        import cupy
        xp, sync = cupy, cupy.cuda.Device().synchronize
    else:
        xp, sync = np, None
    print('# %s: MixtureNormalization (EM iter. 2) vs BatchNormalization, fwd+bwd, float32;'
          ' BLAS threads: %s' % (device.upper(), blas_threads or 'as configured'))
    rows = []
    for shape in shapes:
        for K in Ks:
            r = bench(shape, K, xp, repeats, sync)
            r['device'] = device
            r['blas_threads'] = blas_threads
            rows.append(r)
            print('%-14s K=%d  BN %7.2f ms  MN %7.2f ms  MN/BN %5.2fx  | fit %6.2f  '
                  'normalize %6.2f  backward %6.2f ms | inference BN %6.2f  MN %6.2f ms  '
                  'MN/BN %5.2fx (queue of one batch: MN %6.2f ms, %5.2fx) | counted: step '
                  '%d launches, %d syncs; inference %d launches, %d copies' % (
                      r['shape'], K, r['bn_ms'], r['mn_ms'], r['ratio'], r['fit_ms'],
                      r['normalize_ms'], r['backward_ms'], r['bn_test_ms'],
                      r['mn_test_ms'], r['test_ratio'], r['mn_test1_ms'],
                      r['test1_ratio'], r['train_launch'], r['train_syncs'],
                      r['test_launch'], r['test_copies']), flush=True)
            if xp is np:
                print('%-14s      process time min/median: step BN %.2f/%.2f MN %.2f/%.2f ms'
                      ' (MN/BN %.2fx/%.2fx) | inference BN %.2f/%.2f MN %.2f/%.2f ms '
                      '(%.2fx/%.2fx), one-batch queue MN %.2f/%.2f ms (%.2fx/%.2fx)' % (
                          '', r['bn_cpu_min_ms'], r['bn_cpu_med_ms'], r['mn_cpu_min_ms'],
                          r['mn_cpu_med_ms'], r['ratio_cpu_min'], r['ratio_cpu_med'],
                          r['bn_test_cpu_min_ms'], r['bn_test_cpu_med_ms'],
                          r['mn_test_cpu_min_ms'], r['mn_test_cpu_med_ms'],
                          r['test_ratio_cpu_min'], r['test_ratio_cpu_med'],
                          r['mn1_test_cpu_min_ms'], r['mn1_test_cpu_med_ms'],
                          r['test1_ratio_cpu_min'], r['test1_ratio_cpu_med']), flush=True)
    if write:
        columns = [('shape', 'shape', '%s'), ('K', 'K', '%d'), ('BN (ms)', 'bn_ms', '%.2f'),
                   ('MN (ms)', 'mn_ms', '%.2f'), ('MN / BN', 'ratio', '%.2fx'),
                   ('MN / BN, process time min', 'ratio_cpu_min', '%.2fx'),
                   ('MN fit (ms)', 'fit_ms', '%.2f'),
                   ('MN normalize (ms)', 'normalize_ms', '%.2f'),
                   ('MN backward (ms)', 'backward_ms', '%.2f'),
                   ('BN inference (ms)', 'bn_test_ms', '%.2f'),
                   ('MN inference, full queue (ms)', 'mn_test_ms', '%.2f'),
                   ('MN / BN inference', 'test_ratio', '%.2fx'),
                   ('MN / BN inference, process time min', 'test_ratio_cpu_min', '%.2fx'),
                   ('MN inference, one-batch queue (ms)', 'mn_test1_ms', '%.2f'),
                   ('MN / BN inference, one-batch queue', 'test1_ratio', '%.2fx'),
                   ('step launches (counted)', 'train_launch', '%d'),
                   ('step syncs', 'train_syncs', '%d'),
                   ('inference launches', 'test_launch', '%d'),
                   ('inference copies', 'test_copies', '%d')]
        write_record('layer_%s' % device, 'MN vs BN layer, forward + backward (%s)'
                     % device.upper(), env, rows, columns,
                     'Median wall time of %d rounds, BN and MN taking turns (process-time '
                     'minima and medians in the JSON on the CPU); BLAS threads: %s; '
                     'float32 rectified Gaussian input; EM iter. 2 (1 K-means + 1 EM); '
                     'inference with a full queue (T = 10 batches) and with one batch; '
                     'Chainer BN %s.'
                     % (repeats, blas_threads or 'as configured',
                        'with its own CUDA kernels (no cuDNN)' if device == 'gpu'
                        else 'on NumPy'), out_dir=out)
    return rows


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.lower().split('x'))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError('a shape is N x C [x spatial...], e.g. 64x448x8x8; '
                                         'got %r' % text)
    return shape


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--device', choices=['cpu', 'gpu', 'all'], default='all')
    p.add_argument('--shapes', type=lambda t: [_shape(v) for v in t.split(',')],
                   default=SHAPES, help='comma-separated shapes (default: %s)'
                   % ','.join('x'.join(map(str, s)) for s in SHAPES))
    p.add_argument('--K', type=lambda t: [int(v) for v in t.split(',')],
                   default=[1, 2, 3, 4, 5], help='comma-separated K (default 1,2,3,4,5)')
    p.add_argument('--blas-threads', type=int, default=None,
                   help='limit the BLAS threads of both layers (default: as configured)')
    p.add_argument('--out', default=OUT_DIR)
    p.add_argument('--no-write', action='store_true')
    args = p.parse_args(argv)
    if args.repeats < 1 or any(k < 1 for k in args.K):
        sys.exit('bench_layer: --repeats and every --K must be >= 1')
    env = environment.describe()
    devices = ['cpu', 'gpu'] if args.device == 'all' else [args.device]
    if 'gpu' in devices and env['gpu'] is None:
        if args.device == 'gpu':
            sys.exit('bench_layer: --device gpu needs CuPy and a CUDA device')
        devices.remove('gpu')
    with blas_limit(args.blas_threads):
        for d in devices:
            run(d, args.repeats, env, args.out, not args.no_write, args.shapes, args.K,
                args.blas_threads)


if __name__ == '__main__':
    main()
