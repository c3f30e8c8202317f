"""experiments/optimizers.py: RMSpropMomentum, optimizers and lr schedules built from
config sections (which experiments/config.py's schema checks and completes)."""
import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)

import os

import numpy
import pytest

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import training
from chainer.training import extensions

from experiments import config as config_lib
from experiments import optimizers as opt_mod
from experiments.optimizers import (
    LearningRateSchedule, MultiStepSchedule, RMSpropMomentum,
    StaircaseSchedule)


def make_optimizer(config):
    """The builder on a section completed by the schema, as train.py calls it."""
    return opt_mod.make_optimizer(config_lib.validate_section('optimizer', config))


def setup_optimizer(config, link):
    return opt_mod.setup_optimizer(config_lib.validate_section('optimizer', config), link)


def make_schedule(config, base_lr, total_epochs=None):
    return opt_mod.make_schedule(config_lib.validate_section('schedule', config), base_lr,
                                 total_epochs)


class _Holder(chainer.Link):
    """A link with one parameter ``w`` initialised to ``value``."""

    def __init__(self, value, dtype=numpy.float64):
        super(_Holder, self).__init__()
        with self.init_scope():
            self.w = chainer.Parameter(numpy.array(value, dtype=dtype))


def _step(opt, link, grad):
    link.w.grad = numpy.asarray(grad, dtype=link.w.dtype)
    opt.update()


# ---------------------------------------------------------------------------
# RMSpropMomentum: the update itself
# ---------------------------------------------------------------------------

def test_rmsprop_literal_values_ms_init_zero():
    # lr=0.1, rho=0.75, momentum=0.5, eps=0, ms=0 initially; p0 = 1.
    # step 1: g=2:  ms = 0.25*4 = 1;           mom = 0.1*2/1 = 0.2;     p = 0.8
    # step 2: g=-1: ms = 0.75*1 + 0.25*1 = 1;   mom = 0.5*0.2 - 0.1 = 0; p = 0.8
    # step 3: g=1:  ms = 1;                    mom = 0 + 0.1 = 0.1;     p = 0.7
    link = _Holder([1.0])
    opt = RMSpropMomentum(lr=0.1, rho=0.75, momentum=0.5, eps=0.0, ms_init=0.0)
    opt.setup(link)
    expected = [(0.8, 1.0, 0.2), (0.8, 1.0, 0.0), (0.7, 1.0, 0.1)]
    for g, (p, ms, mom) in zip([2.0, -1.0, 1.0], expected):
        _step(opt, link, [g])
        state = link.w.update_rule.state
        numpy.testing.assert_allclose(link.w.array, [p], rtol=0, atol=1e-15)
        numpy.testing.assert_allclose(state['ms'], [ms], rtol=0, atol=1e-15)
        numpy.testing.assert_allclose(state['mom'], [mom], rtol=0, atol=1e-15)


def test_rmsprop_eps_is_inside_sqrt():
    # ms_init=0, rho=0.75, g=2 -> ms = 1; eps = 3:
    #   inside:  mom = 0.1*2/sqrt(1+3) = 0.1  -> p = 0.9
    #   outside (Chainer's RMSprop default) would give 0.2/(1+3) = 0.05.
    link = _Holder([1.0])
    opt = RMSpropMomentum(lr=0.1, rho=0.75, momentum=0.9, eps=3.0, ms_init=0.0)
    opt.setup(link)
    _step(opt, link, [2.0])
    numpy.testing.assert_allclose(link.w.array, [0.9], rtol=0, atol=1e-15)


def test_rmsprop_default_ms_init_is_one_like_tf1():
    # ms starts at 1: g=2, rho=0.75 -> ms = 0.75 + 0.25*4 = 1.75,
    # mom = 0.1*2/sqrt(1.75) (eps=0), p = 1 - mom.
    link = _Holder([1.0])
    opt = RMSpropMomentum(lr=0.1, rho=0.75, momentum=0.9, eps=0.0)
    assert opt.ms_init == 1.0
    opt.setup(link)
    _step(opt, link, [2.0])
    numpy.testing.assert_allclose(
        link.w.array, [1.0 - 0.2 / numpy.sqrt(1.75)], rtol=1e-15)


