"""The GMM estimator against scikit-learn's GaussianMixture and on degenerate input."""
import itertools
import threading
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from mixnorm import gmm as G


def mixture_data(rng, n=3000, d=4, K=3, sep=6.0):
    means = rng.normal(0, sep, size=(K, d))
    stds = rng.uniform(0.5, 1.5, size=(K, d))
    weights = np.array([0.5, 0.3, 0.2])[:K]
    labels = rng.choice(K, size=n, p=weights / weights.sum())
    x = means[labels] + stds[labels] * rng.standard_normal((n, d))
    return x, means, stds, weights


def rectified_data(rng, n=4000, d=8):
    w = rng.standard_normal((d, d))
    return np.maximum(rng.standard_normal((n, d)) @ w, 0) @ rng.standard_normal((d, d)) * 0.5


def sklearn_best_of_3(x, K):
    best = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConvergenceWarning)
        for seed in range(3):
            g = GaussianMixture(K, covariance_type='diag', init_params='k-means++',
                                max_iter=500, reg_covar=1e-5, random_state=seed).fit(x)
            best = max(best, g.score(x))
    return best


@pytest.mark.parametrize('kind', ['mixture', 'rectified'])
def test_converged_log_likelihood_matches_sklearn(kind):
    rng = np.random.default_rng(0)
    x = mixture_data(rng)[0] if kind == 'mixture' else rectified_data(rng)
    K = 3
    ours = max(G.log_likelihood(x, G.fit_gmm(x, K, kmeans_iters=10, em_iters=300,
                                             min_weight=0, seed=s)) for s in range(3))
    ref = sklearn_best_of_3(x, K)
    assert abs(ours - ref) <= 0.01 * abs(ref), (ours, ref)


def test_recovers_true_means_on_separated_data():
    rng = np.random.default_rng(1)
    x, means, stds, weights = mixture_data(rng, n=6000, sep=8.0)
    g = G.fit_gmm(x, 3, kmeans_iters=5, em_iters=20, seed=0)
    assert g.n_components == 3
    # match components to the truth by the best permutation
    perm = min(itertools.permutations(range(3)),
               key=lambda p: np.abs(g.means[list(p)] - means).sum())
    np.testing.assert_allclose(g.means[list(perm)], means, atol=0.15)
    np.testing.assert_allclose(np.sqrt(g.variances[list(perm)]), stds, rtol=0.1)
    np.testing.assert_allclose(g.weights[list(perm)], weights, atol=0.03)


def test_one_em_step_equals_sklearn_one_step():
    rng = np.random.default_rng(2)
    x = rectified_data(rng, n=2000, d=5)
    K, eps = 3, 1e-5
    init = G.GMM(np.array([0.2, 0.3, 0.5]), x[rng.choice(len(x), K, replace=False)],
                 rng.uniform(0.5, 2.0, size=(K, x.shape[1])))
    ours = G.em_step(x, init, eps=eps)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConvergenceWarning)
        sk = GaussianMixture(K, covariance_type='diag', max_iter=1, reg_covar=eps,
                             weights_init=init.weights, means_init=init.means,
                             precisions_init=1.0 / init.variances).fit(x)
    np.testing.assert_allclose(ours.weights, sk.weights_, rtol=1e-5)
    np.testing.assert_allclose(ours.means, sk.means_, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(ours.variances, sk.covariances_, rtol=1e-5)


def test_responsibilities_and_log_likelihood_match_sklearn():
    rng = np.random.default_rng(3)
    x = rectified_data(rng, n=1000, d=6)
    g = G.fit_gmm(x, 3, 2, 2, seed=0, min_weight=0)
    sk = GaussianMixture(3, covariance_type='diag')
    sk.weights_, sk.means_, sk.covariances_ = g.weights, g.means, g.variances
    sk.precisions_cholesky_ = 1.0 / np.sqrt(g.variances)
    r = G.responsibilities(x, g)
    assert r.shape == (1000, 3)
    np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(r, sk.predict_proba(x), atol=1e-10)
    assert G.log_likelihood(x, g) == pytest.approx(sk.score(x), rel=1e-10)


def test_kmeans_plusplus_picks_distinct_data_points():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 3))
    for seed in range(10):
        idx = G.kmeans_plusplus(x, 5, seed=seed)
        assert idx.shape == (5,)
        assert len(set(idx.tolist())) == 5
        assert ((0 <= idx) & (idx < 500)).all()


