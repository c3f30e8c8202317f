"""Device operations per MixtureNormalization layer, counted on the CPU (not a timing).

On a GPU one MN layer is launch-bound (each CuPy operation costs a few microseconds of
host time whatever its size), so the count of device operations decides the GPU MN/BN
ratio more than the FLOPs do.  This runs the layer's training step (fit, normalizing
forward, backward) and an inference forward on NumPy through the counting stand-in of
``bench/_opcount.py`` and prints, per shape and K (EM iter. 2), the kernel launches and
host<->device copies the same code would dispatch on the GPU.  Writes
``results/bench/ops.{json,md}``.

    python bench/bench_ops.py [--no-write]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import OUT_DIR, environment, write_record  # noqa: E402
import _opcount  # noqa: E402
import chainer  # noqa: E402
import mixnorm  # noqa: E402

SHAPES = [(256, 128, 8, 8), (64, 448, 8, 8), (128, 448, 8, 8)]


def count(shape, K):
    rng = np.random.default_rng(0)
    x = _opcount.to_device(np.maximum(rng.standard_normal(shape), 0).astype(np.float32))
    gy = _opcount.to_device(rng.standard_normal(shape).astype(np.float32))
    mn = mixnorm.MixtureNormalization(shape[1], n_components=K, em_iters=2, seed=0)
    for name in ('queue_weights', 'queue_means', 'queue_vars'):   # device persistents
        setattr(mn, name, _opcount.to_device(getattr(mn, name)))
    for p in mn.params():
        p.array = _opcount.to_device(p.array)
    out = {'shape': 'x'.join(map(str, shape)), 'K': K}
    with _opcount.counting():
        warm = mn(chainer.Variable(x))          # one-time work (cached constants) aside
        warm.grad = gy
        warm.backward()
        if K > 1:
            pts = mn._points(x)
            fit = _opcount.tally(lambda: mixnorm.fit_gmm(
                pts, K, mn.kmeans_iters, mn.gmm_em_iters, min_weight=mn.min_weight,
                min_count=mn.min_count, eps=mn.eps, seed=0, return_responsibilities=True))
        else:
            fit = {'launch': 0, 'h2d': 0, 'd2h': 0}
        state = {}

        def forward():
            state['y'] = mn(chainer.Variable(x))
        fwd = _opcount.tally(forward)

        def backward():
            state['y'].grad = gy
            state['y'].backward()
        bwd = _opcount.tally(backward)
        with chainer.using_config('train', False):
            test = _opcount.tally(lambda: mn(chainer.Variable(x)))
    out.update(fit_launch=fit['launch'], fit_copies=fit['h2d'] + fit['d2h'],
               fit_syncs=fit['d2h'],
               fwd_launch=fwd['launch'] - fit['launch'],
               bwd_launch=bwd['launch'],
               train_launch=fwd['launch'] + bwd['launch'],
               train_copies=fwd['h2d'] + fwd['d2h'] + bwd['h2d'] + bwd['d2h'],
               train_syncs=fwd['d2h'] + bwd['d2h'],
               test_launch=test['launch'], test_copies=test['h2d'] + test['d2h'])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=OUT_DIR)
    p.add_argument('--no-write', action='store_true')
    args = p.parse_args(argv)
    rows = []
    print('# device operations per MN layer (EM iter. 2), counted on NumPy')
    for shape in SHAPES:
        for K in range(1, 6):
            r = count(shape, K)
            rows.append(r)
            print('%-14s K=%d  train: %3d launches (fit %3d, rest of forward %2d, backward %2d)'
                  ', %2d copies (%d syncs) | inference: %3d launches, %d copies' % (
                      r['shape'], K, r['train_launch'], r['fit_launch'], r['fwd_launch'],
                      r['bwd_launch'], r['train_copies'], r['train_syncs'],
                      r['test_launch'], r['test_copies']), flush=True)
    if not args.no_write:
        columns = [('shape', 'shape', '%s'), ('K', 'K', '%d'),
                   ('train launches', 'train_launch', '%d'),
                   ('fit', 'fit_launch', '%d'), ('rest of forward', 'fwd_launch', '%d'),
                   ('backward', 'bwd_launch', '%d'),
                   ('train copies', 'train_copies', '%d'),
                   ('of which syncs', 'train_syncs', '%d'),
                   ('inference launches', 'test_launch', '%d'),
                   ('inference copies', 'test_copies', '%d')]
        write_record('ops', 'Device operations per MN layer (counted, not timed)',
                     environment.describe(), rows, columns,
                     'Counted by running the layer on NumPy through the array-module '
                     'stand-in of bench/_opcount.py: a launch is one device operation '
                     '(about one CuPy kernel launch), a copy one host<->device transfer, a '
                     'sync a device-to-host copy. Training step = fit + normalizing forward '
                     '+ backward; inference = one forward with the queue. EM iter. 2.',
                     out_dir=args.out)
    return rows


if __name__ == '__main__':
    main()
