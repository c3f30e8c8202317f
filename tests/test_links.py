"""The MixtureNormalization link: BN equivalence, inference queue, serialization,
robustness, placement by name."""
import numpy as np
import pytest

import mixnorm
import chainer
import chainer.functions as F
import chainer.links as L
from chainer import gradient_check

from mixnorm import MixtureNormalization, replace_batch_normalization


def clustered(rng, shape, K=3, sep=6.0):
    """Activations whose points (channels-last rows) come from K separated clusters."""
    N, C = shape[0], shape[1]
    spatial = shape[2:]
    n = N * int(np.prod(spatial, dtype=int))
    centres = rng.normal(0, sep, size=(K, C))
    labels = rng.choice(K, size=n, p=np.linspace(1, 2, K) / np.linspace(1, 2, K).sum())
    pts = centres[labels] + rng.standard_normal((n, C))
    return np.moveaxis(pts.reshape((N,) + spatial + (C,)), -1, 1).copy()


# ------------------------------------------------------------------ K = 1 is BN

@pytest.mark.parametrize('shape', [(32, 5), (6, 4, 3, 5)])
def test_k1_equals_batch_normalization_forward_and_backward(shape):
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=shape)
    gy = rng.standard_normal(shape)
    mn = MixtureNormalization(shape[1], n_components=1, eps=2e-5, dtype=np.float64, seed=0)
    bn = L.BatchNormalization(shape[1], eps=2e-5, dtype=np.float64)
    g0, b0 = rng.uniform(0.5, 2, shape[1]), rng.standard_normal(shape[1])
    for link in (mn, bn):
        link.gamma.array[...] = g0
        link.beta.array[...] = b0
    outs = []
    for link in (mn, bn):
        xv = chainer.Variable(x.copy())
        y = link(xv)
        y.grad = gy
        link.cleargrads()
        y.backward()
        outs.append((y.array, xv.grad, link.gamma.grad, link.beta.grad))
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


