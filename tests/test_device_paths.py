"""The GPU's code paths, run on the CPU through the stand-in device of
``mixnorm.testing.opcount``: same results as the NumPy path, and the device work they
dispatch.

Where mixnorm branches on the array module (NumPy or not), the stand-in takes the
branch CuPy takes, so these tests check those branches' results without a GPU.  On
the GPU an MN layer is launch-bound, so its speed target (MN/BN <= 4x per layer)
depends on how many device operations and host syncs each step needs; the
budget tests count them (the numbers ``bench/bench_ops.py`` reports) and fail if a
change adds many: a loop over points or channels, per-component kernels in the fit,
or a host sync in an inner loop.
"""
import numpy as np
import pytest

import mixnorm  # noqa: F401  (NumPy-2 shim before chainer)
import chainer
from mixnorm import gmm as G
from mixnorm.testing import opcount as _opcount


def _host(a):
    return np.asarray(a.view(np.ndarray) if isinstance(a, _opcount.Dev) else a)


@pytest.mark.parametrize('K', [1, 3, 5])
def test_fit_on_the_device_path_equals_the_numpy_path(K):
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((2000, 12)), 0).astype(np.float32) * 3 + 1
    ref, nu_ref = G.fit_gmm(x, K, 2, 2, seed=5, return_responsibilities=True)
    with _opcount.counting():
        got, nu = G.fit_gmm(_opcount.to_device(x), K, 2, 2, seed=5,
                            return_responsibilities=True)
        r = G.responsibilities(_opcount.to_device(x), got)
    assert isinstance(got.means, _opcount.Dev) and isinstance(nu, _opcount.Dev)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(_host(b), a, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(_host(nu), nu_ref, atol=2e-5)
    np.testing.assert_allclose(_host(r), _host(nu), atol=2e-5)


def _fit_both(x, K, **kwargs):
    """The fit of ``x`` on NumPy and on the stand-in device, and the device's cost."""
    ref = G.fit_gmm(x, K, 2, 2, return_responsibilities=True, **kwargs)
    with _opcount.counting():
        cost = _opcount.tally(lambda: G.fit_gmm(_opcount.to_device(x), K, 2, 2,
                                                return_responsibilities=True, **kwargs))
        got = G.fit_gmm(_opcount.to_device(x), K, 2, 2, return_responsibilities=True,
                        **kwargs)
    for a, b in zip(ref[0] + (ref[1],), got[0] + (got[1],)):
        np.testing.assert_allclose(_host(b), a, rtol=5e-5, atol=5e-5)
    return ref[0], cost


@pytest.mark.parametrize('K', [3, 4])
def test_the_count_rule_drops_a_component_on_the_device_with_one_sync(K):
    """Four far points take a component of their own, which the count rule drops; the
    merging round runs on the device, so the fit still synchronises once and equals
    the NumPy path's (the posteriors come under the kept components)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((600, 5)), rng.standard_normal((400, 5)) + 6,
                        rng.standard_normal((4, 5)) * 0.1 + 30]).astype(np.float32)
    gmm, cost = _fit_both(x, K, seed=1)
    assert gmm.n_components < K
    _, cost_kept = _fit_both(x[:1000], K, seed=1)      # the same fit, nothing to drop
    assert cost['d2h'] == cost_kept['d2h'] == 1
    assert cost['launch'] <= cost_kept['launch'] + 2, (cost, cost_kept)


def test_the_device_fit_equals_the_numpy_fit_where_components_are_dropped():
    """Random clusters plus a few far points, under every branch of the device fit
    (K-means and EM counts including none of either, float32 and float64, the count
    rule's thresholds, fit_fraction): the device's mixture and posteriors are the
    NumPy path's, and most of these fits drop a component."""
    drops = 0
    for seed in range(16):
        rng = np.random.default_rng(100 + seed)
        d, K = int(rng.integers(2, 9)), int(rng.integers(2, 7))
        parts = [rng.standard_normal((int(rng.integers(50, 600)), d)) * rng.uniform(0.3, 2)
                 + rng.uniform(-8, 8, d) for _ in range(int(rng.integers(1, 4)))]
        parts.append(rng.standard_normal((int(rng.integers(1, 20)), d)) * 0.2
                     + rng.uniform(15, 40))
        dtype = (np.float32, np.float64)[seed % 2]
        x = np.concatenate(parts).astype(dtype)
        iters = [(1, 1), (2, 2), (1, 0), (0, 1), (2, 0)][seed % 5]
        kwargs = dict(seed=seed, min_weight=(0.01, 0.05)[seed % 2],
                      min_count=(16, 40)[(seed // 2) % 2],
                      fit_fraction=(1.0, 0.5)[seed % 3 == 0], return_responsibilities=True)
        ref, nu_ref = G.fit_gmm(x, K, *iters, **kwargs)
        with _opcount.counting():
            got, nu = G.fit_gmm(_opcount.to_device(x), K, *iters, **kwargs)
        assert got.n_components == ref.n_components, seed
        drops += ref.n_components < K
        tol = 1e-3 if dtype == np.float32 else 1e-8
        for a, b in zip(ref + (nu_ref,), got + (nu,)):
            np.testing.assert_allclose(_host(b), a, rtol=tol,
                                       atol=tol * max(1.0, np.abs(a).max()), err_msg=seed)
    assert drops >= 8, drops


def test_a_component_that_fails_the_count_rule_again_gets_more_rounds():
    """After the device's merging round a kept component can fall below the count:
    the further rounds (on the host) give the NumPy path's mixture."""
    rng = np.random.default_rng(15)
    x = np.concatenate([rng.standard_normal((300, 3)),
                        rng.standard_normal((30, 3)) * 0.7 + 2.2,
                        rng.standard_normal((6, 3)) * 0.3 + 9]).astype(np.float32)
    gmm, cost = _fit_both(x, 4, seed=15, min_count=30)
    assert gmm.n_components == 2 and cost['d2h'] > 1
    assert (gmm.weights * x.shape[0] >= 30).all()         # every one left passes


@pytest.mark.parametrize('K', [1, 3])
def test_layer_on_the_device_path_equals_the_numpy_path(K):
    rng = np.random.default_rng(1)
    x = np.maximum(rng.standard_normal((16, 6, 3, 3)), 0).astype(np.float32)
    gy = rng.standard_normal(x.shape).astype(np.float32)

    def step(link, xa, gya):
        v = chainer.Variable(xa)
        y = link(v)
        y.grad = gya
        y.backward()
        with chainer.using_config('train', False):
            t = link(chainer.Variable(xa))
        return [_host(a) for a in (y.array, v.grad, link.gamma.grad, link.beta.grad,
                                   t.array)]
    ref = step(mixnorm.MixtureNormalization(6, n_components=K, seed=3), x, gy)
    link = _opcount.layer_on_device(mixnorm.MixtureNormalization(6, n_components=K, seed=3))
    with _opcount.counting():
        got = step(link, _opcount.to_device(x), _opcount.to_device(gy))
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_counter_counts_launches_copies_and_syncs():
    a = _opcount.to_device(np.arange(12.0).reshape(3, 4))
    with _opcount.counting():
        xp = _opcount.XP

        def work():
            b = a * 2                    # launch
            c = b[:, 1:]                 # view: nothing
            d = c.sum(axis=0)            # launch
            e = xp.asarray(np.ones(3))   # host-to-device copy
            f = a[xp.asarray([0, 2])]    # copy + gather launch
            float(d[0])                  # device-to-host copy (a sync)
            return e, f
        got = _opcount.tally(work)
    assert got == {'launch': 3, 'h2d': 2, 'd2h': 1}


@pytest.mark.parametrize('K,max_launches,max_fit', [(1, 11, 0), (3, 30, 17), (5, 36, 21)])
def test_training_step_launch_budget(K, max_launches, max_fit):
    r = _opcount.count_layer((64, 32, 4, 4), K)
    assert r['train_launch'] <= max_launches, r
    # the fit: frame 2, K-means++ 1 + 2 (K - 1), the partitions' moments 1, M-step,
    # E-step and moments 4, the last M-step and the posteriors 3, the count rule's
    # merging round 2 (moments, M-step: a no-op unless a component is dropped); the
    # draws go to the device in one copy
    assert r['fit_launch'] <= max_fit and r['fit_copies'] <= 2, r
    # the normalizing forward and the backward: a handful of fused kernels, fewer than
    # Chainer's BN needs, and no copy between host and device (only the fit may sync):
    # the points for the fit, shift, stacking, moments, coefficients, output, the queue
    # slot with the running averages, the inference mixture; stacking, sums,
    # coefficients, input gradient
    assert r['fwd_launch'] <= (7 if K == 1 else 8) and r['bwd_launch'] <= 4, r
    assert r['train_copies'] == r['fit_copies'] and r['train_syncs'] == r['fit_syncs'], r
    if K == 1:
        assert r['train_syncs'] == 0, r
    else:   # one sync: the fit's status (count rule, finite moments) at its end
        assert r['train_syncs'] <= 1, r
    # the cost does not grow with the data: no per-point or per-channel loops
    assert _opcount.count_layer((128, 64, 4, 4), K) == dict(r, shape='128x64x4x4')


@pytest.mark.parametrize('K', [1, 3])
def test_inference_launch_budget(K):
    r = _opcount.count_layer((64, 32, 4, 4), K)
    # stacking, log-densities (a product), posteriors, normalization; nothing copied
    assert r['test_launch'] <= 4 and r['test_copies'] == 0, r


def _trained_on_device(K, **kwargs):
    rng = np.random.default_rng(2)
    x = np.maximum(rng.standard_normal((16, 6, 3, 3)), 0).astype(np.float32)
    link = _opcount.layer_on_device(mixnorm.MixtureNormalization(6, n_components=K, seed=3,
                                                                 **kwargs))
    with _opcount.counting():
        link(_opcount.to_device(x))
    return link, x


@pytest.mark.parametrize('K', [1, 3])
def test_nan_at_inference_on_a_device_is_checked_under_debug(K):
    """On a device the check would be a synchronization: without chainer.config.debug a
    NaN input gives NaN where it is (as BN's), with it the error names the layer."""
    link, x = _trained_on_device(K)
    x = x.copy()
    x[1, 2, 0, 1] = np.nan
    with _opcount.counting(), chainer.using_config('train', False):
        got = _opcount.tally(lambda: link(_opcount.to_device(x)))
        y = _host(link(_opcount.to_device(x)).array)
        assert got['d2h'] == 0
        assert np.isnan(y[1, :, 0, 1]).all() and np.isfinite(y[0]).all()
        with chainer.using_config('debug', True), \
                pytest.raises(ValueError, match=r"MixtureNormalization.*inference.*NaN"):
            link(_opcount.to_device(x))


def test_nan_in_training_on_a_device_is_checked_under_debug():
    link, x = _trained_on_device(1)
    x = x.copy()
    x[0, 1, 1, 1] = np.nan
    with _opcount.counting():
        got = _opcount.tally(lambda: link(_opcount.to_device(x)))
        assert got['d2h'] == 0
        with chainer.using_config('debug', True), \
                pytest.raises(ValueError, match=r"MixtureNormalization.*NaN"):
            link(_opcount.to_device(x))


def test_the_inference_mixture_follows_the_queue():
    """The cached inference mixture is rebuilt when the queue changes: after each
    training step the device path's inference equals the NumPy path's."""
    rng = np.random.default_rng(5)
    xs = [np.maximum(rng.standard_normal((16, 6, 3, 3)), 0).astype(np.float32) + i
          for i in range(3)]
    ref = mixnorm.MixtureNormalization(6, n_components=2, seed=4, queue_length=2)
    link = _opcount.layer_on_device(mixnorm.MixtureNormalization(6, n_components=2, seed=4,
                                                                 queue_length=2))
    evaluation = link.copy()                   # shares the queue
    for x in xs:
        ref(x)
        with _opcount.counting():
            link(_opcount.to_device(x))
        with chainer.using_config('train', False):
            want = ref(xs[0]).array
            with _opcount.counting():
                got = _host(evaluation(_opcount.to_device(xs[0])).array)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
