"""MixtureNormalization as a drop-in for ``L.BatchNormalization``: recomputation
(``F.forget``), mixed16, BN's constructor arguments, Eq. 38 as printed, snapshots,
lazy sizes and ``replace_batch_normalization`` keeping BN's configuration."""
import mixnorm._compat  # noqa: F401

import numpy as np
import pytest

import chainer
import chainer.functions as F
import chainer.links as L

import mixnorm


def clustered(seed, shape, K=3, sep=6.0, dtype=np.float64):
    rng = np.random.RandomState(seed)
    N, C = shape[0], shape[1]
    x = rng.randn(*shape)
    labels = rng.randint(K, size=(N,) + tuple(shape[2:]))
    centres = rng.randn(K, C) * sep
    x += np.moveaxis(centres[labels], -1, 1)
    return x.astype(dtype)


def train_step(link, x, gy, forget=False):
    if isinstance(link, chainer.Link):
        link.cleargrads()
    v = chainer.Variable(x)
    y = F.forget(link, v) if forget else link(v)
    y.grad = gy
    y.backward()
    return y.array, v.grad


# ------------------------------------------------------------------ recomputation
@pytest.mark.parametrize('K', [1, 3])
def test_forget_equals_plain_forward(K):
    x = clustered(0, (16, 6, 4, 4))
    gy = np.random.RandomState(1).randn(*x.shape)
    plain = mixnorm.MixtureNormalization(6, n_components=K, seed=4)
    recomputed = mixnorm.MixtureNormalization(6, n_components=K, seed=4)
    y0, gx0 = train_step(plain, x, gy)
    y1, gx1 = train_step(recomputed, x, gy, forget=True)
    assert recomputed.n_fits == plain.n_fits == 1
    np.testing.assert_allclose(y1, y0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx1, gx0, rtol=1e-10, atol=1e-10)
    assert np.isfinite(plain.gamma.grad).all()
    np.testing.assert_allclose(recomputed.gamma.grad, plain.gamma.grad, rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(recomputed.beta.grad, plain.beta.grad, rtol=1e-10,
                               atol=1e-10)
    for name in ('queue_weights', 'queue_means', 'queue_vars'):
        np.testing.assert_array_equal(getattr(recomputed, name), getattr(plain, name))
    assert recomputed._pending == []


def test_forget_inside_a_deeper_function_over_several_steps():
    x = clustered(2, (8, 4, 3, 3))
    gy = np.random.RandomState(3).randn(*x.shape)
    a = mixnorm.MixtureNormalization(4, n_components=3, seed=1)
    b = mixnorm.MixtureNormalization(4, n_components=3, seed=1)
    for step in range(3):
        xs = x + step
        a.cleargrads()
        b.cleargrads()
        train_step(lambda v: F.relu(a(v * 2)), xs, gy)
        train_step(lambda v: F.relu(b(v * 2)), xs, gy, forget=True)
        np.testing.assert_allclose(b.gamma.grad, a.gamma.grad, rtol=1e-10, atol=1e-10)
    assert a.n_fits == b.n_fits == 3
    np.testing.assert_array_equal(b.queue_means, a.queue_means)


def test_recomputed_forward_without_kept_posteriors_refits_the_last_fit():
    x = clustered(5, (10, 3, 2, 2))
    mn = mixnorm.MixtureNormalization(3, n_components=3, seed=7)
    y = mn(x).array
    queue = mn.queue_means.copy()
    with chainer.using_config('in_recomputing', True):
        y2 = mn(x).array
    assert mn.n_fits == 1
    np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(mn.queue_means, queue)


# ------------------------------------------------------------------ mixed16
@pytest.mark.parametrize('K', [1, 3])
def test_mixed16_parameters_in_float32_activations_in_float16(K):
    with chainer.using_config('dtype', chainer.mixed16):
        mn = mixnorm.MixtureNormalization(5, n_components=K, seed=0)
        bn = L.BatchNormalization(5)
    assert mn.gamma.dtype == bn.gamma.dtype == np.float32
    assert mn.beta.dtype == np.float32
    x = clustered(0, (12, 5, 3, 3), dtype=np.float16)
    v = chainer.Variable(x)
    y = mn(v)
    assert y.dtype == np.float16
    y.grad = np.ones_like(x)
    y.backward()
    assert v.grad.dtype == np.float16 and mn.gamma.grad.dtype == np.float32
    assert mn.last_gmm.means.dtype == np.float32      # statistics in float32
    if K == 1:
        yb = bn(chainer.Variable(x))
        np.testing.assert_allclose(y.array.astype(np.float32), yb.array.astype(np.float32),
                                   atol=2e-2)


# ------------------------------------------------------------------ BN's arguments
@pytest.mark.parametrize('kw', [
    dict(use_gamma=False), dict(use_beta=False), dict(use_gamma=False, use_beta=False),
    dict(initial_gamma=2.5, initial_beta=-1.0),
    dict(initial_gamma=chainer.initializers.Constant(0.5)),
    dict(initial_beta=np.arange(4, dtype=np.float32))])
def test_bn_arguments_mean_what_they_mean_in_bn(kw):
    """K = 1 with BN's arguments equals BN built with the same arguments."""
    x = np.random.RandomState(0).randn(16, 4, 3, 3)
    gy = np.random.RandomState(1).randn(*x.shape)
    mn = mixnorm.MixtureNormalization(4, n_components=1, dtype=np.float64, **kw)
    bn = L.BatchNormalization(4, dtype=np.float64, **kw)
    assert hasattr(mn, 'gamma') and (mn.gamma is None) == (not kw.get('use_gamma', True))
    assert (mn.beta is None) == (not kw.get('use_beta', True))
    y_mn, gx_mn = train_step(mn, x, gy)
    y_bn, gx_bn = train_step(bn, x, gy)
    np.testing.assert_allclose(y_mn, y_bn, atol=1e-9)
    np.testing.assert_allclose(gx_mn, gx_bn, atol=1e-9)
    for name in ('gamma', 'beta'):
        if getattr(mn, name) is not None:
            assert np.isfinite(getattr(mn, name).grad).all()
            np.testing.assert_allclose(getattr(mn, name).grad, getattr(bn, name).grad,
                                       atol=1e-9)


def test_component_affine_takes_initial_values_for_every_component():
    mn = mixnorm.MixtureNormalization(3, n_components=2, affine='component', initial_gamma=2.0,
                                      initial_beta=np.array([1., 2., 3.]))
    np.testing.assert_array_equal(mn.gamma.array, np.full((2, 3), 2.0))
    np.testing.assert_array_equal(mn.beta.array, [[1, 2, 3], [1, 2, 3]])


@pytest.mark.parametrize('kw,match', [
    (dict(affine=None, initial_gamma=1.0), 'affine=None'),
    (dict(affine='component', inference='running'), 'no components'),
    (dict(axis=(2, 0)), 'ascending'),
    (dict(inference='eq38'), "'consistent'"),
])
def test_bn_arguments_mn_cannot_honour_say_so(kw, match):
    with pytest.raises(ValueError, match=match):
        mixnorm.MixtureNormalization(4, n_components=3, **kw)


def test_axis_of_the_channel_layout_is_accepted():
    mn = mixnorm.MixtureNormalization(4, n_components=2, axis=(0, 2, 3), seed=0)
    assert mn(clustered(0, (6, 4, 2, 2))).shape == (6, 4, 2, 2)
    with pytest.raises(ValueError, match='axis'):
        mn(np.ones((6, 4), np.float32))


# ------------------------------------------------------------------ validation up front
@pytest.mark.parametrize('kw,match', [
    (dict(fit_fraction=0.0), 'fit_fraction'), (dict(fit_fraction=1.5), 'fit_fraction'),
    (dict(min_weight=1.0), 'min_weight'), (dict(min_weight=-0.1), 'min_weight'),
    (dict(min_count=-1), 'min_count'), (dict(seed=-1), 'seed'), (dict(seed=1.5), 'seed'),
    (dict(n_components=2.5), 'n_components'), (dict(queue_length=0), 'queue_length'),
])
def test_arguments_are_checked_at_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        mixnorm.MixtureNormalization(4, **dict(dict(n_components=3), **kw))


def test_size_as_bn_accepts_it():
    assert mixnorm.MixtureNormalization((4,), n_components=2).size == 4
    mn = mixnorm.MixtureNormalization((4, 5), n_components=2)   # features of shape (4, 5)
    assert mn.size == 20 and mn.gamma.shape == mn.avg_mean.shape == (4, 5)
    with pytest.raises(ValueError, match='size'):
        mixnorm.MixtureNormalization('4', n_components=2)


def test_lazy_size_initialises_at_the_first_forward(tmp_path):
    mn = mixnorm.MixtureNormalization(None, n_components=3, seed=0)
    assert mn.gamma.array is None
    x = clustered(0, (8, 5, 3, 3))
    mn(x)
    assert mn.size == 5 and mn.gamma.shape == (5,) and mn.queue_means.shape == (10, 3, 5)
    path = str(tmp_path / 'mn.npz')
    chainer.serializers.save_npz(path, mn)
    lazy = mixnorm.MixtureNormalization(None, n_components=3, seed=0)
    chainer.serializers.load_npz(path, lazy)
    assert lazy.size == 5 and lazy.n_fits == 1
    with chainer.using_config('train', False):
        np.testing.assert_allclose(lazy(x).array, mn(x).array)


@pytest.mark.parametrize('kw,what', [(dict(size=5), 'queue_means'),
                                     (dict(n_components=2), 'queue_weights'),
                                     (dict(queue_length=4), 'queue_weights')])
def test_snapshot_of_other_settings_names_the_layer(tmp_path, kw, what):
    class Net(chainer.Chain):
        def __init__(self, **kw):
            super().__init__()
            with self.init_scope():
                self.mn = mixnorm.MixtureNormalization(**dict(dict(size=4, n_components=3),
                                                              **kw))
    src = Net()
    src.mn(clustered(0, (8, 4, 2, 2)))
    path = str(tmp_path / 'net.npz')
    chainer.serializers.save_npz(path, src)
    with pytest.raises(ValueError, match="MixtureNormalization 'mn'.*%s.*settings" % what):
        chainer.serializers.load_npz(path, Net(**kw))


# ------------------------------------------------------------------ Eq. 38 as printed
def eq38_as_printed(x, link):
    """Eq. 38-39 of the paper, transcribed directly: x (n, C) points."""
    T, zeta, eps = link.queue_length, link.decay, link.eps
    m = min(link.n_fits, T)
    slots = [(link.n_fits - m + t) % T for t in range(m)]
    out_num = np.zeros_like(x)
    den = np.zeros((x.shape[0], 1))
    terms = []
    for t, slot in enumerate(slots):
        tau = zeta ** (m - t - 1) * (1 - zeta) / (1 - zeta ** m)            # Eq. 39
        for k in range(link.n_components):
            lam = link.queue_weights[slot, k]
            if lam == 0:
                continue
            mu, var = link.queue_means[slot, k], link.queue_vars[slot, k] + eps
            p = np.exp(-0.5 * (((x - mu) ** 2) / var).sum(1)
                       - 0.5 * np.log(2 * np.pi * var).sum())
            w = (tau * lam * p)[:, None]
            terms.append((w, (x - mu) / np.sqrt(var)))
            den += w
    for w, z in terms:
        out_num += w / den * z
    return out_num * link.gamma.array + link.beta.array


@pytest.mark.parametrize('steps', [2, 5])
def test_inference_paper_is_eq38_as_printed(steps):
    C = 3
    mn = mixnorm.MixtureNormalization(C, n_components=3, queue_length=3, inference='paper', seed=2)
    mn.gamma.array[...] = [1.5, 0.5, 2.0]
    mn.beta.array[...] = [0.1, -0.2, 0.3]
    for s in range(steps):
        mn(clustered(s, (64, C), sep=3.0))
    x = clustered(99, (40, C), sep=3.0)
    with chainer.using_config('train', False):
        y = mn(x).array
    np.testing.assert_allclose(y, eq38_as_printed(x, mn), rtol=1e-5, atol=1e-6)
    consistent = mixnorm.MixtureNormalization(C, n_components=3, queue_length=3, seed=2)
    chainer.serializers.NpzDeserializer  # same state, other inference form
    for name in ('queue_weights', 'queue_means', 'queue_vars', 'n_fits'):
        setattr(consistent, name, getattr(mn, name))
    consistent.gamma.array[...] = mn.gamma.array
    consistent.beta.array[...] = mn.beta.array
    with chainer.using_config('train', False):
        assert np.abs(consistent(x).array - y).max() > 1e-3


# ------------------------------------------------------------------ never silently wrong
def test_float32_overflow_in_the_moments_says_overflow():
    x = (np.random.RandomState(0).randn(64, 3, 4, 4) * 1e18).astype(np.float32)
    mn = mixnorm.MixtureNormalization(3, n_components=1)
    with pytest.raises(ValueError, match='overflow') as e:
        mn(x)
    assert '0 NaN' not in str(e.value)


@pytest.mark.parametrize('K', [1, 3])
def test_nan_input_at_inference_raises(K):
    mn = mixnorm.MixtureNormalization(3, n_components=K, seed=0)
    mn(clustered(0, (32, 3)))
    x = clustered(1, (8, 3))
    x[2, 1] = np.nan
    with chainer.using_config('train', False), \
            pytest.raises(ValueError, match="MixtureNormalization.*inference.*NaN"):
        mn(x)


# ------------------------------------------------------------------ placement
class Net(chainer.Chain):
    def __init__(self, **bn_kwargs):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(3, 4, 3, pad=1)
            self.bn = L.BatchNormalization(**dict(dict(size=4), **bn_kwargs))

    def forward(self, x):
        return self.bn(self.conv(x))


def test_replace_keeps_use_gamma_and_use_beta():
    net = Net(use_gamma=False, use_beta=False)
    mixnorm.replace_batch_normalization(net, ['bn'], n_components=2)
    assert isinstance(net.bn, mixnorm.MixtureNormalization)
    assert net.bn.gamma is None and net.bn.beta is None
    assert list(net.bn.params()) == []


def test_replace_a_lazily_sized_bn():
    net = Net(size=None, axis=(0, 2, 3))
    mixnorm.replace_batch_normalization(net, 'bn', n_components=2, seed=0)
    assert net.bn.size is None
    y = net(np.random.RandomState(0).randn(4, 3, 5, 5).astype(np.float32))
    assert y.shape == (4, 4, 5, 5) and net.bn.size == 4


def test_replace_by_integer_index_in_a_sequential():
    seq = chainer.Sequential(L.Linear(3, 4), L.BatchNormalization(4), F.relu)
    mixnorm.replace_batch_normalization(seq, [1], n_components=2)
    assert isinstance(seq[1], mixnorm.MixtureNormalization)
    assert seq(np.random.RandomState(0).randn(40, 3).astype(np.float32)).shape == (40, 4)


def test_replace_a_layer_that_already_is_mn_says_so():
    net = Net()
    mixnorm.replace_batch_normalization(net, ['bn'])
    with pytest.raises(ValueError, match="'bn' already is a MixtureNormalization"):
        mixnorm.replace_batch_normalization(net, ['bn'])
    with pytest.raises(ValueError, match='layer name must be'):
        mixnorm.replace_batch_normalization(Net(), [1.5])


@pytest.mark.parametrize('N,K', [(5, 10), (50, 60)])
def test_fewer_points_than_components_is_not_a_dead_layer(N, K):
    """Every point its own component would give an output of std ~1e-5; MN falls back
    towards BN (K' = 1) instead, and the output has BN's unit variance."""
    x = np.random.RandomState(0).randn(N, 8).astype(np.float32) * 3 + 1
    mn = mixnorm.MixtureNormalization(8, n_components=K, seed=0)
    bn = L.BatchNormalization(8)
    y = mn(x).array
    assert mn.effective_components == 1
    np.testing.assert_allclose(y, bn(x).array, atol=1e-4)
    assert abs(y.std() - 1) < 0.05


def test_small_fc_batches_keep_every_component_above_min_count():
    x = np.random.RandomState(1).randn(32, 256).astype(np.float32)
    mn = mixnorm.MixtureNormalization(256, n_components=5, seed=0)
    mn(x)
    counts = np.asarray(mn.last_gmm.weights) * 32
    assert (counts >= mn.min_count).all(), counts


def test_a_layer_trained_on_huge_float32_values_raises_instead_of_nan():
    x = (np.random.RandomState(2).randn(64, 3, 4, 4) * 1e30).astype(np.float32)
    mn = mixnorm.MixtureNormalization(3, n_components=3, seed=0)
    with pytest.raises(ValueError, match='overflow'):
        mn(x)
