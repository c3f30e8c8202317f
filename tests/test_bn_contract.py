"""MixtureNormalization as a stand-in for ``L.BatchNormalization``, written from BN's
documented behaviour: BN's signature and positions, BN's state (``avg_mean``,
``avg_var``, ``N``, fine-tuning), every axis BN takes, the dtypes, lazy size, BN's
errors, snapshots and ``copyparams`` in both directions.  With K = 1 and
``inference='running'`` the link must be BN bit for bit in float64; with K > 1 its
running averages must still be BN's, since the mixture's pooled moments are the batch's
own."""
import mixnorm._compat  # noqa: F401

import inspect

import numpy as np
import pytest

import chainer
import chainer.functions as F
import chainer.links as L
from chainer.utils import type_check

import mixnorm
from mixnorm import MixtureNormalization as MN
from mixnorm import settings as S

BN_ORDER = ['size', 'decay', 'eps', 'dtype', 'use_gamma', 'use_beta', 'initial_gamma',
            'initial_beta', 'axis', 'initial_avg_mean', 'initial_avg_var']

#: (BN's size, BN's axis, input shape): every layout BN takes
LAYOUTS = [(3, None, (8, 3)), (3, None, (8, 3, 4, 4)), ((3, 4, 4), None, (8, 3, 4, 4)),
           (None, (0, 2, 3), (8, 3, 4, 4)), (None, 0, (8, 3, 4, 4)), (None, (0, 1), (5, 6, 3)),
           (None, 2, (4, 3, 5)), (None, (0, 2), (6, 3, 5, 2)), (5, (0,), (7, 5))]


def batches(shape, steps, seed=0, dtype=np.float64):
    rng = np.random.RandomState(seed)
    return [((rng.randn(*shape) * (1 + s) + s) .astype(dtype), rng.randn(*shape).astype(dtype))
            for s in range(steps)]


def step(link, x, gy, **kw):
    """One training forward and backward: (y, gx, ggamma, gbeta)."""
    link.cleargrads()
    xv = chainer.Variable(x)
    y = link(xv, **kw)
    y.grad = gy
    y.backward()
    grads = [getattr(getattr(link, n, None), 'grad', None) for n in ('gamma', 'beta')]
    return [y.array, xv.grad] + [None if g is None else g.copy() for g in grads]


def assert_same_state(mn, bn):
    np.testing.assert_array_equal(mn.avg_mean, bn.avg_mean)
    np.testing.assert_array_equal(mn.avg_var, bn.avg_var)
    assert mn.N == bn.N
    for name in ('gamma', 'beta'):
        if getattr(bn, name, None) is not None:
            np.testing.assert_array_equal(getattr(mn, name).array, getattr(bn, name).array)


# ------------------------------------------------------------------ the signature
def test_bn_arguments_stand_where_bn_has_them_and_mn_settings_are_keywords():
    mn = list(inspect.signature(MN.__init__).parameters.values())[1:]
    bn = list(inspect.signature(L.BatchNormalization.__init__).parameters)[1:]
    assert bn == BN_ORDER == [p.name for p in mn[:len(BN_ORDER)]]
    defaults = inspect.signature(L.BatchNormalization.__init__).parameters
    assert all(p.default == defaults[p.name].default for p in mn[:len(BN_ORDER)])
    rest = mn[len(BN_ORDER):]
    assert {p.name for p in rest} == set(S.SETTINGS) - {'decay', 'eps'}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in rest)


def test_the_synchronized_link_takes_chainermns_arguments_in_their_positions():
    chainermn = pytest.importorskip('chainermn')
    from mixnorm.distributed import MultiNodeMixtureNormalization
    ours = list(inspect.signature(MultiNodeMixtureNormalization.__init__).parameters.values())
    theirs = list(inspect.signature(
        chainermn.links.MultiNodeBatchNormalization.__init__).parameters)
    assert [p.name for p in ours[:len(theirs)]] == theirs
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs):]
               if p.kind is not inspect.Parameter.VAR_KEYWORD)


def test_bn_positional_arguments_mean_what_they_mean_in_bn():
    mn = MN(3, 0.8, 1e-3, np.float64, False, True, None, 0.5, None, 1.0, 2.0)
    assert (mn.decay, mn.eps, mn.gamma, mn.avg_mean.dtype) == (0.8, 1e-3, None, np.float64)
    np.testing.assert_array_equal(mn.beta.array, 0.5)
    np.testing.assert_array_equal(mn.avg_mean, 1.0)
    np.testing.assert_array_equal(mn.avg_var, 2.0)


