"""fit_gmm, responsibilities and log_likelihood on awkward but legal input: a clear
ValueError or a documented finite result, never a dead component or NaN."""
import re
import warnings

import chainer
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

import mixnorm
from mixnorm import gmm as G

EPS = 1e-5


def sklearn_one_component(x):
    return GaussianMixture(1, covariance_type='diag', reg_covar=EPS).fit(x)


# ------------------------------------------------------------- minimum effective count

@pytest.mark.parametrize('n,d,K', [(5, 16, 10), (50, 16, 60), (31, 4, 3)])
def test_too_few_points_give_one_component_with_bn_variances(n, d, K):
    x = np.random.default_rng(n).standard_normal((n, d))
    g, nu = G.fit_gmm(x, K, 1, 1, seed=0, return_responsibilities=True)
    assert g.n_components == 1 and nu.shape == (n, 1)
    sk = sklearn_one_component(x)                  # BN's mean and (biased) variance + eps
    np.testing.assert_allclose(g.means, sk.means_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.variances, sk.covariances_, rtol=1e-10)
    np.testing.assert_allclose(g.variances[0], x.var(axis=0) + EPS, rtol=1e-10)


def test_no_component_under_min_count_in_a_small_fc_batch():
    # 32 points in R^256: K-means++ would give components of one or two points
    x = np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32)
    for seed in range(5):
        g, nu = G.fit_gmm(x, 5, 1, 1, seed=seed, return_responsibilities=True)
        assert (g.weights * 32 >= G.MIN_COUNT * (1 - 1e-6)).all(), g.weights
        assert nu.shape == (32, g.n_components)
        assert (g.variances.min(axis=1) > 0.1).all()       # not a collapsed component
        few = G.fit_gmm(x, 5, 1, 1, seed=seed, min_count=0, min_weight=0.0)
        assert few.weights.min() * 32 < G.MIN_COUNT            # the rule did something


@pytest.mark.parametrize('min_count', [G.MIN_COUNT, 40])
def test_min_count_holds_on_clusters_of_mixed_sizes(min_count):
    rng = np.random.default_rng(1)
    sizes = [400, 120, 30, 12]
    x = np.concatenate([rng.standard_normal((m, 3)) + 9.0 * k for k, m in enumerate(sizes)])
    g = G.fit_gmm(x, 4, 2, 2, seed=0, min_count=min_count)
    counts = g.weights * x.shape[0]
    assert (counts >= min_count * (1 - 1e-9)).all(), counts
    kept = [m for m in sizes if m >= min_count]
    assert g.n_components == len(kept)
    assert g.weights.sum() == pytest.approx(1.0)


def test_k_at_least_n_is_no_worse_than_one_component():
    x = np.random.default_rng(2).standard_normal((300, 4))
    one = G.log_likelihood(x, G.fit_gmm(x, 1))
    assert one == pytest.approx(sklearn_one_component(x).score(x), rel=1e-10)
    for K in (300, 100, 60):
        g = G.fit_gmm(x, K, seed=0)
        assert G.log_likelihood(x, g) >= one - 1e-9 * abs(one), (K, g.n_components)
        assert (g.weights * 300 >= G.MIN_COUNT * (1 - 1e-9)).all()


