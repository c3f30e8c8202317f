"""Communication of one synchronized normalization layer per training step, BN against MN.

Run with P processes (``mpiexec -n 2 python bench/bench_comm.py``).  For a
(64, 448, 8, 8) float32 activation per process it counts, per layer and training step
(forward + backward), the collective calls and the bytes each process sends and
receives, for ChainerMN's ``MultiNodeBatchNormalization`` and for
``mixnorm.MultiNodeMixtureNormalization`` at K = 1, 3 and 5 (EM iter. 2; the fit's
collectives and the normalizing forward and backward's told apart), and times the
step of each side by side.  The synchronized MN moves O(K C) numbers per collective
(and once per fit the K-means++ subsample, ``mixnorm.gmm.seeding_points(K)`` rows of
C + 1), never O(n C).  Rank 0 writes ``results/bench/comm_cpu.{json,md}`` with the hardware
named (``--no-write`` to skip).

    OMP_NUM_THREADS=1 mpiexec -n 2 python bench/bench_comm.py [--shape 64,448,8,8]

Give each process its share of the cores (``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``
= cores / P): P processes that each start a BLAS thread per core oversubscribe the
machine, and the MN step, which has more matrix products and collectives than BN's,
slows down by an order of magnitude.  The record notes the setting used.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import OUT_DIR, environment, median_time, write_record  # noqa: E402
import mixnorm  # noqa: E402
import chainer  # noqa: E402
import chainermn  # noqa: E402
import chainermn.global_except_hook  # noqa: E402


class CountedCommunicator:
    """Counts the collectives ChainerMN's BN issues (``_multi_node_mean``, in place)."""

    def __init__(self, comm):
        self.calls = self.bytes_sent = self.bytes_received = 0
        original = comm._multi_node_mean

        def counted(sendbuf, recvbuf):
            self.calls += 1
            self.bytes_sent += (recvbuf if sendbuf is None else sendbuf).nbytes
            self.bytes_received += recvbuf.nbytes
            return original(sendbuf, recvbuf)
        comm._multi_node_mean = counted

    def reset_counts(self):
        self.calls = self.bytes_sent = self.bytes_received = 0


def step(link, x, gy):
    link.cleargrads()
    y = link(chainer.Variable(x))
    y.grad = gy
    y.backward()


def measure(name, link, counter, x, gy, repeats, comm):
    fit_calls = [0]
    if hasattr(link, '_fit'):                       # MN: tell the fit's collectives apart
        fit = link._fit

        def counted_fit(*args, **kwargs):
            before = counter.calls
            try:
                return fit(*args, **kwargs)
            finally:
                fit_calls[0] += counter.calls - before
        link._fit = counted_fit
    step(link, x, gy)                               # warm-up
    counter.reset_counts()
    fit_calls[0] = 0
    step(link, x, gy)
    row = {'layer': name, 'calls': counter.calls, 'fit_calls': fit_calls[0],
           'normalize_calls': counter.calls - fit_calls[0], 'bytes_sent': counter.bytes_sent,
           'bytes_received': counter.bytes_received}
    comm.mpi_comm.Barrier()
    row['step_ms'] = 1e3 * median_time(lambda: step(link, x, gy), repeats,
                                       sync=comm.mpi_comm.Barrier)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--shape', default='64,448,8,8')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--out', default=OUT_DIR)
    p.add_argument('--no-write', action='store_true')
    args = p.parse_args(argv)
    comm = chainermn.create_communicator('naive')
    shape = tuple(int(s) for s in args.shape.split(','))
    rng = np.random.default_rng(comm.rank)
    x = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    C = shape[1]
    rows = []
    bn = chainermn.links.MultiNodeBatchNormalization(C, comm)
    rows.append(measure('MultiNodeBatchNormalization', bn, CountedCommunicator(comm), x, gy,
                        args.repeats, comm))
    for K in (1, 3, 5):
        mn = mixnorm.MultiNodeMixtureNormalization(C, comm, n_components=K, em_iters=2,
                                                   seed=0)
        rows.append(measure('MultiNodeMixtureNormalization K=%d' % K, mn, mn._reducer, x, gy,
                            args.repeats, comm))
    base = rows[0]
    for r in rows:
        r.update(processes=comm.size, shape='x'.join(map(str, shape)),
                 numbers_per_call=r['bytes_sent'] / 8.0 / max(r['calls'], 1)
                 if r['layer'].startswith('MultiNodeMixture') else
                 r['bytes_sent'] / 4.0 / max(r['calls'], 1),
                 extra_calls=r['calls'] - base['calls'],
                 extra_kib=(r['bytes_received'] - base['bytes_received']) / 1024.0,
                 step_ratio=r['step_ms'] / base['step_ms'])
    if comm.rank != 0:
        return rows
    print('# per layer and training step, %d processes, %s float32 per process'
          % (comm.size, 'x'.join(map(str, shape))))
    for r in rows:
        print('%-36s %2d collectives (fit %2d, normalizing forward + backward %d), sent '
              '%8.1f KiB, received %8.1f KiB (+%d calls, +%.1f KiB over BN), step %.1f ms '
              '(%.2fx BN)'
              % (r['layer'], r['calls'], r['fit_calls'], r['normalize_calls'],
                 r['bytes_sent'] / 1024.0,
                 r['bytes_received'] / 1024.0, r['extra_calls'], r['extra_kib'],
                 r['step_ms'], r['step_ratio']))
    if not args.no_write:
        columns = [('layer', 'layer', '%s'), ('processes', 'processes', '%d'),
                   ('shape per process', 'shape', '%s'), ('collectives', 'calls', '%d'),
                   ('of which the fit', 'fit_calls', '%d'),
                   ('of which normalizing (fwd + bwd)', 'normalize_calls', '%d'),
                   ('bytes sent', 'bytes_sent', '%d'),
                   ('bytes received', 'bytes_received', '%d'),
                   ('numbers per collective', 'numbers_per_call', '%.0f'),
                   ('calls over BN', 'extra_calls', '%+d'),
                   ('KiB received over BN', 'extra_kib', '%+.1f'),
                   ('step ms', 'step_ms', '%.1f'), ('step / BN', 'step_ratio', '%.2f')]
        env = environment.describe()
        env['processes'] = comm.size
        write_record('comm_cpu', 'Collectives per synchronized layer and training step',
                     env, rows, columns,
                     'Counted on one training step (forward + backward) after a warm-up; '
                     'ChainerMN BN: calls of comm._multi_node_mean (float32 all-reduce, in '
                     'place); MN: the all-gathers of its reducer (float64). EM iter. 2. '
                     'Times are medians over %d steps on this CPU with the naive '
                     'communicator, all processes on one machine, BLAS threads per '
                     'process: %s.' % (args.repeats, os.environ.get(
                         'OPENBLAS_NUM_THREADS', os.environ.get('OMP_NUM_THREADS',
                                                                'unset (one per core)'))),
                     out_dir=args.out)
    return rows


if __name__ == '__main__':
    chainermn.global_except_hook.add_hook()
    main()