def test_code_written_for_the_old_signature_is_told_what_changed():
    with pytest.raises(S.InvalidParameter, match=r"decay.*Got 3.*pass n_components=3"):
        MN(4, 3)


# ------------------------------------------------------------------ K = 1 is BN
@pytest.mark.parametrize('size,axis,shape', LAYOUTS)
def test_one_component_with_running_inference_is_bn_bit_for_bit(size, axis, shape):
    kw = dict(dtype=np.float64, axis=axis)
    bn = L.BatchNormalization(size, 0.8, 1e-4, **kw)
    mn = MN(size, 0.8, 1e-4, n_components=1, inference='running', **kw)
    for i, (x, gy) in enumerate(batches(shape, 4)):
        finetune = i >= 2
        for a, b in zip(step(mn, x, gy, finetune=finetune), step(bn, x, gy, finetune=finetune)):
            np.testing.assert_array_equal(a, b)
        assert_same_state(mn, bn)
    x = batches(shape, 1, seed=9)[0][0]
    with chainer.using_config('train', False):
        np.testing.assert_array_equal(mn(x).array, bn(x).array)


@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64, 'mixed16'])
@pytest.mark.parametrize('kw', [{}, dict(use_gamma=False), dict(use_beta=False),
                                dict(initial_gamma=2.0, initial_beta=-1.0)])
def test_one_component_is_bn_in_every_dtype_and_affine(dtype, kw):
    mixed = dtype == 'mixed16'
    with chainer.using_config('dtype', chainer.mixed16 if mixed else np.dtype(dtype)):
        xdtype = np.float16 if mixed else dtype
        bn = L.BatchNormalization(4, **kw)
        mn = MN(4, n_components=1, inference='running', **kw)
        assert mn.avg_mean.dtype == bn.avg_mean.dtype == (np.float32 if mixed else dtype)
        for x, gy in batches((6, 4, 3, 3), 3, dtype=xdtype):
            for a, b in zip(step(mn, x, gy), step(bn, x, gy)):
                np.testing.assert_array_equal(a, b)
        assert_same_state(mn, bn)


def test_queue_inference_with_one_component_is_not_bn():
    """With the default inference K = 1 trains as BN but infers with the queue."""
    bn, mn = L.BatchNormalization(3, dtype=np.float64), MN(3, dtype=np.float64,
                                                             n_components=1, seed=0)
    for x, gy in batches((16, 3), 5):
        step(bn, x, gy)
        step(mn, x, gy)
    np.testing.assert_allclose(mn.avg_mean, bn.avg_mean, rtol=1e-12)
    np.testing.assert_allclose(mn.avg_var, bn.avg_var, rtol=1e-12)
    x = batches((16, 3), 1, seed=5)[0][0]
    with chainer.using_config('train', False):
        assert np.abs(mn(x).array - bn(x).array).max() > 0.1


# ------------------------------------------------------------------ BN's state with K > 1
@pytest.mark.parametrize('size,axis,shape', LAYOUTS[:6])
def test_running_averages_with_a_mixture_are_bns(size, axis, shape):
    """The pooled moments of the fitted mixture are the batch's own mean and variance,
    so the running averages (and fine-tuning's population statistics) are BN's."""
    bn = L.BatchNormalization(size, dtype=np.float64, axis=axis)
    mn = MN(size, dtype=np.float64, axis=axis, n_components=3, seed=1)
    for i, (x, gy) in enumerate(batches(shape, 5)):
        if i == 3:
            bn.start_finetuning()
            mn.start_finetuning()
        finetune = i >= 3
        step(bn, x, gy, finetune=finetune)
        y, gx, _, _ = step(mn, x, gy, finetune=finetune)
        assert y.shape == gx.shape == shape
    assert mn.N == bn.N == 2
    np.testing.assert_allclose(mn.avg_mean, bn.avg_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mn.avg_var, bn.avg_var, rtol=1e-9)


