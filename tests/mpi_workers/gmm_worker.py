"""One rank of a distributed ``fit_gmm`` (run by tests/test_gmm_mpi.py under mpiexec).

    mpiexec -n P python tests/mpi_workers/gmm_worker.py OUT_DIR

Every rank takes its uneven share of an unambiguous 3-cluster mixture (rank 0 holds
points of a single cluster), fits the union with an ``MPIReducer`` that counts its
reductions, fits its own points alone, then checks that a NaN on one rank is reported on
every rank, and writes ``OUT_DIR/rank<r>.npz``.  The test compares the ranks.
"""
import os
import sys

import numpy as np

SEED = 3
K, KMEANS_ITERS, EM_ITERS = 3, 1, 1          # the paper's "EM iter." 2


def make_data():
    """Three well-separated clusters in R^4 (sizes 400, 250, 150), cluster by cluster."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0, 0, 0], [14.0, 0, 0, 0], [0.0, 14.0, 0, 0]])
    stds = np.array([1.0, 0.7, 1.3])
    return [centres[k] + stds[k] * rng.standard_normal((m, 4))
            for k, m in enumerate((400, 250, 150))]


def split(clusters, size):
    """Uneven shares for ``size`` (2 or 3) ranks, rank 0 holding only cluster 0."""
    a, b, c = clusters
    if size == 2:
        return [a[:300], np.concatenate([a[300:], b, c])]
    if size == 3:
        return [a[:300], np.concatenate([a[300:], b[:200], c[:40]]),
                np.concatenate([b[200:], c[40:]])]
    raise ValueError('the worker splits for 2 or 3 ranks, not %d' % size)


class CountingReducer:
    """A reducer that counts its collectives and the numbers this rank contributes."""

    def __init__(self, inner):
        self.inner, self.size, self.rank = inner, inner.size, inner.rank
        self.calls = 0
        self.numbers = 0

    def allgather(self, a):
        self.calls += 1
        self.numbers += int(np.size(a))
        return self.inner.allgather(a)

    def sum(self, a):
        self.calls += 1
        self.numbers += int(np.size(a))
        return self.inner.sum(a)


def main(out_dir):
    from mpi4py import MPI
    from mixnorm import gmm as G
    from mixnorm._collectives import MPIReducer

    comm = MPI.COMM_WORLD
    x = split(make_data(), comm.size)[comm.rank]
    reducer = CountingReducer(MPIReducer(comm))
    g, nu = G.fit_gmm(x, K, KMEANS_ITERS, EM_ITERS, seed=SEED, reducer=reducer,
                      return_responsibilities=True)
    local = G.fit_gmm(x, K, KMEANS_ITERS, EM_ITERS, seed=SEED)
    bad = x.copy()
    if comm.rank == 1:
        bad[5, 2] = np.nan
    try:
        G.fit_gmm(bad, K, KMEANS_ITERS, EM_ITERS, seed=SEED, reducer=MPIReducer(comm))
        nan_error = ''
    except ValueError as e:
        nan_error = str(e)
    np.savez(os.path.join(out_dir, 'rank%d.npz' % comm.rank),
             weights=g.weights, means=g.means, variances=g.variances, nu=nu,
             local_weights=local.weights, local_means=local.means,
             reductions=reducer.calls, numbers=reducer.numbers, n_points=x.shape[0],
             nan_error=nan_error)


if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    main(sys.argv[1])
