"""Synchronized statistics in the transform (``reducer``): P processes that each hold
part of a batch get exactly what one process gets on the whole batch.  The processes
are threads here, joined by an all-gather on a barrier; the MPI tests run the same code
under ``mpiexec``."""
import mixnorm._compat  # noqa: F401

import threading

import numpy as np
import pytest

import chainer
import chainer.links as L

from mixnorm import functions as MF
from mixnorm import gmm as G


class ThreadGroup:
    """P threads' collectives: ``allgather`` stacks every thread's array in rank order."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots = [None] * size
        self.calls = 0

    def reducer(self, rank):
        group = self

        class Reducer:
            def __init__(self):
                self.rank, self.size = rank, group.size

            def allgather(self, a):
                group.slots[rank] = np.array(a, dtype=np.float64)
                group.barrier.wait()
                out = np.stack(group.slots)
                group.barrier.wait()
                if rank == 0:
                    group.calls += 1
                return out

            def sum(self, a):
                return self.allgather(a).sum(axis=0)
        return Reducer()


def run_ranks(size, fn):
    """Run ``fn(rank, reducer)`` in ``size`` threads; return the results in rank order."""
    group = ThreadGroup(size)
    out, errors = [None] * size, []

    def work(rank):
        try:
            out[rank] = fn(rank, group.reducer(rank))
        except Exception as e:      # pragma: no cover - reported below
            errors.append(e)
            group.barrier.abort()
    threads = [threading.Thread(target=work, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out, group.calls


def split_points(resp, x, sizes):
    """Split x (N, C, ...) by samples and resp (n, K) by the matching rows."""
    L_ = int(np.prod(x.shape[2:]))
    xs, rs, i = [], [], 0
    for m in sizes:
        xs.append(x[i:i + m])
        rs.append(resp[i * L_:(i + m) * L_])
        i += m
    return xs, rs


def step(x, gamma, beta, resp, gy, reducer=None, **kw):
    xv = chainer.Variable(x)
    gv = chainer.Variable(gamma.copy()) if gamma is not None else None
    bv = chainer.Variable(beta.copy()) if beta is not None else None
    y = MF.mixture_normalization(xv, gv, bv, resp, reducer=reducer, **kw)
    y.grad = gy
    y.backward()
    return y.array, xv.grad, None if gv is None else gv.grad, None if bv is None else bv.grad


def clustered_batch(seed, shape, K=3):
    rng = np.random.RandomState(seed)
    centres = rng.randn(K, shape[1]) * 5
    lab = rng.randint(K, size=(shape[0],) + shape[2:])
    x = rng.randn(*shape) + np.moveaxis(centres[lab], -1, 1) + 20.0
    pts = np.moveaxis(x, 1, -1).reshape(-1, shape[1])
    g = G.fit_gmm(pts, K, 1, 1, seed=0)
    return x, G.responsibilities(pts, g)


@pytest.mark.parametrize('affine', ['channel', 'component', None])
@pytest.mark.parametrize('sizes', [(5, 9, 2), (1, 15)])
def test_synchronized_transform_equals_one_process_on_the_whole_batch(affine, sizes):
    x, resp = clustered_batch(0, (16, 4, 3, 3))
    K = resp.shape[1]
    rng = np.random.RandomState(1)
    gy = rng.randn(*x.shape)
    shape = {'channel': (4,), 'component': (K, 4), None: None}[affine]
    gamma = None if shape is None else 1 + 0.3 * rng.rand(*shape)
    beta = None if shape is None else rng.randn(*shape)
    ref = step(x, gamma, beta, resp, gy)
    xs, rs = split_points(resp, x, sizes)
    gys, _ = split_points(resp, gy, sizes)
    got, calls = run_ranks(len(sizes), lambda r, red: step(xs[r], gamma, beta, rs[r],
                                                            gys[r], red))
    assert calls == 2                       # one collective forward, one backward
    np.testing.assert_allclose(np.concatenate([g[0] for g in got]), ref[0], atol=1e-10)
    np.testing.assert_allclose(np.concatenate([g[1] for g in got]), ref[1], atol=1e-9)
    for i in (2, 3):                        # the parameters: the ranks' parts add up
        if ref[i] is not None:
            np.testing.assert_allclose(sum(g[i] for g in got), ref[i], atol=1e-9)
    # each rank on its own normalizes with other statistics: the test can fail
    local = step(xs[0], gamma, beta, rs[0], gys[0])
    assert np.abs(local[0] - got[0][0]).max() > 1e-3


def test_synchronized_k1_equals_batch_normalization_of_the_concatenated_batch():
    rng = np.random.RandomState(2)
    x = rng.randn(12, 5, 2, 2) * 3 + 7
    gy = rng.randn(*x.shape)
    bn = L.BatchNormalization(5, dtype=np.float64)
    bn.gamma.array[...] = rng.rand(5) + 0.5
    bn.beta.array[...] = rng.randn(5)
    bn.cleargrads()
    xv = chainer.Variable(x)
    y = bn(xv)
    y.grad = gy
    y.backward()
    sizes = (7, 4, 1)
    ones = np.ones((x.shape[0] * 4, 1))
    xs, rs = split_points(ones, x, sizes)
    gys, _ = split_points(ones, gy, sizes)
    got, _ = run_ranks(3, lambda r, red: step(xs[r], bn.gamma.array, bn.beta.array, rs[r],
                                               gys[r], red, eps=bn.eps))
    np.testing.assert_allclose(np.concatenate([g[0] for g in got]), y.array, atol=1e-9)
    np.testing.assert_allclose(np.concatenate([g[1] for g in got]), xv.grad, atol=1e-9)
    np.testing.assert_allclose(sum(g[2] for g in got), bn.gamma.grad, atol=1e-9)
    np.testing.assert_allclose(sum(g[3] for g in got), bn.beta.grad, atol=1e-9)


def test_relu_form_synchronizes_too():
    x, resp = clustered_batch(3, (10, 3, 2, 2))
    gy = np.random.RandomState(4).randn(*x.shape)
    gamma, beta = np.full(3, 1.2), np.full(3, 0.1)

    def relu_step(x, resp, gy, reducer=None):
        xv = chainer.Variable(x)
        y = MF._train(xv, gamma, beta, resp, 2e-5, True, True, False, 'relu', reducer)
        y.grad = gy
        y.backward()
        return y.array, xv.grad
    ref = relu_step(x, resp, gy)
    xs, rs = split_points(resp, x, (3, 7))
    gys, _ = split_points(resp, gy, (3, 7))
    got, _ = run_ranks(2, lambda r, red: relu_step(xs[r], rs[r], gys[r], red))
    np.testing.assert_allclose(np.concatenate([g[0] for g in got]), ref[0], atol=1e-10)
    np.testing.assert_allclose(np.concatenate([g[1] for g in got]), ref[1], atol=1e-9)


def run_ranks_errors(size, fn):
    """Run ``fn(rank, reducer)`` in ``size`` threads; return each rank's exception (or
    None).  A rank left waiting in a collective would break the barrier's timeout."""
    group = ThreadGroup(size)
    group.barrier = threading.Barrier(size, timeout=20)
    errors = [None] * size

    def work(rank):
        try:
            fn(rank, group.reducer(rank))
        except Exception as e:      # noqa: BLE001 (compared below)
            errors[rank] = e
    threads = [threading.Thread(target=work, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parametrize('value,says', [
    (np.nan, 'rank 1: the input contains 1 NaN value'),
    (1e30, 'rank 1: the input is finite but its second moments overflow float32 '
           '(max |x| = 1e+30)')])
def test_one_ranks_non_finite_moments_raise_the_same_error_on_every_rank(value, says):
    """K = 1 checks the moments only after they are gathered, so every rank raises."""
    x = np.random.RandomState(5).randn(9, 3, 2, 2).astype(np.float32)
    xs, rs = split_points(np.ones((36, 1), np.float32), x, (4, 5))
    xs[1] = xs[1].copy()
    xs[1][2, 1, 0, 1] = value
    errors = run_ranks_errors(2, lambda r, red: MF.mixture_normalization(
        xs[r], None, None, rs[r], reducer=red))
    head = 'the input of rank(s) [1] is not finite or its moments overflow'
    for e in errors:
        assert isinstance(e, ValueError) and str(e).startswith(head) and says in str(e), e
    assert str(errors[0]) == str(errors[1])
