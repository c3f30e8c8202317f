"""One rank of a synchronized MN layer fed a bad input on the last rank (run by
tests/test_distributed.py under mpiexec).

    mpiexec -n P python tests/mpi_workers/link_fault_worker.py CASE HOOK OUT_DIR

``CASE`` names the bad input (see ``CASES``); every other rank's input is good.
``HOOK`` is ``hook`` (ChainerMN's crash hook installed: the error is left uncaught,
the hook aborts the job) or ``nohook`` (each rank catches its error, writes it to
``OUT_DIR/rank<r>.txt`` and exits with status 1).  A rank that finishes writes
``ok``.  A hang is what the test's timeout catches.
"""
import os
import sys

import numpy as np

import mixnorm  # noqa: F401  (NumPy shim before chainer)
import chainer
import chainermn
import chainermn.global_except_hook

from mixnorm import gmm as G
from mixnorm.distributed import MultiNodeMixtureNormalization

C, N, SEED = 4, 400, 7
FRACTION = 0.25

#: case -> (n_components, size, fit_fraction, dtype): the layer each case builds
CASES = {
    'nan_k1': (1, C, 1.0, np.float64),
    'nan_k3': (3, C, 1.0, np.float64),
    'nan_outside_fit': (3, C, FRACTION, np.float64),
    'channels': (3, C, 1.0, np.float64),
    'int_dtype': (3, C, 1.0, np.float64),
    'empty': (1, C, 1.0, np.float64),
    'size_none': (3, None, 1.0, np.float64),
    'overflow_k1': (1, C, 1.0, np.float32),
    'overflow_k3': (3, C, 1.0, np.float32),
    'inference_nan': (3, C, 1.0, np.float64),
}


def good_input(rank, dtype):
    rng = np.random.default_rng(100 + rank)
    centres = np.array([[0.0] * C, [9.0] * C, [-9.0] + [4.0] * (C - 1)])
    return (centres[np.arange(N) % 3] + rng.standard_normal((N, C))).astype(dtype)


class _Rank:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size


def point_outside_the_fit(link, rank, size):
    """Index of a point of this rank that the fit_fraction subsample leaves out (the
    fit's own draw, replayed)."""
    rs = np.random.default_rng(link._fit_seed(link.n_fits))
    fitted = G._fitted_points(np.arange(N)[:, None], link.n_components, FRACTION, rs,
                              _Rank(rank, size))
    return int(np.setdiff1d(np.arange(N), fitted[:, 0])[0])


def bad_input(case, link, x, rank, size):
    if case in ('nan_k1', 'nan_k3'):
        x[5, 1] = np.nan
    elif case == 'nan_outside_fit':
        x[point_outside_the_fit(link, rank, size), 2] = np.nan
    elif case == 'channels':
        x = x[:, :C - 1]
    elif case == 'int_dtype':
        x = x.astype(np.int32)
    elif case == 'empty':
        x = x[:0]
    elif case == 'size_none':
        x = x[:, :C - 1]
    elif case in ('overflow_k1', 'overflow_k3'):
        x[3, 0] = 1e30
    return x


def run(case, comm):
    K, size, fraction, dtype = CASES[case]
    link = MultiNodeMixtureNormalization(size, comm, n_components=K, em_iters=2,
                                         fit_fraction=fraction, seed=SEED)
    x = good_input(comm.rank, dtype)
    bad = comm.rank == comm.size - 1
    if case == 'inference_nan':
        link(x)                              # one good training step
        if bad:
            x[2, 3] = np.nan
        with chainer.using_config('train', False):
            return link(x)
    if bad:
        x = bad_input(case, link, x, comm.rank, comm.size)
    y = link(chainer.Variable(x))
    y.grad = np.ones_like(y.array)
    y.backward()
    return y


def main():
    case, hook, out_dir = sys.argv[1:4]
    if hook == 'hook':
        chainermn.global_except_hook.add_hook()
    comm = chainermn.create_communicator('naive')
    path = os.path.join(out_dir, 'rank%d.txt' % comm.rank)
    if hook == 'hook':
        # the hook writes to sys.stderr, then aborts: a per-rank file keeps every byte
        # written before the abort (the launcher may not forward the last of a pipe)
        sys.stderr = open(os.path.join(out_dir, 'rank%d.err' % comm.rank), 'w',
                          buffering=1)
        run(case, comm)                      # an error ends the job through the hook
        text, status = 'ok', 0
    else:
        try:
            run(case, comm)
            text, status = 'ok', 0
        except Exception as e:
            text, status = '%s: %s' % (type(e).__name__, e), 1
    with open(path, 'w') as f:
        f.write(text)
    sys.exit(status)


if __name__ == '__main__':
    main()