def test_pruned_points_merge_as_one_em_step_over_the_kept_components():
    """The merge is the E-step over the kept components (weights renormalised) and the
    M-step: compare with scikit-learn's single EM step from them."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((600, 2)), rng.standard_normal((300, 2)) + 8,
                        0.3 * rng.standard_normal((10, 2)) + [30, -30]])
    full = G.fit_gmm(x, 3, 1, 1, seed=0, min_count=0, min_weight=0.0)
    assert full.n_components == 3 and round(full.weights[-1] * len(x)) == 10
    kept = G.GMM(full.weights[:2] / full.weights[:2].sum(), full.means[:2],
                 full.variances[:2])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConvergenceWarning)
        sk = GaussianMixture(2, covariance_type='diag', max_iter=1, reg_covar=EPS,
                             weights_init=kept.weights, means_init=kept.means,
                             precisions_init=1.0 / kept.variances).fit(x)
    g = G.fit_gmm(x, 3, 1, 1, seed=0, min_count=12, min_weight=0.0)
    assert g.n_components == 2
    order = np.argsort(-sk.weights_)
    np.testing.assert_allclose(g.weights, sk.weights_[order], rtol=1e-9)
    np.testing.assert_allclose(g.means, sk.means_[order], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g.variances, sk.covariances_[order], rtol=1e-9)


def test_small_fc_batch_normalizes_like_batch_normalization():
    """N=5 points, K=10: the layer gave outputs of std 1e-5 when every point was its own
    component; with K' = 1 it is BN."""
    x = np.random.default_rng(4).standard_normal((5, 8)).astype(np.float32)
    mn = mixnorm.MixtureNormalization(8, n_components=10, seed=0)
    bn = chainer.links.BatchNormalization(8, eps=mn.eps)
    y = mn(x).array
    assert mn.effective_components == 1
    np.testing.assert_allclose(y, bn(x).array, atol=1e-4)
    assert y.std(axis=0) == pytest.approx(np.ones(8), abs=1e-3)


# ----------------------------------------------------------------- float32 overflow

def test_float32_variance_overflow_raises_with_the_fix():
    rng = np.random.default_rng(5)
    base = np.concatenate([rng.standard_normal((300, 3)), rng.standard_normal((300, 3)) + 6])
    x = (base * 1e20).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)
        with pytest.raises(ValueError) as e:
            G.fit_gmm(x, 3)
    msg = str(e.value)
    assert 'overflows float32 variances' in msg and 'float64' in msg and 'rescale' in msg
    top = float(np.abs(x).max())
    assert re.search(r'max \|x\| is ([0-9.e+]+)', msg).group(1) == '%g' % top
    # the fixes it names work: float64, or rescaled float32
    g64 = G.fit_gmm(x.astype(np.float64), 3, seed=0)
    g32 = G.fit_gmm((x / top).astype(np.float32), 3, seed=0)
    for g in (g64, g32):
        assert all(np.isfinite(a).all() for a in g)
    np.testing.assert_allclose(np.sort(g64.weights), np.sort(g32.weights), atol=1e-3)


def test_float32_at_the_edge_of_its_range_still_fits():
    x = (np.random.default_rng(6).standard_normal((500, 3)) * 1e18).astype(np.float32)
    for K in (1, 3):
        g = G.fit_gmm(x, K, seed=0)
        assert g.variances.dtype == np.float32
        assert all(np.isfinite(a).all() for a in g) and (g.variances > 1e34).all()


# ------------------------------------------------------------------- check_finite

def test_check_finite_passes_finite_arrays():
    assert G.check_finite(np.ones((4, 3))) is None
    assert G.check_finite(np.arange(6)) is None                     # integers
    assert G.check_finite(np.ones((2, 2, 2), np.float16)) is None


@pytest.mark.parametrize('values,expect', [
    ([np.nan, np.nan], r'contains 2 NaN values \(in 1 of 4 points\)'),
    ([np.inf], r'contains 1 Inf value \(in 1 of 4 points\)'),
    ([np.nan, -np.inf, np.inf], r'contains 1 NaN and 2 Inf values \(in 1 of 4 points\)'),
])
def test_check_finite_counts_only_what_is_there(values, expect):
    x = np.zeros((4, 3))
    x[2, :len(values)] = values
    with pytest.raises(ValueError, match=expect) as e:
        G.check_finite(x, name='layer input')
    assert str(e.value).startswith('layer input contains')
    assert not re.search(r'\b0 (NaN|Inf)', str(e.value))


def test_check_finite_on_other_shapes():
    x = np.zeros((2, 3, 2, 2), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match=r'4 NaN values \(of 24 values\)'):
        G.check_finite(x)