def test_rmsprop_matches_hand_arithmetic_three_steps():
    lr, rho, mu, eps = 0.05, 0.9, 0.9, 1e-8
    p0 = numpy.array([[1.0, -2.0, 0.5], [0.0, 3.0, -0.25]])
    grads = [numpy.array([[0.5, -1.0, 2.0], [0.0, 0.3, -4.0]]),
             numpy.array([[0.2, 0.3, -1.0], [1e-3, -0.3, 2.5]]),
             numpy.array([[-0.4, 0.1, 0.0], [2.0, 0.0, 1.0]])]
    link = _Holder(p0.copy())
    opt = RMSpropMomentum(lr=lr, rho=rho, momentum=mu, eps=eps)
    opt.setup(link)

    # written out by hand (TF1: ms starts at ones, mom at zeros)
    p, ms, mom = p0.copy(), numpy.ones_like(p0), numpy.zeros_like(p0)
    for g in grads:
        ms = rho * ms + (1.0 - rho) * g ** 2
        mom = mu * mom + lr * g / numpy.sqrt(ms + eps)
        p = p - mom
        _step(opt, link, g)
        numpy.testing.assert_allclose(link.w.array, p, rtol=1e-13, atol=1e-15)
        numpy.testing.assert_allclose(
            link.w.update_rule.state['ms'], ms, rtol=1e-13)
        numpy.testing.assert_allclose(
            link.w.update_rule.state['mom'], mom, rtol=1e-13, atol=1e-15)
    assert opt.t == 3 and link.w.update_rule.t == 3


def test_rmsprop_lr_change_only_scales_new_momentum_contributions():
    # TF semantics: lr sits inside the buffer.  ms_init=0, rho=0.75, eps=0:
    # step 1 (lr=0.1, g=2): ms=1, mom=0.2, p=0.8
    # step 2 (lr=1.0, g=-1): ms=1, mom = 0.5*0.2 + 1.0*(-1)/1 = -0.9, p = 1.7
    link = _Holder([1.0])
    opt = RMSpropMomentum(lr=0.1, rho=0.75, momentum=0.5, eps=0.0, ms_init=0.0)
    opt.setup(link)
    _step(opt, link, [2.0])
    opt.lr = 1.0
    _step(opt, link, [-1.0])
    numpy.testing.assert_allclose(link.w.array, [1.7], rtol=0, atol=1e-15)


@pytest.mark.parametrize('dtype,state_dtype', [
    (numpy.float16, numpy.float32),
    (numpy.float32, numpy.float32),
    (numpy.float64, numpy.float64),
])
def test_rmsprop_state_shapes_and_dtypes(dtype, state_dtype):
    link = L.Linear(3, 2, initialW=0.1, initial_bias=0.0)
    for p in link.params():
        p.array = p.array.astype(dtype)
    opt = RMSpropMomentum(lr=0.01, ms_init=0.5)
    opt.setup(link)
    x = numpy.ones((4, 3), dtype=dtype)
    opt.update(lambda: F.sum(link(x) ** 2))
    for p in link.params():
        state = p.update_rule.state
        assert sorted(state) == ['mom', 'ms']
        for key in ('ms', 'mom'):
            assert state[key].shape == p.shape
            assert state[key].dtype == state_dtype
        assert p.dtype == dtype
    # ms = rho*ms_init + (1-rho)*g^2 >= 0.9*0.5 with nonzero mom
    assert (link.W.update_rule.state['ms'] >= 0.45 - 1e-6).all()
    assert (link.W.update_rule.state['mom'] != 0).all()