def test_running_inference_uses_the_running_averages():
    mn = MN(4, dtype=np.float64, n_components=3, inference='running', seed=0)
    for x, gy in batches((32, 4, 2, 2), 3):
        step(mn, x, gy)
    x = batches((8, 4, 2, 2), 1, seed=4)[0][0]
    with chainer.using_config('train', False):
        y = mn(x).array
    want = F.fixed_batch_normalization(x, mn.gamma.array, mn.beta.array, mn.avg_mean,
                                       mn.avg_var, mn.eps).array
    np.testing.assert_array_equal(y, want)


def test_recomputation_changes_no_running_average():
    mn = MN(3, dtype=np.float64, n_components=2, seed=0)
    x = batches((16, 3, 2, 2), 1)[0][0]
    y = F.forget(lambda v: mn(v, finetune=True), chainer.Variable(x))
    state = (mn.avg_mean.copy(), mn.avg_var.copy(), mn.N)
    F.sum(y * y).backward()
    np.testing.assert_array_equal(mn.avg_mean, state[0])
    np.testing.assert_array_equal(mn.avg_var, state[1])
    assert mn.N == state[2] == 1


# ------------------------------------------------------------------ lazy size, initial values
@pytest.mark.parametrize('axis,shape,param', [((0, 2, 3), (4, 3, 5, 5), (3,)),
                                              (0, (4, 3, 5, 5), (3, 5, 5)),
                                              ((0, 1), (4, 6, 2), (2,))])
def test_lazy_size_takes_the_feature_shape_of_the_first_input(axis, shape, param):
    mn = MN(axis=axis, n_components=2, seed=0)
    assert mn.avg_mean is None and mn.gamma.array is None
    mn(batches(shape, 1, dtype=np.float32)[0][0])
    assert mn.avg_mean.shape == mn.avg_var.shape == mn.gamma.shape == param


def test_initial_running_averages_give_bns_inference_before_training():
    mean, var = np.array([1., -2., .5]), np.array([4., .25, 1.])
    bn = L.BatchNormalization(3, dtype=np.float64, initial_avg_mean=mean, initial_avg_var=var)
    x = batches((10, 3, 2, 2), 1)[0][0]
    with chainer.using_config('train', False):
        want = bn(x).array
        for inference in ('consistent', 'paper', 'running'):
            mn = MN(3, dtype=np.float64, initial_avg_mean=mean, initial_avg_var=var,
                    inference=inference, n_components=3)
            np.testing.assert_array_equal(mn.avg_mean, mean)
            np.testing.assert_allclose(mn(x).array, want, rtol=1e-12, atol=1e-12)
    lazy = MN(axis=(0, 2, 3), initial_avg_mean=chainer.initializers.Constant(3.0))
    lazy(np.ones((2, 5, 1, 1), np.float32) + np.arange(2)[:, None, None, None])
    assert lazy.avg_mean.shape == (5,)


# ------------------------------------------------------------------ errors as BN's
@pytest.mark.parametrize('x', [np.ones((4, 5, 2), np.float32),          # channels
                               np.ones((4,), np.float32),               # no channel axis
                               np.ones((4, 3), np.int32)])              # dtype
def test_a_wrong_input_is_chainers_invalid_type(x):
    with pytest.raises(type_check.InvalidType):
        MN(3, n_components=2)(x)
    with pytest.raises(type_check.InvalidType):
        L.BatchNormalization(3)(x)


def test_forward_keywords_are_bns():
    x = np.ones((4, 3), np.float32)
    for link in (MN(3), L.BatchNormalization(3)):
        with pytest.raises(ValueError, match='test argument'):
            link(x, test=True)
        with pytest.raises(TypeError):
            link(x, finetunes=True)


@pytest.mark.parametrize('size', [{}, 'a', 0, (2, -1), 2.5])
def test_a_bad_size_is_a_type_error_as_in_bn(size):
    with pytest.raises(TypeError, match='size'):
        MN(size)


def test_axis_of_another_input_rank_is_an_invalid_type():
    mn = MN(axis=(0, 2, 3), n_components=2)
    with pytest.raises(type_check.InvalidType, match='axis'):
        mn(np.ones((4, 3), np.float32))


# ------------------------------------------------------------------ state across BN and MN
def trained_bn(shape=(16, 3, 2, 2), steps=3):
    bn = L.BatchNormalization(shape[1], dtype=np.float64)
    bn.gamma.array[...] = [1.5, .5, 2.]
    bn.beta.array[...] = [.1, -.2, .3]
    for x, gy in batches(shape, steps):
        step(bn, x, gy, finetune=True)
    return bn