def _inertia(x, centres):
    return ((x[:, None, :] - centres[None]) ** 2).sum(-1).min(axis=1).sum()


def test_local_trials_reduce_seeding_inertia_on_average():
    rng = np.random.default_rng(5)
    x = mixture_data(rng, n=2000, d=2, K=3, sep=3.0)[0]
    K = 8
    one = np.mean([_inertia(x, x[G.kmeans_plusplus(x, K, n_local_trials=1, seed=s)])
                   for s in range(40)])
    many = np.mean([_inertia(x, x[G.kmeans_plusplus(x, K, seed=s)]) for s in range(40)])
    assert G.default_local_trials(K) == 4
    assert many < 0.95 * one, (many, one)


def test_seed_determinism():
    rng = np.random.default_rng(6)
    x = rectified_data(rng, n=1500, d=4).astype(np.float32)
    a, b = G.fit_gmm(x, 4, seed=7), G.fit_gmm(x, 4, seed=7)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_components_come_heaviest_first_and_prune_sorts():
    rng = np.random.default_rng(14)
    x = mixture_data(rng, n=3000, d=3, sep=8.0)[0]
    g = G.fit_gmm(x, 3, 2, 2, seed=0)
    assert (np.diff(g.weights) <= 0).all(), g.weights
    p = G.prune(G.GMM(np.array([0.3, 0.005, 0.695]), np.arange(6.).reshape(3, 2),
                      np.ones((3, 2))), 0.01)
    np.testing.assert_allclose(p.weights, [0.695 / 0.995, 0.3 / 0.995])
    np.testing.assert_array_equal(p.means, [[4., 5.], [0., 1.]])


def test_split_em_iters():
    assert G.split_em_iters(2) == (1, 1)
    assert G.split_em_iters(4) == (2, 2)
    assert G.split_em_iters(1) == (1, 0)
    with pytest.raises(ValueError):
        G.split_em_iters(-1)


def test_small_components_are_pruned_and_merged():
    rng = np.random.default_rng(7)
    big = rng.standard_normal((1990, 2))
    tiny = rng.standard_normal((10, 2)) * 0.1 + 30.0       # 0.5% of the points, far away
    x = np.concatenate([big, tiny])
    g = G.fit_gmm(x, 3, 1, 1, seed=0)                       # K-means++ seeds the far cluster
    assert (g.weights >= 0.01).all()
    assert g.n_components < 3
    assert g.weights.sum() == pytest.approx(1.0)
    kept = G.fit_gmm(x, 3, 1, 1, seed=0, min_weight=0.0, min_count=0)
    assert kept.n_components == 3 and kept.weights.min() < 0.01
    # the 10 far points are one component unless min_count (default 16) prunes it
    assert G.fit_gmm(x, 3, 1, 1, seed=0, min_weight=0.0, min_count=10).n_components == 3
    assert G.fit_gmm(x, 3, 1, 1, seed=0, min_weight=0.0).n_components < 3


def _assert_finite(g):
    for a in g:
        assert np.isfinite(a).all(), g
    assert (g.variances > 0).all()
    assert g.weights.sum() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize('name,x,max_k', [
    ('identical', np.full((100, 3), 2.5), 1),
    ('two distinct points', np.repeat(np.array([[0.0, 1.0], [5.0, -1.0]]), 50, axis=0), 2),
    ('n < K', np.array([[0.0, 1.0], [1.0, 0.0]]), 2),
    ('one point', np.array([[3.0, 4.0, 5.0]]), 1),
    ('zeros float32', np.zeros((64, 8), np.float32), 1),
])
def test_degenerate_inputs_give_fewer_components_not_nan(name, x, max_k):
    g = G.fit_gmm(x, 3, 1, 1, seed=0)
    _assert_finite(g)
    assert 1 <= g.n_components <= max_k, name
    r = G.responsibilities(x, g)
    assert np.isfinite(r).all()
    np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize('scale,offset,dtype', [
    (1e18, 0.0, np.float32), (1e-30, 0.0, np.float32), (1e150, 0.0, np.float64),
    (1e-3, 1e4, np.float32), (1.0, 0.0, np.float16), (1e3, 0.0, np.float16),
])
def test_magnitudes_and_dtypes(scale, offset, dtype):
    rng = np.random.default_rng(8)
    base = mixture_data(rng, n=1200, d=3, sep=6.0)[0]
    x = (base * scale + offset).astype(dtype)
    g = G.fit_gmm(x, 3, 2, 2, seed=0)
    _assert_finite(g)
    assert g.means.dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert np.isfinite(G.log_likelihood(x, g))
    if scale >= 1e-3 and dtype != np.float16:
        # scale-invariant: same partition as on the unscaled data
        ref = G.fit_gmm(base, 3, 2, 2, seed=0)
        np.testing.assert_allclose(np.sort(g.weights), np.sort(ref.weights), atol=2e-3)