def _least_squares(dtype, steps, use_fp32_update=False, lr=0.01):
    rng = numpy.random.RandomState(0)
    a = rng.normal(size=(32, 5)).astype(dtype)
    x_true = rng.normal(size=(5,)).astype(dtype)
    b = a.dot(x_true)
    link = _Holder(numpy.zeros(5), dtype=dtype)
    opt = RMSpropMomentum(lr=lr)
    opt.setup(link)
    if use_fp32_update:
        opt.use_fp32_update()

    def loss():
        r = F.matmul(a, F.reshape(link.w, (5, 1)))[:, 0] - b
        return F.mean(r * r)

    first = float(loss().array)
    for _ in range(steps):
        opt.update(loss)
    return first, float(loss().array), link, x_true


def test_rmsprop_solves_least_squares():
    first, last, link, x_true = _least_squares(numpy.float32, 400)
    assert last < 1e-4 * first
    numpy.testing.assert_allclose(link.w.array, x_true, atol=1e-2)


@pytest.mark.parametrize('fp32_update', [False, True])
def test_rmsprop_float16_params(fp32_update):
    first, last, link, x_true = _least_squares(
        numpy.float16, 150, use_fp32_update=fp32_update, lr=0.02)
    assert link.w.dtype == numpy.float16
    assert numpy.isfinite(link.w.array).all()
    assert last < 0.02 * first
    numpy.testing.assert_allclose(
        link.w.array.astype(numpy.float64), x_true, atol=0.1)


def test_rmsprop_float16_matches_float32_state_arithmetic():
    # float16 param: the update is computed in float32 and rounded once.
    rng = numpy.random.RandomState(0)
    p0 = (2 * rng.normal(size=2000)).astype(numpy.float16)
    g = rng.normal(size=2000).astype(numpy.float16)
    link = _Holder(p0, dtype=numpy.float16)
    opt = RMSpropMomentum(lr=0.01)
    opt.setup(link)
    _step(opt, link, g)
    g32 = g.astype(numpy.float32)
    ms = (numpy.float32(0.9) * numpy.ones(2000, numpy.float32)
          + numpy.float32(0.1) * g32 * g32)
    mom = numpy.float32(0.01) * g32 / numpy.sqrt(ms + numpy.float32(1e-8))
    expected = (p0.astype(numpy.float32) - mom).astype(numpy.float16)
    numpy.testing.assert_array_equal(link.w.array, expected)
    # rounding mom to float16 first would differ somewhere (~1 % of entries)
    assert (expected != p0 - mom.astype(numpy.float16)).any()


def test_rmsprop_eps_too_small_for_dtype_raises():
    link = _Holder([1.0], dtype=numpy.float32)
    opt = RMSpropMomentum(eps=1e-50)
    opt.setup(link)
    with pytest.raises(ValueError, match='eps'):
        _step(opt, link, [1.0])


def test_rmsprop_none_grad_is_skipped():
    # (Optimizer.update would reallocate a None grad as zeros; the rule itself
    # must leave the parameter and its state alone.)
    link = _Holder([1.0])
    opt = RMSpropMomentum(lr=0.1)
    opt.setup(link)
    _step(opt, link, [2.0])
    p1 = link.w.array.copy()
    state1 = {k: v.copy() for k, v in link.w.update_rule.state.items()}
    link.w.grad = None
    link.w.update_rule.update(link.w)
    numpy.testing.assert_array_equal(link.w.array, p1)
    for key, value in state1.items():
        numpy.testing.assert_array_equal(link.w.update_rule.state[key], value)