class Net(chainer.Chain):
    def __init__(self, norm):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(3, 3, 1)
            self.bn = norm


@pytest.mark.parametrize('save,load', [(chainer.serializers.save_npz,
                                        chainer.serializers.load_npz),
                                       ('hdf5', 'hdf5')])
@pytest.mark.parametrize('K', [1, 3])
def test_a_bn_snapshot_loads_into_mn_with_bns_inference(tmp_path, save, load, K):
    if save == 'hdf5':
        pytest.importorskip('h5py')
        save, load = chainer.serializers.save_hdf5, chainer.serializers.load_hdf5
    bn = trained_bn()
    path = str(tmp_path / 'bn.snapshot')
    save(path, Net(bn))
    net = Net(MN(3, dtype=np.float64, n_components=K, seed=0))
    load(path, net)
    assert_same_state(net.bn, bn)
    assert net.bn.n_fits == 1
    x = batches((5, 3, 2, 2), 1, seed=3)[0][0]
    with chainer.using_config('train', False):
        np.testing.assert_allclose(net.bn(x).array, bn(x).array, rtol=1e-12, atol=1e-12)
    lazy = Net(MN(None, dtype=np.float64, n_components=K))
    load(path, lazy)
    assert lazy.bn.size == 3 and lazy.bn.n_fits == 1
    # and back: an MN snapshot loads into BN
    net.bn(x)
    save(path, net)
    back = Net(L.BatchNormalization(3, dtype=np.float64))
    load(path, back)
    assert_same_state(net.bn, back.bn)


def test_an_mn_snapshot_without_running_averages_takes_them_from_its_queue(tmp_path):
    mn = MN(3, dtype=np.float64, n_components=1, queue_length=1, seed=0)
    x = batches((16, 3), 1)[0][0]
    mn(x)
    path, old = str(tmp_path / 'mn.npz'), str(tmp_path / 'old.npz')
    chainer.serializers.save_npz(path, mn)
    with np.load(path) as f:
        np.savez(old, **{k: v for k, v in f.items() if k not in ('avg_mean', 'avg_var', 'N')})
    loaded = MN(3, dtype=np.float64, n_components=1, queue_length=1, seed=0)
    chainer.serializers.load_npz(old, loaded)
    np.testing.assert_allclose(loaded.avg_mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(loaded.avg_var, x.var(0), rtol=1e-12)


def test_copyparams_crosses_both_ways():
    bn = trained_bn()
    mn = MN(3, dtype=np.float64, n_components=3, seed=0)
    mn.copyparams(bn)
    assert_same_state(mn, bn)
    x = batches((5, 3, 2, 2), 1, seed=3)[0][0]
    with chainer.using_config('train', False):
        np.testing.assert_allclose(mn(x).array, bn(x).array, rtol=1e-12, atol=1e-12)
    for xb, gy in batches((16, 3, 2, 2), 2, seed=8):
        step(mn, xb, gy)
    other = L.BatchNormalization(3, dtype=np.float64)
    other.copyparams(mn)
    assert_same_state(mn, other)
    lazy = MN(None, dtype=np.float64)
    lazy.copyparams(bn)
    assert_same_state(lazy, bn)


def test_replace_batch_normalization_carries_the_statistics():
    bn = trained_bn()
    net = Net(bn)
    x = batches((5, 3, 2, 2), 1, seed=3)[0][0]
    with chainer.using_config('train', False):
        want = net.bn(x).array
    mixnorm.replace_batch_normalization(net, ['bn'], n_components=3)
    assert isinstance(net.bn, MN)
    assert_same_state(net.bn, bn)
    with chainer.using_config('train', False):
        np.testing.assert_allclose(net.bn(x).array, want, rtol=1e-12, atol=1e-12)


def test_a_kept_running_average_survives_a_snapshot(tmp_path):
    mn = MN(3, n_components=2, seed=0)
    for x, gy in batches((16, 3), 3, dtype=np.float32):
        step(mn, x, gy, finetune=True)
    path = str(tmp_path / 'mn.npz')
    chainer.serializers.save_npz(path, mn)
    again = MN(3, n_components=2)
    chainer.serializers.load_npz(path, again)
    assert again.N == 3
    np.testing.assert_array_equal(again.avg_var, mn.avg_var)