def test_k1_gradient_check_through_the_link():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 2, 2))
    mn = MixtureNormalization(3, n_components=1, dtype=np.float64, seed=0)
    gradient_check.check_backward(mn, x, rng.standard_normal(x.shape),
                                  params=(mn.gamma, mn.beta), dtype=np.float64,
                                  atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------- training mode

def test_training_fits_and_records_state():
    rng = np.random.default_rng(2)
    x = clustered(rng, (16, 6, 4, 4)).astype(np.float32)
    mn = MixtureNormalization(6, n_components=3, em_iters=2, seed=0)
    y = mn(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert mn.effective_components == 3 and mn.n_fits == 1
    w = mn.last_gmm.weights
    assert np.all(np.diff(w) <= 0)                      # sorted, heaviest first
    assert mn.last_gmm.means.shape == (3, 6)
    # Eq. 34-36 normalizes each channel overall: mean ~0 (sum_k nu_k/sqrt(lam_k) x^k)
    assert np.isfinite(y.array).all()


def test_em_iters_is_split_evenly():
    mn = MixtureNormalization(4, em_iters=4)
    assert (mn.kmeans_iters, mn.gmm_em_iters) == (2, 2)


def test_component_affine_with_fewer_effective_components():
    rng = np.random.default_rng(3)
    x = np.repeat(rng.standard_normal((2, 3)), 20, axis=0)  # 2 distinct points, K = 4
    mn = MixtureNormalization(3, n_components=4, affine='component', seed=0)
    y = mn(chainer.Variable(x.astype(np.float32)))
    assert mn.effective_components <= 2
    mn.cleargrads()
    F.sum(y * y).backward()
    assert mn.gamma.grad.shape == (4, 3)
    assert np.all(mn.gamma.grad[mn.effective_components:] == 0)
    with chainer.using_config('train', False):
        assert np.isfinite(mn(x.astype(np.float32)).array).all()


# ------------------------------------------------------------------ inference mode

def test_inference_before_training_raises():
    mn = MixtureNormalization(4)
    with chainer.using_config('train', False):
        with pytest.raises(RuntimeError, match='no statistics yet'):
            mn(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize('affine', ['channel', 'component', None])
def test_inference_matches_training_with_T1(affine):
    rng = np.random.default_rng(4)
    x = clustered(rng, (8, 5, 6, 6), K=3, sep=8.0)
    mn = MixtureNormalization(5, n_components=3, em_iters=20, queue_length=1,
                              affine=affine, dtype=np.float64, seed=0)
    if affine is not None:
        mn.gamma.array[...] = rng.uniform(0.5, 1.5, mn.gamma.shape)
        mn.beta.array[...] = rng.standard_normal(mn.beta.shape)
    y_train = mn(x).array
    assert mn.effective_components == 3
    with chainer.using_config('train', False):
        y_test = mn(x).array
    np.testing.assert_allclose(y_test, y_train, atol=1e-3)


def test_lambda_scaling_applies_at_inference_too():
    rng = np.random.default_rng(5)
    x = clustered(rng, (8, 4, 4, 4), sep=8.0)
    outs = {}
    for ls in (True, False):
        mn = MixtureNormalization(4, em_iters=20, queue_length=1, lambda_scaling=ls,
                                  dtype=np.float64, seed=0)
        y_train = mn(x).array
        with chainer.using_config('train', False):
            y_test = mn(x).array
        np.testing.assert_allclose(y_test, y_train, atol=1e-3)
        outs[ls] = y_train
    assert not np.allclose(outs[True], outs[False])


def test_queue_weights_follow_eq39():
    rng = np.random.default_rng(6)
    mn = MixtureNormalization(3, n_components=2, queue_length=4, decay=0.9, seed=0)
    batches = [clustered(rng, (16, 3, 2, 2), K=2).astype(np.float32) for _ in range(6)]
    mn(batches[0])
    g, lam = mn.queue_mixture()
    assert g.weights.shape == (2,)
    np.testing.assert_allclose(g.weights, lam)               # one entry: tau = 1
    for b in batches[1:]:
        mn(b)
    assert mn.n_fits == 6
    g, lam = mn.queue_mixture()                              # the last 4 batches
    tau = 0.9 ** np.arange(3, -1, -1) * 0.1 / (1 - 0.9 ** 4)
    np.testing.assert_allclose(g.weights.reshape(4, 2).sum(1), tau, rtol=1e-6)
    assert g.weights.sum() == pytest.approx(1.0)
    # the newest entry (last row) holds the statistics of the last batch
    pts = np.moveaxis(batches[-1], 1, -1).reshape(-1, 3)
    lam_last, mu_last, _ = mixnorm.functions.mixture_moments(
        pts, mixnorm.responsibilities(pts, mn.last_gmm))
    np.testing.assert_allclose(g.means[-2:], mu_last, rtol=1e-5, atol=1e-5)


def test_serialization_round_trip_with_partial_queue(tmp_path):
    rng = np.random.default_rng(7)

    def model():
        m = chainer.Sequential(L.Linear(6, 5), MixtureNormalization(5, seed=3), F.relu)
        return m

    a = model()
    for _ in range(3):
        a(rng.standard_normal((40, 6)).astype(np.float32))
    path = str(tmp_path / 'model.npz')
    chainer.serializers.save_npz(path, a)
    b = model()
    chainer.serializers.load_npz(path, b)
    assert b[1].n_fits == 3 and b[1].seed == 3
    x = rng.standard_normal((10, 6)).astype(np.float32)
    with chainer.using_config('train', False):
        np.testing.assert_array_equal(a(x).array, b(x).array)
    # training continues identically after the reload (same seeds, same queue)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    np.testing.assert_array_equal(a(x).array, b(x).array)


# --------------------------------------------------------------------- robustness

def test_fully_connected_input():
    mn = MixtureNormalization(7, seed=0)
    y = mn(np.random.default_rng(8).standard_normal((50, 7)).astype(np.float32))
    assert y.shape == (50, 7)


def test_batch_of_one_uses_spatial_points():
    mn = MixtureNormalization(4, seed=0)
    y = mn(clustered(np.random.default_rng(9), (1, 4, 8, 8)).astype(np.float32))
    assert y.shape == (1, 4, 8, 8) and mn.effective_components >= 2


@pytest.mark.parametrize('shape', [(60, 70, 6, 6), (3, 5, 2, 3, 4)])
def test_training_fits_the_points_of_the_input(shape):
    """The link's mixture is the fit of x's points (channels last, flattened), for inputs
    that span several blocks of the points' copy; the copy's scratch memory is reused
    without mixing batches."""
    rng = np.random.default_rng(11)
    C = shape[1]
    mn = MixtureNormalization(C, n_components=3, seed=4)
    for t in range(2):
        x = clustered(rng, shape).astype(np.float32) + t
        mn(x)
        points = np.moveaxis(x, 1, -1).reshape(-1, C)
        ref = mixnorm.fit_gmm(points, 3, mn.kmeans_iters, mn.gmm_em_iters,
                              min_weight=mn.min_weight, min_count=mn.min_count, eps=mn.eps,
                              seed=mn._fit_seed(t))
        got = mn.last_gmm
        np.testing.assert_array_equal(got.weights, ref.weights)
        np.testing.assert_array_equal(got.means, ref.means)
        np.testing.assert_array_equal(mn._points(x), points)


def test_fewer_points_than_components():
    mn = MixtureNormalization(3, n_components=5, seed=0)
    y = mn(np.random.default_rng(10).standard_normal((2, 3)).astype(np.float32))
    assert mn.effective_components <= 2
    assert np.isfinite(y.array).all()


def test_constant_input_is_finite():
    mn = MixtureNormalization(3, seed=0)
    y = mn(np.full((4, 3, 2, 2), 7.0, np.float32))
    assert np.isfinite(y.array).all()
    np.testing.assert_allclose(y.array, 0.0, atol=1e-5)
    with chainer.using_config('train', False):
        assert np.isfinite(mn(np.full((4, 3, 2, 2), 7.0, np.float32)).array).all()


@pytest.mark.parametrize('K', [1, 3])
def test_nan_input_names_the_layer(K):
    model = chainer.Sequential(MixtureNormalization(3, n_components=K, seed=0))
    x = np.ones((4, 3, 2, 2), np.float32)
    x[1, 2, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"MixtureNormalization '0'.*NaN"):
        model(x)


def test_wrong_channel_count_raises():
    with pytest.raises(ValueError, match=r'\(N, 4\)'):
        MixtureNormalization(4)(np.ones((2, 5, 3, 3), np.float32))


def test_float16_in_float16_out():
    mn = MixtureNormalization(4, seed=0)
    x = clustered(np.random.default_rng(11), (8, 4, 3, 3)).astype(np.float16)
    y = mn(x)
    assert y.dtype == np.float16 and np.isfinite(y.array.astype(np.float32)).all()
    with chainer.using_config('train', False):
        z = mn(x)
    assert z.dtype == np.float16


@pytest.mark.parametrize('kwargs,match', [
    (dict(affine='spatial'), 'affine'), (dict(decay=1.0), 'decay'),
    (dict(queue_length=0), 'queue_length'), (dict(n_components=0), 'n_components'),
    (dict(em_iters=-2), 'EM iter'),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixtureNormalization(4, **kwargs)


# ---------------------------------------------------------------------- placement

class TinyNet(chainer.Chain):
    def __init__(self):
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, 4, 3, pad=1)
            self.bn1 = L.BatchNormalization(4)
            self.conv2 = L.Convolution2D(4, 6, 3, pad=1)
            self.bn2 = L.BatchNormalization(6)
            self.fc = L.Linear(6, 2)

    def normalization_sites(self):
        return {'conv1': ['bn1'], 'conv2': ['bn2'], 'all': ['bn1', 'bn2']}

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.fc(F.average(h, axis=(2, 3)))


def test_replace_by_alias_and_train_one_step():
    net = TinyNet()
    net.bn2.gamma.array[...] = 2.0
    replaced = replace_batch_normalization(net, ['conv2'], n_components=2, em_iters=2)
    assert replaced == ['bn2']
    assert isinstance(net.bn2, MixtureNormalization) and net.bn2.n_components == 2
    assert isinstance(net.bn1, L.BatchNormalization)
    np.testing.assert_array_equal(net.bn2.gamma.array, 2.0)     # BN's affine carried over
    assert '/bn2/gamma' in dict(net.namedparams())
    opt = chainer.optimizers.SGD(0.1)
    opt.setup(net)
    x = np.random.default_rng(12).standard_normal((4, 3, 6, 6)).astype(np.float32)
    loss = F.softmax_cross_entropy(net(x), np.array([0, 1, 0, 1], np.int32))
    net.cleargrads()
    loss.backward()
    opt.update()
    assert net.bn2.n_fits == 1 and net.bn2.gamma.grad is not None


def test_replace_by_path_in_sequential():
    seq = chainer.Sequential(L.Linear(3, 4), L.BatchNormalization(4), F.relu)
    replace_batch_normalization(seq, ['1'])
    assert isinstance(seq[1], MixtureNormalization)
    y = seq(np.random.default_rng(13).standard_normal((20, 3)).astype(np.float32))
    assert seq[1].n_fits == 1 and y.shape == (20, 4)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"conv9.*aliases all, conv1, conv2; BN links bn1, bn2"):
        replace_batch_normalization(TinyNet(), ['conv9'])


# ---------------------------------------------------------------------------- GPU

@pytest.mark.gpu
def test_gpu_training_and_inference_step():
    import cupy
    rng = np.random.default_rng(14)
    x = clustered(rng, (8, 6, 4, 4)).astype(np.float32)
    mn = MixtureNormalization(6, seed=0)
    mn.to_device('@cupy:0')
    xv = chainer.Variable(cupy.asarray(x))
    y = mn(xv)
    F.sum(y * y).backward()
    assert isinstance(y.array, cupy.ndarray) and cupy.isfinite(y.array).all()
    assert isinstance(mn.queue_means, cupy.ndarray)
    with chainer.using_config('train', False):
        z = mn(cupy.asarray(x))
    assert cupy.isfinite(z.array).all()