def test_rmsprop_serialization_continues_identically(tmp_path):
    rng = numpy.random.RandomState(1)
    grads = [rng.normal(size=(2, 3)) for _ in range(6)]
    link = _Holder(rng.normal(size=(2, 3)))
    opt = RMSpropMomentum(lr=0.03, rho=0.8, momentum=0.7)
    opt.setup(link)
    for g in grads[:3]:
        _step(opt, link, g)
    opt_file = str(tmp_path / 'opt.npz')
    link_file = str(tmp_path / 'link.npz')
    chainer.serializers.save_npz(opt_file, opt)
    chainer.serializers.save_npz(link_file, link)
    with numpy.load(opt_file) as saved:
        assert {'t', 'w/ms', 'w/mom', 'w/t'} <= set(saved.files)
    for g in grads[3:]:
        _step(opt, link, g)

    link2 = _Holder(numpy.zeros((2, 3)))
    opt2 = RMSpropMomentum(lr=0.03, rho=0.8, momentum=0.7)
    opt2.setup(link2)
    chainer.serializers.load_npz(link_file, link2)
    chainer.serializers.load_npz(opt_file, opt2)
    assert opt2.t == 3 and link2.w.update_rule.t == 3
    for g in grads[3:]:
        _step(opt2, link2, g)
    numpy.testing.assert_array_equal(link2.w.array, link.w.array)
    for key in ('ms', 'mom'):
        numpy.testing.assert_array_equal(
            link2.w.update_rule.state[key], link.w.update_rule.state[key])


@pytest.mark.gpu
@pytest.mark.parametrize('dtype,rtol', [
    (numpy.float16, 2e-3), (numpy.float32, 1e-5), (numpy.float64, 1e-12)])
def test_rmsprop_gpu_matches_cpu(dtype, rtol):
    import cupy
    rng = numpy.random.RandomState(2)
    p0 = rng.normal(size=(7, 5)).astype(dtype)
    grads = [rng.normal(size=(7, 5)).astype(dtype) for _ in range(4)]
    cpu = _Holder(p0.copy(), dtype=dtype)
    gpu = _Holder(p0.copy(), dtype=dtype)
    gpu.to_device('@cupy:0')
    opts = []
    for link in (cpu, gpu):
        opt = RMSpropMomentum(lr=0.05, rho=0.9, momentum=0.9, eps=1e-6)
        opt.setup(link)
        opts.append(opt)
    for g in grads:
        cpu.w.grad = g.copy()
        gpu.w.grad = cupy.asarray(g)
        opts[0].update()
        opts[1].update()
    assert isinstance(gpu.w.array, cupy.ndarray)
    assert gpu.w.dtype == dtype
    numpy.testing.assert_allclose(
        cupy.asnumpy(gpu.w.array), cpu.w.array, rtol=rtol, atol=rtol)
    for key in ('ms', 'mom'):
        g_state = gpu.w.update_rule.state[key]
        assert isinstance(g_state, cupy.ndarray)
        assert g_state.dtype == cpu.w.update_rule.state[key].dtype
        numpy.testing.assert_allclose(
            cupy.asnumpy(g_state), cpu.w.update_rule.state[key],
            rtol=rtol, atol=rtol * 1e-2)


# ---------------------------------------------------------------------------
# make_optimizer / setup_optimizer
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('config,cls,expected', [
    ({'name': 'rmsprop_momentum', 'lr': 0.045, 'rho': 0.8, 'eps': 1.0},
     RMSpropMomentum,
     {'lr': 0.045, 'rho': 0.8, 'eps': 1.0, 'momentum': 0.9, 'ms_init': 1.0}),
    ({'name': 'rmsprop_momentum', 'lr': 0.01, 'momentum': 0.5, 'ms_init': 0},
     RMSpropMomentum,
     {'lr': 0.01, 'rho': 0.9, 'eps': 1e-8, 'momentum': 0.5, 'ms_init': 0.0}),
    ({'name': 'nesterov', 'lr': 0.1}, chainer.optimizers.NesterovAG,
     {'lr': 0.1, 'momentum': 0.9}),
    ({'name': 'momentum_sgd', 'lr': 0.2, 'momentum': 0.8},
     chainer.optimizers.MomentumSGD, {'lr': 0.2, 'momentum': 0.8}),
    ({'name': 'adam', 'lr': 2e-4, 'beta1': 0.0, 'beta2': 0.9},
     chainer.optimizers.Adam,
     {'alpha': 2e-4, 'beta1': 0.0, 'beta2': 0.9, 'eps': 1e-8}),
])
def test_make_optimizer_builds_the_right_class(config, cls, expected):
    opt = make_optimizer(config)
    assert type(opt) is cls
    hp = opt.hyperparam.get_dict()
    for key, value in expected.items():
        assert hp[key] == pytest.approx(value), key
    assert not hasattr(opt, 'target') or opt.target is None