# ------------------------------------------------------- scoring checks its input

def _fitted():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.standard_normal((200, 3)), rng.standard_normal((200, 3)) + 5])
    return x, G.fit_gmm(x, 2, seed=0)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize('fn', [G.responsibilities, G.log_likelihood, G.em_step])
def test_scoring_non_finite_input_raises(fn, bad):
    x, g = _fitted()
    x = x.copy()
    x[11, 1] = bad
    with pytest.raises(ValueError, match=r'contains 1 (NaN|Inf) value \(in 1 of 400 points\)'):
        fn(x, g)


@pytest.mark.parametrize('field,value,match', [
    ('means', np.nan, 'gmm.means holds 1 non-finite'),
    ('variances', np.inf, 'gmm.variances holds 1 non-finite'),
    ('variances', 0.0, 'variances must be positive'),
    ('weights', -0.5, 'weights must be non-negative'),
])
@pytest.mark.parametrize('fn', [G.responsibilities, G.log_likelihood])
def test_scoring_with_a_broken_mixture_raises(fn, field, value, match):
    x, g = _fitted()
    arrays = g._asdict()
    arrays[field] = arrays[field].copy()
    arrays[field].flat[0] = value
    with pytest.raises(ValueError, match=match):
        fn(x, G.GMM(**arrays))


def test_scoring_finite_float32_that_overflows_raises():
    x, g = _fitted()
    x = x.astype(np.float32)
    g = G.GMM(*[a.astype(np.float32) for a in g])
    x[3, 0] = 3e37                          # finite, but z**2 overflows float32
    for fn in (G.responsibilities, G.log_likelihood):
        with pytest.raises(ValueError, match='finite but its log-densities.*overflow float32'):
            fn(x, g)
    r = G.responsibilities(x.astype(np.float64), g)          # the fix it names
    assert np.isfinite(r).all()


# ------------------------------------------------------------ argument validation

@pytest.mark.parametrize('seed', [-1, 1.5, 'a', True, np.random.RandomState(0)])
def test_bad_seed_names_seed(seed):
    with pytest.raises(ValueError, match=r"'seed' parameter of fit_gmm must be None, an "
                                         r"int in the range \[0, inf\) or a "
                                         r"numpy.random.Generator"):
        G.fit_gmm(np.ones((40, 2)), 2, seed=seed)
    with pytest.raises(ValueError, match="'seed' parameter of kmeans_plusplus"):
        G.kmeans_plusplus(np.ones((40, 2)), 2, seed=seed)


def test_seed_may_be_a_generator():
    x = np.random.default_rng(8).standard_normal((500, 3))
    a = G.fit_gmm(x, 3, seed=np.random.default_rng(11))
    b = G.fit_gmm(x, 3, seed=11)                # an int seeds default_rng
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    rs = np.random.default_rng(11)
    G.fit_gmm(x, 3, seed=rs)
    assert rs.random() != np.random.default_rng(11).random()       # used, as given


@pytest.mark.parametrize('name,value', [
    ('n_components', 0), ('n_components', 2.0), ('n_components', '3'),
    ('kmeans_iters', -1), ('em_iters', 1.5), ('n_local_trials', 0),
    ('fit_fraction', 0.0), ('fit_fraction', 1.5), ('fit_fraction', float('nan')),
    ('min_weight', 1.0), ('min_weight', -0.1), ('min_count', -1), ('min_count', 'many'),
    ('eps', 0.0), ('eps', float('inf')), ('return_responsibilities', 'yes'),
])
def test_bad_arguments_are_named_up_front(name, value):
    x = np.ones((40, 2))
    x[0, 0] = np.nan                        # validation comes before any look at the data
    kwargs = {'n_components': 2, name: value}
    with pytest.raises(ValueError, match=r"The '%s' parameter of fit_gmm must be" % name) \
            as e:
        G.fit_gmm(x, **kwargs)
    assert isinstance(e.value, TypeError)   # as scikit-learn's InvalidParameterError
