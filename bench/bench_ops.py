"""Device operations per MixtureNormalization layer, counted on the CPU (not a timing).

On a GPU one MN layer is launch-bound (each CuPy operation costs a few microseconds of
host time whatever its size), so the count of device operations decides the GPU MN/BN
ratio more than the FLOPs do.  This runs the layer's training step (fit, normalizing
forward, backward) and an inference forward on NumPy through the counting stand-in of
``mixnorm.testing.opcount`` and prints, per shape and K (EM iter. 2), the kernel launches and
host<->device copies the same code would dispatch on the GPU.  Writes
``results/bench/ops.{json,md}``.

    python bench/bench_ops.py [--no-write]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


from _common import OUT_DIR, environment, write_record  # noqa: E402
from mixnorm.testing import opcount  # noqa: E402

SHAPES = [(256, 128, 8, 8), (64, 448, 8, 8), (128, 448, 8, 8)]


count = opcount.count_layer


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
                     'stand-in of mixnorm.testing.opcount: a launch is one device operation '
                     '(about one CuPy kernel launch), a copy one host<->device transfer, a '
                     'sync a device-to-host copy. Training step = fit + normalizing forward '
                     '+ backward; inference = one forward with the queue. EM iter. 2.',
                     out_dir=args.out)
    return rows


if __name__ == '__main__':
    main()