def test_make_optimizer_defaults():
    """The defaults come from the schema; the class's own defaults agree with them."""
    adam = make_optimizer({'name': 'adam', 'lr': 1e-3})
    assert (adam.alpha, adam.beta1, adam.beta2, adam.eps) == (
        1e-3, 0.9, 0.999, 1e-8)
    rms = make_optimizer({'name': 'rmsprop_momentum', 'lr': 0.045})
    assert (rms.lr, rms.rho, rms.momentum, rms.eps, rms.ms_init) == (
        0.045, 0.9, 0.9, 1e-8, 1.0)
    for name in ('nesterov', 'momentum_sgd'):
        assert make_optimizer({'name': name, 'lr': 0.1}).momentum == 0.9
    # the class's own defaults agree with the brief / TF1
    default = RMSpropMomentum()
    assert (default.lr, default.rho, default.momentum, default.eps,
            default.ms_init) == (0.01, 0.9, 0.9, 1e-8, 1.0)


@pytest.mark.parametrize('weight_decay', [0, 0.0, 5e-4])
def test_setup_optimizer_weight_decay_hook_iff_positive(weight_decay):
    link = _Holder([1.0, 2.0])
    opt = setup_optimizer({'name': 'nesterov', 'lr': 0.1,
                           'weight_decay': weight_decay}, link)
    assert opt.target is link
    all_hooks = (list(opt._hookable._pre_update_hooks.values())
                 + list(opt._hookable._post_update_hooks.values()))
    hooks = [h for h in all_hooks
             if isinstance(h, chainer.optimizer_hooks.WeightDecay)]
    if weight_decay > 0:
        assert len(hooks) == 1 and hooks[0].rate == weight_decay
    else:
        assert hooks == []


def test_setup_optimizer_weight_decay_enters_the_gradient():
    # momentum_sgd, lr=1, momentum=0, wd=0.5: p <- p - (g + 0.5 p)
    link = _Holder([2.0])
    opt = setup_optimizer({'name': 'momentum_sgd', 'lr': 1.0, 'momentum': 0.0,
                           'weight_decay': 0.5}, link)
    _step(opt, link, [1.0])
    numpy.testing.assert_allclose(link.w.array, [2.0 - (1.0 + 1.0)])


@pytest.mark.parametrize('config,key', [
    ({'lr': 0.1}, 'name'),
    ({'name': 'sgdd', 'lr': 0.1}, 'sgdd'),
    ({'name': 'nesterov'}, 'lr'),
    ({'name': 'nesterov', 'lr': 0.1, 'rho': 0.9}, 'rho'),
    ({'name': 'adam', 'lr': 1e-3, 'momentum': 0.9}, 'momentum'),
    ({'name': 'rmsprop_momentum', 'lr': 0.1, 'beta1': 0.9}, 'beta1'),
    ({'name': 'momentum_sgd', 'lr': 0.1, 'weigth_decay': 1e-4}, 'weigth_decay'),
    ({'name': 'nesterov', 'lr': '1e-3'}, 'lr'),
    ({'name': 'nesterov', 'lr': -0.1}, 'lr'),
    ({'name': 'nesterov', 'lr': 0.1, 'momentum': 1.5}, 'momentum'),
    ({'name': 'nesterov', 'lr': 0.1, 'weight_decay': -1e-4}, 'weight_decay'),
    ({'name': 'adam', 'lr': 1e-3, 'beta2': 1.0}, 'beta2'),
    ({'name': 'rmsprop_momentum', 'lr': 0.1, 'rho': 1.0}, 'rho'),
    ({'name': 'rmsprop_momentum', 'lr': 0.1, 'ms_init': -1}, 'ms_init'),
    ({'name': 'adam', 'lr': float('inf')}, 'lr'),
])
def test_bad_optimizer_config_is_a_config_error_naming_the_key(config, key):
    with pytest.raises(config_lib.ConfigError, match=key):
        config_lib.validate_section('optimizer', config)


