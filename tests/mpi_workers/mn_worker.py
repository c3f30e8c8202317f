"""Run under ``mpiexec -n P``: a synchronized MN on an uneven split of one batch.

    python mn_worker.py OUT.npz K

Every rank builds the same global batch, keeps its own slice (rank 0: a single
cluster when K > 1; unequal sizes), trains two steps of
``MultiNodeMixtureNormalization`` and runs inference on a common test batch.  Rank 0
writes every rank's results to OUT.npz for ``tests/test_distributed.py``, which
compares them with one process on the whole batch.
"""
import sys

import numpy as np

import mixnorm  # noqa: F401  (NumPy shim before chainer)
import chainer
import chainermn
import chainermn.global_except_hook

from mixnorm.distributed import MultiNodeMixtureNormalization


def global_batch(step, C=4):
    """(points (n, C), gy, rank slices) of the global batch of ``step``; clusters are
    far apart, rank 0 holds cluster 0 only."""
    rng = np.random.RandomState(100 + step)
    sizes = [60, 70, 110]
    centres = np.array([[0.] * C, [12.] * C, [-12.] + [6.] * (C - 1)])
    x = np.concatenate([rng.randn(m, C) + c for m, c in zip(sizes, centres)])
    gy = rng.randn(*x.shape)
    return x, gy


def slices(size):
    """Unequal contiguous slices of the 240 points; rank 0 takes the first 40
    (cluster 0 only)."""
    bounds = {1: [0, 240], 2: [0, 40, 240], 3: [0, 40, 110, 240]}[size]
    return [slice(bounds[r], bounds[r + 1]) for r in range(size)]


def main():
    out, K = sys.argv[1], int(sys.argv[2])
    comm = chainermn.create_communicator('naive')
    part = slices(comm.size)[comm.rank]
    mn = MultiNodeMixtureNormalization(4, comm, n_components=K, em_iters=2,
                                       dtype=np.float64, seed=1234 + comm.rank)
    mn.gamma.array[...] = [1.5, 0.5, 1.0, 2.0]
    mn.beta.array[...] = [0.1, -0.2, 0.0, 0.3]
    res = {'seed': mn.seed}
    for step in range(2):
        x, gy = global_batch(step)
        mn.cleargrads()
        xv = chainer.Variable(x[part])
        y = mn(xv)
        y.grad = gy[part]
        y.backward()
        res['y%d' % step] = y.array
        res['gx%d' % step] = xv.grad
        res['ggamma%d' % step] = mn.gamma.grad.copy()
        res['gbeta%d' % step] = mn.beta.grad.copy()
    for name in ('queue_weights', 'queue_means', 'queue_vars'):
        res[name] = getattr(mn, name)
    res['n_fits'] = mn.n_fits
    res['effective_components'] = mn.effective_components
    test = np.random.RandomState(7).randn(30, 4) * 6
    with chainer.using_config('train', False):
        res['inference'] = mn(test).array
    res['calls'] = mn._reducer.calls
    res['bytes'] = mn._reducer.bytes_sent
    gathered = comm.gather_obj(res, root=0)
    if comm.rank == 0:
        flat = {}
        for r, d in enumerate(gathered):
            for k, v in d.items():
                flat['r%d_%s' % (r, k)] = np.asarray(v)
        np.savez(out, size=comm.size, **flat)


if __name__ == '__main__':
    chainermn.global_except_hook.add_hook()    # one rank's error ends all ranks
    main()