def test_outlier_beyond_subsample_is_handled():
    x = np.random.default_rng(9).standard_normal((10000, 2)).astype(np.float32)
    x[5001, 0] = 1e20               # z**2 overflows float32: refit in float64
    g = G.fit_gmm(x, 2, 1, 1, seed=0)
    _assert_finite(g)
    # its component of one point is pruned and the outlier merges into the rest
    assert g.n_components == 1
    np.testing.assert_allclose(g.variances[0, 0], 1e40 / 10000, rtol=1e-3)
    x[5001, 0] = 3e37               # the merged variance overflows float32 itself
    with pytest.raises(ValueError, match=r'overflows float32 variances: max \|x\| is 3e\+37'
                       r'.*float64'):
        G.fit_gmm(x, 2, 1, 1, seed=0)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_input_raises(bad):
    x = np.ones((50, 3))
    x[7, 1] = bad
    with pytest.raises(ValueError, match='NaN|Inf'):
        G.fit_gmm(x, 2)


@pytest.mark.parametrize('kwargs,match', [
    (dict(n_components=0), 'n_components'),
    (dict(n_components=2, fit_fraction=0.0), 'fit_fraction'),
    (dict(n_components=2, min_weight=1.0), 'min_weight'),
    (dict(n_components=2, em_iters=-1), 'em_iters'),
    (dict(n_components=2, eps=0.0), 'eps'),
    (dict(n_components=2, n_local_trials=0), 'n_local_trials'),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        G.fit_gmm(np.ones((20, 2)), **kwargs)


def test_bad_shape_raises_with_hint():
    with pytest.raises(ValueError, match='flatten'):
        G.fit_gmm(np.ones((2, 3, 4, 4)), 2)


def test_fit_fraction_subsamples_but_keeps_quality():
    rng = np.random.default_rng(10)
    x = mixture_data(rng, n=8000, d=4, sep=8.0)[0]
    full = G.fit_gmm(x, 3, 2, 2, seed=0)
    part = G.fit_gmm(x, 3, 2, 2, seed=0, fit_fraction=0.25)
    assert G.log_likelihood(x, part) >= G.log_likelihood(x, full) - 0.02 * abs(
        G.log_likelihood(x, full))
    # tiny fractions still use enough points for K components
    g = G.fit_gmm(x[:200], 3, 1, 1, seed=0, fit_fraction=0.01)
    _assert_finite(g)


# ----------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_gpu_fit_matches_cpu_quality():
    import cupy
    rng = np.random.default_rng(11)
    x = rectified_data(rng, n=8192, d=32).astype(np.float32)
    cpu = G.fit_gmm(x, 3, 1, 1, seed=0)
    gpu = G.fit_gmm(cupy.asarray(x), 3, 1, 1, seed=0)
    assert isinstance(gpu.means, cupy.ndarray)
    ll_cpu = G.log_likelihood(x, cpu)
    ll_gpu = G.log_likelihood(cupy.asarray(x), gpu)
    assert abs(ll_gpu - ll_cpu) <= 0.01 * abs(ll_cpu)


@pytest.mark.gpu
def test_gpu_fit_makes_the_cpu_choices_for_the_same_seed():
    # the random draws come from the host, so only float rounding may differ
    import cupy
    rng = np.random.default_rng(15)
    x = mixture_data(rng, n=8192, d=16, sep=6.0)[0].astype(np.float32)
    cpu, nu_cpu = G.fit_gmm(x, 3, 2, 2, seed=3, return_responsibilities=True)
    gpu, nu_gpu = G.fit_gmm(cupy.asarray(x), 3, 2, 2, seed=3, return_responsibilities=True)
    assert gpu.n_components == cpu.n_components
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(cupy.asnumpy(b), a, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(cupy.asnumpy(nu_gpu), nu_cpu, atol=1e-3)


@pytest.mark.gpu
def test_gpu_fit_that_drops_a_component_makes_the_cpu_choices():
    """Far points take a component that the count rule drops: the device's merging
    round gives the CPU's mixture and posteriors."""
    import cupy
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((600, 5)), rng.standard_normal((400, 5)) + 6,
                        rng.standard_normal((4, 5)) * 0.1 + 30]).astype(np.float32)
    cpu, nu_cpu = G.fit_gmm(x, 4, 2, 2, seed=1, return_responsibilities=True)
    gpu, nu_gpu = G.fit_gmm(cupy.asarray(x), 4, 2, 2, seed=1, return_responsibilities=True)
    assert gpu.n_components == cpu.n_components < 4
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(cupy.asnumpy(b), a, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(cupy.asnumpy(nu_gpu), nu_cpu, atol=1e-3)


@pytest.mark.gpu
def test_gpu_em_step_matches_cpu():
    import cupy
    rng = np.random.default_rng(12)
    x = rectified_data(rng, n=4096, d=16)
    g = G.fit_gmm(x, 3, 1, 1, seed=0)
    cpu = G.em_step(x, g)
    gpu = G.em_step(cupy.asarray(x), G.GMM(*[cupy.asarray(a) for a in g]))
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(cupy.asnumpy(b), a, rtol=1e-8, atol=1e-10)
    r = G.responsibilities(cupy.asarray(x), G.GMM(*[cupy.asarray(a) for a in g]))
    np.testing.assert_allclose(cupy.asnumpy(r), G.responsibilities(x, g), atol=1e-10)


@pytest.mark.parametrize('fraction', [1.0, 0.3])
def test_returned_responsibilities_equal_scoring(fraction):
    rng = np.random.default_rng(13)
    x = rectified_data(rng, n=3000, d=6).astype(np.float32)
    g, nu = G.fit_gmm(x, 4, 1, 1, seed=0, fit_fraction=fraction,
                      return_responsibilities=True)
    assert nu.shape == (3000, g.n_components)
    np.testing.assert_allclose(nu, G.responsibilities(x, g), atol=2e-5)
    g2 = G.fit_gmm(x, 4, 1, 1, seed=0, fit_fraction=fraction)
    for a, b in zip(g, g2):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ several processes

@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_the_one_pass_lloyd_moments_equal_labels_then_moments(dtype):
    """The Lloyd step's moments in one pass equal, bitwise, those of the partition by
    the distance product's labels (over several row blocks, with tied distances of
    repeated points and a NaN)."""
    rng = np.random.default_rng(23)
    x = np.concatenate([np.repeat(rng.standard_normal((5, 30)), 400, axis=0),
                        rng.standard_normal((9000, 30)) * 3]).astype(dtype)
    frame = G._frame_for(x, 1e-5, np.dtype(dtype))
    assert len(G._row_blocks(frame)) >= 3
    for K in (1, 3, 6):
        centres = np.concatenate([x[:1], x[rng.choice(x.shape[0], K - 1)]])
        z = (centres - frame.shift) / frame.scale
        coef = G._device_coef(frame, G._dist_coef(z))
        two_pass = G._moments(frame, G._one_hot(G._lloyd_labels(frame, coef), K,
                                                frame.za.dtype))
        assert G._lloyd_moments(frame, coef, K).tobytes() == two_pass.tobytes()
    bad = frame.za.copy()
    bad[4321, 3] = np.nan
    frame = frame._replace(za=bad)
    two_pass = G._moments(frame, G._one_hot(G._lloyd_labels(frame, coef), 6, bad.dtype))
    np.testing.assert_array_equal(G._lloyd_moments(frame, coef, 6), two_pass)


def _fresh_fit(x, *args, **kwargs):
    """``fit_gmm`` in a new thread: nothing of an earlier fit's memory is reused."""
    out = []
    t = threading.Thread(target=lambda: out.append(G.fit_gmm(x, *args, **kwargs)))
    t.start()
    t.join()
    return out[0]


def _copies(fit):
    g, resp = fit
    return [np.array(a, copy=True) for a in g] + [np.array(resp, copy=True)]


def _assert_bitwise(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert u.tobytes() == v.tobytes()


def test_consecutive_fits_equal_fresh_fits_and_keep_their_results():
    """Fits one after another in a thread (other data of the same shape, other shapes,
    float64 after float32, the float64 refit of an outlier) give bitwise the fits of a
    fresh thread, and what a fit returned stays as it was after the next fits (nothing
    returned shares memory a later fit writes)."""
    rng = np.random.default_rng(21)
    a = (rng.standard_normal((3000, 40)) * 2 + 1).astype(np.float32)
    b = np.maximum(rng.standard_normal((3000, 40)), 0).astype(np.float32)
    c = mixture_data(rng, n=700, d=5)[0]
    e = rng.standard_normal((5000, 3)).astype(np.float32)
    e[17, 1] = 1e20                     # z**2 overflows float32: the float64 refit
    cases = [(a, 3, 1, 1), (b, 3, 1, 1), (c, 4, 2, 2), (a[:900, :7].copy(), 2, 1, 2),
             (e, 3, 1, 1), (b, 3, 1, 1)]
    fits, kept = [], []
    for x, *args in cases:
        fit = G.fit_gmm(x, *args, seed=5, return_responsibilities=True)
        fits.append(fit)
        kept.append(_copies(fit))
    for (x, *args), fit, copy in zip(cases, fits, kept):
        _assert_bitwise(_copies(fit), copy)         # not overwritten by later fits
        _assert_bitwise(copy, _copies(_fresh_fit(x, *args, seed=5,
                                                 return_responsibilities=True)))
    for i, fit in enumerate(fits):                  # no two fits share memory
        for other in fits[i + 1:]:
            for u in list(fit[0]) + [fit[1]]:
                assert not any(np.shares_memory(u, v) for v in list(other[0]) + [other[1]])


def test_fits_in_threads_at_once_equal_fits_one_by_one():
    rng = np.random.default_rng(22)
    parts = [np.maximum(rng.standard_normal((2000, 24)), 0).astype(np.float32) + i
             for i in range(3)]
    alone = [_copies(G.fit_gmm(p, 3, seed=1, return_responsibilities=True)) for p in parts]
    out = [None] * len(parts)
    barrier = threading.Barrier(len(parts), timeout=30)

    def run(i):
        barrier.wait()
        for _ in range(3):
            out[i] = G.fit_gmm(parts[i], 3, seed=1, return_responsibilities=True)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for fit, ref in zip(out, alone):
        _assert_bitwise(_copies(fit), ref)


class _Ranks:
    """P in-process ranks (threads) whose reducers gather, and sum in rank order, as
    MPIReducer."""

    def __init__(self, size):
        self.size = size
        self.slots = [None] * size
        self.barrier = threading.Barrier(size, timeout=30)
        self.calls = [0] * size

    def reducer(self, rank):
        group = self

        class Reducer:
            size = group.size

            def allgather(self, a):
                group.calls[rank] += 1
                group.slots[rank] = np.array(a, dtype=np.float64)
                group.barrier.wait()
                every = np.stack(group.slots)
                group.barrier.wait()
                return every

            def sum(self, a):
                every = self.allgather(a)
                total = every[0].copy()
                for part in every[1:]:
                    total += part
                return total
        r = Reducer()
        r.rank = rank
        return r

    def fit(self, parts, *args, **kwargs):
        out, errors = [None] * self.size, [None] * self.size

        def run(rank):
            try:
                out[rank] = G.fit_gmm(parts[rank], *args, reducer=self.reducer(rank), **kwargs)
            except Exception as e:          # noqa: BLE001 (reported per rank; a rank
                errors[rank] = e            # left waiting breaks the barrier's timeout)
        threads = [threading.Thread(target=run, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out, errors


def _assert_same(a, b):
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize('dtype,K,iters,fraction', [
    (np.float64, 3, (1, 1), 1.0), (np.float32, 5, (2, 2), 1.0), (np.float32, 4, (1, 1), 0.3),
    (np.float32, 8, (1, 1), 1.0),
])
def test_local_reducer_equals_no_reducer(dtype, K, iters, fraction):
    rng = np.random.default_rng(16)
    x = rectified_data(rng, n=3000, d=6).astype(dtype)
    ref, nu_ref = G.fit_gmm(x, K, *iters, seed=4, fit_fraction=fraction,
                            return_responsibilities=True)
    got, nu = G.fit_gmm(x, K, *iters, seed=4, fit_fraction=fraction,
                        return_responsibilities=True, reducer=G.LocalReducer())
    _assert_same(got, ref)
    np.testing.assert_array_equal(nu, nu_ref)


def _three_clusters(rng):
    centres = np.array([[0.0, 0, 0], [15.0, 0, 0], [0.0, 15.0, 0]])
    return [c + rng.standard_normal((m, 3)) for c, m in zip(centres, (500, 300, 200))]


def test_ranks_fit_the_union_of_their_points():
    a, b, c = _three_clusters(np.random.default_rng(17))
    parts = [a[:350], np.concatenate([a[350:], b[:100], c[:20]]),
             np.concatenate([b[100:], c[20:]])]                    # rank 0: one cluster
    ranks = _Ranks(3)
    out, errors = ranks.fit(parts, 3, 1, 1, seed=2)
    assert errors == [None] * 3
    for g in out[1:]:
        _assert_same(g, out[0])
    ref = G.fit_gmm(np.concatenate(parts), 3, 1, 1, seed=2)
    for u, v in zip(out[0], ref):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out[0].weights, [0.5, 0.3, 0.2], atol=1e-6)
    # the frame, the seeding subsample, the seeds' partition's moments, the EM pass
    assert ranks.calls == [4] * 3
    assert not np.allclose(G.fit_gmm(parts[0], 3, 1, 1, seed=2).means, ref.means, atol=0.5)


@pytest.mark.parametrize('K,dtype', [(3, np.float64), (5, np.float64), (3, np.float32)])
def test_ranks_seed_on_the_subsample_one_process_would_draw(K, dtype):
    """More points than K-means++ seeds on: the subsample, and so the seeds, depend on
    the seed and the number of points only, not on the split over ranks; the
    collectives do not grow with K."""
    rng = np.random.default_rng(24)
    x = mixture_data(rng, n=3000, d=3, sep=8.0)[0].astype(dtype)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=5e-4, atol=1e-5)
    assert x.shape[0] > G.seeding_points(K)
    parts = [x[:400], x[400:2100], x[2100:]]
    ranks = _Ranks(3)
    out, errors = ranks.fit(parts, K, 1, 1, seed=3)
    assert errors == [None] * 3
    for g in out[1:]:
        _assert_same(g, out[0])
    ref = G.fit_gmm(x, K, 1, 1, seed=3)
    for u, v in zip(out[0], ref):
        np.testing.assert_allclose(u, v, **tol)
    assert ranks.calls == [4] * 3
    rows = G.kmeans_plusplus(x, K, seed=3)
    assert len(set(rows.tolist())) == K


def test_ranks_prune_by_global_counts():
    """A cluster of 12 points on each of two ranks has 24 >= min_count points in all."""
    rng = np.random.default_rng(18)
    a, b, _ = _three_clusters(rng)
    far = rng.standard_normal((24, 3)) * 0.3 + 40.0
    parts = [np.concatenate([a[:250], far[:12]]), np.concatenate([a[250:], b, far[12:]])]
    out, errors = _Ranks(2).fit(parts, 3, 2, 2, seed=0, min_weight=0.0)
    assert errors == [None, None]
    _assert_same(out[0], out[1])
    assert out[0].n_components == 3
    assert out[0].weights.min() * 824 == pytest.approx(24, abs=1e-6)
    # alone, each rank would prune its 12 far points
    assert G.fit_gmm(parts[0], 3, 2, 2, seed=0, min_weight=0.0).weights.min() * 262 > 16


def test_ranks_subsample_their_own_points():
    a, b, c = _three_clusters(np.random.default_rng(19))
    parts = [np.concatenate([a, b[:50]]), np.concatenate([b[50:], c])]
    out, errors = _Ranks(2).fit(parts, 3, 1, 1, seed=5, fit_fraction=0.5)
    assert errors == [None, None]
    _assert_same(out[0], out[1])
    np.testing.assert_allclose(np.sort(out[0].weights), [0.2, 0.3, 0.5], atol=0.05)


def test_a_nan_on_one_rank_is_reported_on_all():
    a, b, c = _three_clusters(np.random.default_rng(20))
    parts = [a, np.concatenate([b, c])]
    parts[1][7, 1] = np.inf
    out, errors = _Ranks(2).fit(parts, 3, 1, 1, seed=1)
    assert 'rank(s) [1] contain NaN/Inf' in str(errors[0])
    assert 'x contains 1 Inf value (in 1 of 500 points)' in str(errors[1])


def test_reducer_arguments_are_checked():
    x = np.random.default_rng(21).standard_normal((100, 2))
    with pytest.raises(ValueError, match="'reducer' parameter of fit_gmm"):
        G.fit_gmm(x, 2, seed=0, reducer=object())
    two = _Ranks(2).reducer(0)
    with pytest.raises(ValueError, match="'seed' parameter of fit_gmm must be an int.*the "
                                         "same on all ranks"):
        G.fit_gmm(x, 2, reducer=two)
    G.fit_gmm(x, 2, reducer=G.LocalReducer())          # one rank needs no shared seed


def test_union_fit_on_the_device_path_equals_the_numpy_path():
    """The reducer path's device branches (gathers of seed rows, device draws), run
    through the stand-in device of mixnorm.testing.opcount."""
    from mixnorm.testing import opcount as _opcount
    x = rectified_data(np.random.default_rng(22), n=2000, d=8).astype(np.float32)
    ref = G.fit_gmm(x, 4, 2, 2, seed=6)
    with _opcount.counting():
        got = G.fit_gmm(_opcount.to_device(x), 4, 2, 2, seed=6, reducer=G.LocalReducer())
    assert isinstance(got.means, _opcount.Dev)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(np.asarray(b.view(np.ndarray)), a, rtol=2e-5, atol=2e-5)


def test_a_nan_outside_a_fit_fraction_fit_is_reported_on_all():
    """The subsample leaves the NaN point out of the fit; scoring every point finds it,
    and every rank raises."""
    a, b, c = _three_clusters(np.random.default_rng(23))
    parts = [np.concatenate([a, b[:50]]), np.concatenate([b[50:], c])]
    clean, errors = _Ranks(2).fit(parts, 3, 1, 1, seed=5, fit_fraction=0.2,
                                  return_responsibilities=True)
    assert errors == [None, None]
    # the rows rank 1 fits: its subsample, drawn as fit_gmm draws it
    rows = G._fitted_points(np.arange(len(parts[1]))[:, None], 3, 0.2,
                            np.random.default_rng(5), _Ranks(2).reducer(1))[:, 0]
    outside = np.setdiff1d(np.arange(len(parts[1])), rows)[0]
    parts[1] = parts[1].copy()
    parts[1][outside, 2] = np.nan
    _, errors = _Ranks(2).fit(parts, 3, 1, 1, seed=5, fit_fraction=0.2,
                              return_responsibilities=True)
    for e in errors:
        assert 'the points of rank(s) [1] cannot be scored' in str(e), e
        assert 'rank 1: x contains 1 NaN value (in 1 of %d points)' % len(parts[1]) in str(e)
    assert str(errors[0]) == str(errors[1])


def test_a_float32_overflow_names_the_rank_and_its_value():
    a, b, c = _three_clusters(np.random.default_rng(24))
    parts = [a.astype(np.float32), np.concatenate([b, c]).astype(np.float32)]
    parts[1][3, 0] = 1e30
    _, errors = _Ranks(2).fit(parts, 3, 1, 1, seed=1)
    for e in errors:
        assert 'max |x| is 1e+30 (on rank 1 of 2)' in str(e), e
        assert 'x / 1e+30' in str(e)
    assert str(errors[0]) == str(errors[1])


# ------------------------------------------------- the device path, on the CPU

def _on_stand_in(fn, x, *args, **kwargs):
    """``fn(x, *args)`` on the stand-in device of mixnorm.testing.opcount (the GPU's code path,
    run on NumPy), its array results back as NumPy arrays, and the counts."""
    from mixnorm.testing import opcount as _opcount

    def host(a):
        if isinstance(a, tuple):
            return type(a)(*[host(b) for b in a]) if hasattr(a, '_fields') else \
                tuple(host(b) for b in a)
        return np.array(a.view(np.ndarray)) if isinstance(a, _opcount.Dev) else a
    with _opcount.counting():
        out = {}
        counts = _opcount.tally(lambda: out.setdefault(
            'r', fn(_opcount.to_device(x), *args, **kwargs)))
    return host(out['r']), counts


def _pruning_data():
    rng = np.random.default_rng(7)
    return np.concatenate([rng.standard_normal((1990, 2)),
                           rng.standard_normal((10, 2)) * 0.1 + 30.0])


def _outlier_data():
    x = np.random.default_rng(9).standard_normal((10000, 2)).astype(np.float32)
    x[5001, 0] = 1e20
    return x


@pytest.mark.parametrize('name,x,args', [
    ('identical', np.full((100, 3), 2.5), (3, 1, 1)),
    ('two distinct points', np.repeat(np.array([[0.0, 1.0], [5.0, -1.0]]), 50, axis=0),
     (3, 1, 1)),
    ('n < K', np.array([[0.0, 1.0], [1.0, 0.0]]), (3, 1, 1)),
    ('zeros float32', np.zeros((64, 8), np.float32), (3, 1, 1)),
    ('pruned and merged', _pruning_data(), (3, 1, 1)),
    ('outlier refit in float64', _outlier_data(), (2, 1, 1)),
    ('float16', (mixture_data(np.random.default_rng(8), n=1200, d=3)[0] * 1e3
                 ).astype(np.float16), (3, 2, 2)),
    ('float32 far from the origin', (mixture_data(np.random.default_rng(8), n=1200, d=3)[0]
                                     * 1e-3 + 1e4).astype(np.float32), (3, 2, 2)),
    ('float64 Lloyd and EM', rectified_data(np.random.default_rng(25), n=1500, d=5),
     (4, 3, 2)),
    ('K = 1', rectified_data(np.random.default_rng(26), n=500, d=5), (1, 1, 1)),
])
def test_the_device_path_fits_as_the_numpy_path(name, x, args):
    """The GPU's fit (kernels and all), run through the stand-in device, gives the
    NumPy fit's mixture and posteriors up to float rounding, on the inputs that take
    its other branches (pruning on the host, the float64 refit, K = 1)."""
    ref, nu_ref = G.fit_gmm(x, *args, seed=0, return_responsibilities=True)
    (got, nu), _ = _on_stand_in(G.fit_gmm, x, *args, seed=0, return_responsibilities=True)
    assert got.n_components == ref.n_components, name
    assert got.means.dtype == ref.means.dtype and nu.dtype == nu_ref.dtype
    tol = 1e-9 if ref.means.dtype == np.float64 and x.dtype == np.float64 else 2e-4
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * max(1.0, np.abs(a).max()))
    np.testing.assert_allclose(nu, nu_ref, atol=tol)


def test_the_device_path_raises_as_the_numpy_path():
    x = np.ones((50, 3))
    x[7, 1] = np.nan
    with pytest.raises(ValueError, match=r'x contains 1 NaN value \(in 1 of 50 points\)'):
        _on_stand_in(G.fit_gmm, x, 2, seed=0)
    x = _outlier_data()
    x[5001, 0] = 3e37
    with pytest.raises(ValueError, match=r'overflows float32 variances: max \|x\| is 3e\+37'):
        _on_stand_in(G.fit_gmm, x, 2, 1, 1, seed=0)


@pytest.mark.parametrize('K', [3, 5])
def test_the_device_fit_waits_for_the_device_once(K):
    """One copy to the host per fit, whatever the iterations; the device work grows with
    the K-means++ rounds and passes, never with the points."""
    x = rectified_data(np.random.default_rng(27), n=3000, d=6).astype(np.float32)
    counts = []
    for n, iters in ((3000, (1, 1)), (1500, (1, 1)), (3000, (2, 3))):
        _, c = _on_stand_in(G.fit_gmm, x[:n], K, *iters, seed=1,
                            return_responsibilities=True)
        assert c['d2h'] == 1, c
        counts.append(c['launch'])
    assert counts[0] == counts[1]
    assert counts[2] > counts[0]
    # frame 2, K-means++ 1 + 2 (K - 1), the partitions' moments 1, per pass 4, finish 3,
    # the count rule's merging round 2 (a no-op here: nothing is dropped)
    assert counts[0] <= 2 + 1 + 2 * (K - 1) + 1 + 4 + 3 + 2, counts