def test_ms_init_reaches_the_optimizer_from_a_config():
    """ms_init is a schema key and build_optimizer passes it on (it was dropped)."""
    from experiments import train
    cfg = config_lib.load_config(
        os.path.join(config_lib.CONFIG_ROOT, 'table2', 'cifar10', 'BN-2.yaml'),
        overrides=['optimizer.ms_init=0', 'optimizer.eps=1e-6'])
    opt = train.build_optimizer(cfg, _Holder([1.0]))
    assert isinstance(opt, RMSpropMomentum)
    assert (opt.ms_init, opt.eps, opt.lr, opt.rho) == (0.0, 1e-6, 0.01, 0.9)


def test_builders_use_the_section_as_validated():
    """No second set of defaults: every value comes from the section."""
    section = config_lib.validate_section('optimizer', {'name': 'rmsprop_momentum',
                                                        'lr': 0.1})
    assert section == {'name': 'rmsprop_momentum', 'lr': 0.1, 'weight_decay': 0.0,
                       'momentum': 0.9, 'rho': 0.9, 'eps': 1e-8, 'ms_init': 1.0,
                       'beta1': None, 'beta2': None}
    section['rho'] = 0.5
    assert opt_mod.make_optimizer(section).rho == 0.5
    with pytest.raises(KeyError):
        opt_mod.make_optimizer({'name': 'nesterov', 'lr': 0.1})   # not a validated section


# ---------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------

def test_staircase_schedule_values():
    s = make_schedule({'type': 'staircase', 'rate': 0.93, 'every_epochs': 2},
                      base_lr=0.1, total_epochs=100)
    assert isinstance(s, StaircaseSchedule)
    expected = {0: 1, 0.5: 1, 1: 1, 1.99: 1, 2: 0.93, 3: 0.93, 3.7: 0.93,
                4: 0.93 ** 2, 5: 0.93 ** 2, 6: 0.93 ** 3, 41: 0.93 ** 20}
    for epoch, factor in expected.items():
        assert s(epoch) == pytest.approx(0.1 * factor, rel=1e-12), epoch
    s4 = make_schedule({'type': 'staircase', 'rate': 0.93, 'every_epochs': 4},
                       base_lr=1.0)
    assert [s4(e) for e in (0, 3.99, 4, 7, 8)] == pytest.approx(
        [1, 1, 0.93, 0.93, 0.93 ** 2])


def test_multistep_schedule_200_epochs():
    s = make_schedule({'type': 'multistep', 'factor': 0.1, 'at': [0.5, 0.75]},
                      base_lr=0.1, total_epochs=200)
    assert isinstance(s, MultiStepSchedule) and s.milestones == [100, 150]
    expected = {0: 0.1, 99: 0.1, 99.999: 0.1, 100: 0.01, 100.5: 0.01,
                149.9: 0.01, 150: 0.001, 199.9: 0.001}
    for epoch, lr in expected.items():
        assert s(epoch) == pytest.approx(lr, rel=1e-12), epoch


