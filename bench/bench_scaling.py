"""Data-parallel scaling of a smoke-sized row: samples per second with P = 1 and P = 2
processes, measured side by side in one run (not a test).

Each P trains the same row (default Table 2 MN-2, CIFAR-10 CNN, generated images) for
three epochs of the same global batch, once as one process and once under
``mpiexec -n P ... --communicator naive``, and the training throughput is read off
the run's log (images per second of epochs 2-3, after start-up; evaluation and
snapshots included, as in a real run).  Writes ``results/bench/scaling_cpu.{json,md}``.

    python bench/bench_scaling.py [--row table2/cifar10/MN-2] [--processes 1,2]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import OUT_DIR, REPO, environment, write_record  # noqa: E402


def train_once(row, P, out, n_train, batch, epochs):
    cmd = [sys.executable, '-m', 'experiments.train',
           os.path.join(REPO, 'configs', row + '.yaml'), '--out', out, '--synthetic',
           '--no-progress', '--preset', 'smoke',
           '--set', 'data.subset=[%d, 256]' % n_train, '--set', 'data.batch_size=%d' % batch,
           '--set', 'data.test_batch_size=128', '--set', 'train.epochs=%d' % epochs,
           '--set', 'train.snapshot_every=%d' % epochs]
    if P > 1:
        mpiexec = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
        cmd = [mpiexec if os.path.exists(mpiexec) else 'mpiexec', '-n', str(P)] + cmd + \
            ['--communicator', 'naive']
    # each of the P processes gets its share of the cores (no BLAS oversubscription)
    threads = str(max(1, (os.cpu_count() or 1) // P))
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit('P=%d failed:\n%s' % (P, r.stderr[-3000:]))
    with open(os.path.join(out, 'log.json')) as f:
        log = json.load(f)
    dt = log[-1]['elapsed_time'] - log[0]['elapsed_time']
    return {'processes': P, 'row': row, 'images_per_epoch': n_train, 'global_batch': batch,
            'per_rank_batch': batch // P, 'epochs_timed': len(log) - 1,
            'blas_threads_per_process': int(threads),
            'seconds': dt, 'images_per_s': n_train * (len(log) - 1) / dt}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--row', default='table2/cifar10/MN-2')
    p.add_argument('--processes', default='1,2')
    p.add_argument('--images', type=int, default=1024)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--out', default=OUT_DIR)
    p.add_argument('--no-write', action='store_true')
    args = p.parse_args(argv)
    rows, tmp = [], tempfile.mkdtemp()
    try:
        for P in [int(s) for s in args.processes.split(',')]:
            rows.append(train_once(args.row, P, os.path.join(tmp, 'P%d' % P), args.images,
                                   args.batch, args.epochs))
            print('P=%d  %.1f images/s  (%d images x %d epochs in %.1f s, %d per process '
                  'a step)' % (P, rows[-1]['images_per_s'], args.images,
                               rows[-1]['epochs_timed'], rows[-1]['seconds'],
                               rows[-1]['per_rank_batch']), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in rows:
        r['speedup'] = r['images_per_s'] / rows[0]['images_per_s']
    if not args.no_write:
        write_record('scaling_cpu', 'Data-parallel throughput of a smoke-sized row',
                     environment.describe(), rows,
                     [('row', 'row', '%s'), ('processes', 'processes', '%d'),
                      ('global batch', 'global_batch', '%d'),
                      ('per process', 'per_rank_batch', '%d'),
                      ('BLAS threads per process', 'blas_threads_per_process', '%d'),
                      ('images/s', 'images_per_s', '%.1f'), ('vs P=1', 'speedup', '%.2f')],
                     'Synthetic images, the smoke preset with %d training images, batch %d, '
                     'epochs 2-%d timed from the log (evaluation and snapshots included). All '
                     'processes on this one machine with the naive communicator, so P '
                     'processes share its cores (each gets cores / P BLAS threads).' % (args.images, args.batch, args.epochs),
                     out_dir=args.out)
    return rows


if __name__ == '__main__':
    main()
