"""Run under ``mpiexec -n 2``: the synchronized MN as ChainerMN's synchronized BN.

    python bn_contract_worker.py

``MultiNodeMixtureNormalization(n_components=1, inference='running')`` built with
``chainermn.links.MultiNodeBatchNormalization``'s positional arguments, both started
from one BN by ``copyparams``, trains on an even split of one batch (a plain and a
fine-tuning step) and infers like ChainerMN's link (its gamma and beta gradients
are this rank's, where ChainerMN's are already their mean over the ranks); ``chainermn.links.create_mnbn_model``
keeps MN links as they are and ``mixnorm.create_mnbn_model`` makes them synchronized
with their state.  Every rank checks; rank 0 prints ``ok``.
"""
import sys

import numpy as np

import mixnorm  # noqa: F401  (NumPy shim before chainer)
import chainer
import chainer.links as L
import chainermn
import chainermn.global_except_hook

from mixnorm.distributed import MultiNodeMixtureNormalization, create_mnbn_model


def close(a, b, what):
    if not np.allclose(a, b, rtol=1e-10, atol=1e-12):
        raise AssertionError('%s differs by %g' % (what, np.abs(np.asarray(a) - b).max()))


def step(link, x, gy, **kw):
    link.cleargrads()
    xv = chainer.Variable(x)
    y = link(xv, **kw)
    y.grad = gy
    y.backward()
    return y.array, xv.grad, link.gamma.grad.copy(), link.beta.grad.copy()


def main():
    comm = chainermn.create_communicator('naive')
    rng = np.random.RandomState(0)
    bn = L.BatchNormalization(3, dtype=np.float64)
    bn.gamma.array[...] = rng.rand(3) + .5
    bn.beta.array[...] = rng.randn(3)
    bn.avg_mean[...] = rng.randn(3)
    bn.avg_var[...] = rng.rand(3) + .5
    theirs = chainermn.links.MultiNodeBatchNormalization(3, comm, 0.8, 1e-4, np.float64)
    ours = MultiNodeMixtureNormalization(3, comm, 0.8, 1e-4, np.float64, n_components=1,
                                         inference='running')
    theirs.copyparams(bn)
    ours.copyparams(bn)
    part = slice(comm.rank * 8, comm.rank * 8 + 8)
    for i in range(2):
        x, gy = rng.randn(16, 3, 2, 2) * 2 + 1, rng.randn(16, 3, 2, 2)
        finetune = i == 1
        mine = step(ours, x[part], gy[part], finetune=finetune)
        # ChainerMN's gamma and beta gradients are already the mean over the ranks; ours
        # are this rank's, as every other parameter's: the multi-node optimizer's mean
        # makes them the same
        mine = mine[:2] + tuple(comm.mpi_comm.allreduce(g) / comm.size for g in mine[2:])
        for name, a, b in zip(('y', 'gx', 'ggamma', 'gbeta'), mine,
                              step(theirs, x[part], gy[part], finetune=finetune)):
            close(a, b, 'step %d: %s' % (i, name))
        close(ours.avg_mean, theirs.avg_mean, 'avg_mean')
        close(ours.avg_var, theirs.avg_var, 'avg_var')
        assert ours.N == theirs.N
    with chainer.using_config('train', False):
        test = rng.randn(5, 3, 2, 2)
        close(ours(test).array, theirs(test).array, 'inference')

    model = chainer.Chain()
    with model.init_scope():
        model.bn = L.BatchNormalization(3)
        model.mn = mixnorm.MixtureNormalization(3, n_components=2, seed=5)
    model.mn(rng.randn(32, 3).astype(np.float32))
    kept = chainermn.links.create_mnbn_model(model, comm)
    assert type(kept.mn) is mixnorm.MixtureNormalization, type(kept.mn)
    synced = create_mnbn_model(model, comm)
    assert isinstance(synced.bn, chainermn.links.MultiNodeBatchNormalization)
    assert type(synced.mn) is MultiNodeMixtureNormalization
    assert synced.mn.n_components == 2 and synced.mn.n_fits == 1
    np.testing.assert_array_equal(synced.mn.queue_means, model.mn.queue_means)
    synced.mn(rng.randn(16, 3).astype(np.float32)[part])
    assert synced.mn.n_fits == 2 and synced.mn._reducer.calls > 0
    if comm.rank == 0:
        print('ok')


if __name__ == '__main__':
    chainermn.global_except_hook.add_hook()    # one rank's error ends all ranks
    main()
    sys.stdout.flush()