def test_multistep_schedule_150_epochs_three_drops():
    s = make_schedule({'type': 'multistep', 'factor': 0.2,
                       'at': [0.3, 0.6, 0.8]}, base_lr=1.0, total_epochs=150)
    assert s.milestones == [45, 90, 120]
    expected = {0: 1, 44.9: 1, 45: 0.2, 89: 0.2, 90: 0.04, 119.5: 0.04,
                120: 0.008, 149: 0.008}
    for epoch, lr in expected.items():
        assert s(epoch) == pytest.approx(lr, rel=1e-12), epoch


@pytest.mark.parametrize('at,total,milestones', [
    ([0.5, 0.75], 90, [45, 68]),      # 67.5 -> 68 (nearest, halves up)
    ([0.29], 100, [29]),               # 0.29*100 = 28.999999999999996
    ([0.5, 0.75], 10, [5, 8]),         # 7.5 -> 8
])
def test_multistep_milestones_round_to_nearest_epoch(at, total, milestones):
    s = make_schedule({'type': 'multistep', 'factor': 0.5, 'at': at},
                      base_lr=1.0, total_epochs=total)
    assert s.milestones == milestones
    m = milestones[0]
    assert s(m - 0.01) == 1.0 and s(m) == 0.5


def test_constant_schedule():
    s = make_schedule({'type': 'constant'}, base_lr=0.3, total_epochs=10)
    assert [s(e) for e in (0, 1.5, 9.9, 100)] == [0.3] * 4


@pytest.mark.parametrize('config,key', [
    ({'type': 'cosine'}, 'cosine'),
    ({'type': 'staircase', 'rate': 0.93}, 'every_epochs'),
    ({'type': 'staircase', 'rate': 0.93, 'every_epochs': 2, 'factor': 0.1}, 'factor'),
    ({'type': 'staircase', 'rate': 0.93, 'every_epochs': 0}, 'every_epochs'),
    ({'type': 'multistep', 'factor': 0.1}, 'at'),
    ({'type': 'multistep', 'factor': 0.1, 'at': [0.5, 1.5]}, 'at'),
    ({'type': 'multistep', 'factor': 0.1, 'at': 0.5}, 'at'),
    ({'type': 'multistep', 'at': [0.5]}, 'factor'),
    ({'type': 'constant', 'rate': 0.5}, 'rate'),
    ({'rate': 0.9}, 'rate'),                     # type defaults to constant
])
def test_bad_schedule_config_is_a_config_error_naming_the_key(config, key):
    with pytest.raises(config_lib.ConfigError, match=key):
        config_lib.validate_section('schedule', config)


def test_multistep_schedule_needs_the_total_epochs():
    with pytest.raises(ValueError, match='total_epochs'):
        make_schedule({'type': 'multistep', 'factor': 0.1, 'at': [0.5]}, base_lr=0.1)


# ---------------------------------------------------------------------------
# LearningRateSchedule on a Trainer, with resume
# ---------------------------------------------------------------------------

N_DATA, BATCH = 8, 2           # 4 iterations per epoch
STOP = 14                      # iterations


class _RecordLR(object):
    """Optimizer hook: the lr (or alpha) in force during each update."""
    name = 'RecordLR'
    call_for_each_param = False
    timing = 'pre'

    def __init__(self, attr='lr'):
        self.attr = attr
        self.log = []

    def __call__(self, optimizer):
        # 'pre' hooks run before optimizer.t is incremented: update number t+1
        self.log.append((optimizer.t + 1, getattr(optimizer, self.attr)))


def _make_trainer(out, schedule, opt_config, snapshot_at=None):
    rng = numpy.random.RandomState(0)
    x = rng.normal(size=(N_DATA, 3)).astype(numpy.float32)
    y = rng.randint(0, 2, size=N_DATA).astype(numpy.int32)
    dataset = chainer.datasets.TupleDataset(x, y)
    model = L.Classifier(L.Linear(3, 2, initialW=0.1))
    opt = setup_optimizer(opt_config, model)
    attr = opt_mod.lr_attr(opt)
    recorder = _RecordLR(attr)
    opt.add_hook(recorder)
    it = chainer.iterators.SerialIterator(dataset, BATCH, shuffle=False)
    updater = training.updaters.StandardUpdater(it, opt)
    trainer = training.Trainer(updater, (STOP, 'iteration'), out=out)
    trainer.extend(LearningRateSchedule(schedule))
    if snapshot_at is not None:
        trainer.extend(extensions.snapshot(filename='snap'),
                       trigger=training.triggers.ManualScheduleTrigger(
                           [snapshot_at], 'iteration'))
    return trainer, model, recorder


def _check_log(log, schedule, iterations):
    # update i starts at epoch_detail (i-1)*BATCH/N_DATA
    iterations = list(iterations)
    assert [i for i, _ in log] == iterations
    assert [lr for _, lr in log] == pytest.approx(
        [schedule((i - 1) * BATCH / N_DATA) for i in iterations], rel=1e-12)


@pytest.mark.parametrize('snapshot_at', [6, 8])   # mid-epoch, epoch boundary
def test_schedule_extension_sets_lr_each_iteration_and_after_resume(
        tmp_path, snapshot_at):
    # the config's lr (0.1) differs from the schedule's base (0.7), so the
    # first update only sees 0.7 if initialize() sets it; after a resume the
    # fresh optimizer again holds 0.1 until initialize() runs.
    schedule = make_schedule({'type': 'staircase', 'rate': 0.5,
                              'every_epochs': 1}, base_lr=0.7)
    config = {'name': 'rmsprop_momentum', 'lr': 0.1, 'weight_decay': 1e-4}
    full, model_full, rec_full = _make_trainer(
        str(tmp_path / 'full'), schedule, config, snapshot_at=snapshot_at)
    full.run()
    _check_log(rec_full.log, schedule, range(1, STOP + 1))
    # the drops land on the epoch boundaries: 4 updates per epoch
    assert [lr for _, lr in rec_full.log[:9]] == pytest.approx(
        [0.7] * 4 + [0.35] * 4 + [0.175])

    snap = os.path.join(str(tmp_path / 'full'), 'snap')
    assert os.path.exists(snap)
    resumed, model_res, rec_res = _make_trainer(
        str(tmp_path / 'resumed'), schedule, config)
    chainer.serializers.load_npz(snap, resumed)
    assert resumed.updater.iteration == snapshot_at
    resumed.run()
    _check_log(rec_res.log, schedule, range(snapshot_at + 1, STOP + 1))
    for p_full, p_res in zip(model_full.params(), model_res.params()):
        numpy.testing.assert_array_equal(p_res.array, p_full.array)


def test_schedule_extension_sets_adam_alpha(tmp_path):
    schedule = make_schedule({'type': 'multistep', 'factor': 0.1,
                              'at': [0.5]}, base_lr=2e-4, total_epochs=2)
    config = {'name': 'adam', 'lr': 1.0, 'beta1': 0.0, 'beta2': 0.9}
    trainer, _, rec = _make_trainer(str(tmp_path), schedule, config)
    trainer.run()
    assert rec.attr == 'alpha'
    _check_log(rec.log, schedule, range(1, STOP + 1))
    assert [a for _, a in rec.log[3:6]] == pytest.approx([2e-4, 2e-5, 2e-5])


def test_schedule_extension_rejects_unknown_attr(tmp_path):
    schedule = make_schedule({'type': 'constant'}, base_lr=0.1)
    trainer, _, _ = _make_trainer(str(tmp_path), schedule,
                                  {'name': 'nesterov', 'lr': 0.1})
    trainer.extend(LearningRateSchedule(schedule, attr='alpha'), name='bad')
    with pytest.raises(ValueError, match='alpha'):
        trainer.run(show_loop_exception_msg=False)
