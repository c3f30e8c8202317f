"""Optimizers and learning-rate schedules of the paper's experiments (Sec. 4.2-4.5).

===========================  ==================================================
experiment                   optimizer / schedule (paper)
===========================  ==================================================
CIFAR CNN (4.2)              RMSprop, momentum 0.9, lr x0.93 every 2 epochs
                             (staircase), weight decay
Inception-V3 (4.3)           RMSprop, momentum 0.9, lr x0.93 every 4 epochs
Inception-V3, Nesterov (4.3) NesterovAG, momentum 0.9, lr x0.1 at 50 %, 75 %
                             of the epochs, or x0.2 at 30 %, 60 %, 80 %
DenseNet (4.4)               NesterovAG, lr 0.1, /10 at 50 % and 75 %
DCGAN (4.5)                  Adam, alpha 2e-4, beta1 0, beta2 0.9
===========================  ==================================================

Public API
----------
``RMSpropMomentum(lr=0.01, rho=0.9, momentum=0.9, eps=1e-8, ms_init=1.0)``
    TensorFlow-1-style RMSprop with momentum (see :class:`RMSpropMomentum`).
``make_optimizer(config)`` / ``setup_optimizer(config, link)``
    Optimizer from a validated ``optimizer`` config section; the latter also calls
    ``setup`` and adds ``chainer.optimizer_hooks.WeightDecay`` when
    ``weight_decay > 0``.
``make_schedule(config, base_lr, total_epochs)``
    A stateless callable ``schedule(epoch_detail) -> value`` from a validated
    ``schedule`` section.

The sections are checked and completed by the schema of :mod:`experiments.config`
(the only place that validates settings or supplies defaults;
``experiments.config.validate_section('optimizer', {...})`` makes one from a plain
dict).
``LearningRateSchedule(schedule, attr=None, optimizer=None)``
    Trainer extension that sets ``optimizer.<attr> = schedule(epoch_detail)``
    (``attr=None`` picks ``'alpha'`` for Adam and ``'lr'`` otherwise).

RMSprop with momentum: the formula and the choices made
--------------------------------------------------------
Per element, with gradient ``g`` (after hooks such as WeightDecay)::

    ms  <- rho * ms + (1 - rho) * g**2
    mom <- momentum * mom + lr * g / sqrt(ms + eps)
    param <- param - mom

This is ``tf.compat.v1.train.RMSPropOptimizer(lr, decay=rho, momentum=...,
epsilon=eps, centered=False)`` (the ``ApplyRMSProp`` kernel), the optimizer of
the TF/slim Inception recipe whose schedule (x0.93 staircase) the paper uses.
It differs from ``chainer.optimizers.RMSprop`` in three ways:

* **momentum**: Chainer's RMSprop has none.  Here the learning rate sits
  *inside* the momentum buffer (as in TF), so a change of ``lr`` affects only
  the new contributions, and the buffer keeps the steps taken with the old
  rate; it decays with ``momentum`` (i.e. within ~10 steps for 0.9).
* **eps placement**: inside the square root, ``sqrt(ms + eps)`` (TF), where
  Chainer's default is ``sqrt(ms) + eps`` (its ``eps_inside_sqrt=False``).
  With the default ``eps=1e-8`` the difference only matters where
  ``ms`` is ~1e-16 or smaller; for large ``eps`` (the slim Inception recipe
  used ``epsilon=1.0``) it is a different optimizer.
* **initial mean square** ``ms_init``: TF1 initialises the ``rms`` slot to
  **ones**; Chainer (and Keras / PyTorch) to zeros.  We follow TF1 and default
  to ``ms_init=1.0``.  With zeros the first step is
  ``lr * g / sqrt((1 - rho) g**2 + eps) ~= 3.16 * lr * sign(g)`` for every
  element whatever the gradient's scale; with ones the first steps are
  ``~= lr * g`` where ``g**2 << 1``, and ``ms`` forgets the initial 1 at rate
  ``rho`` per step (0.9**50 < 0.01).  ``ms_init=0.0`` gives the
  zero-initialised (Keras/PyTorch) variant.

Both state buffers (``ms``, ``mom``) are zero/``ms_init`` at the first
update of each parameter (lazily, like every Chainer update rule) and live in
``update_rule.state`` so that ``chainer.serializers.save_npz`` of the
optimizer (or of a Trainer snapshot) saves and restores them with ``t``.

Dtypes: for float32 and float64 parameters the state and all arithmetic are
in the parameter's dtype (scalars cast to it first, so CPU and GPU run the
same operations).  For **float16** parameters the state is kept in float32,
the update is computed in float32 and only the final ``param - mom`` is
rounded to float16 (float16 cannot hold ``eps=1e-8`` nor small ``ms``).
``use_fp32_update()`` (a float32 master copy of the parameter) also works;
then everything is float32.

GPU: ``update_core_gpu`` is one ``cuda.elementwise`` kernel written to
mirror ``update_core_cpu`` operation by operation.  The compiler may fuse a
multiply and an add (FMA), so the two paths agree to a few ulps rather than
bit for bit.

Learning-rate schedules
-----------------------
Schedules are pure functions of the updater's ``epoch_detail`` and the
extension keeps no state, so a run resumed from a snapshot sets exactly the
values an uninterrupted run would have.  Chainer's Trainer calls extensions
*after* each update, so :class:`LearningRateSchedule` runs every iteration
after update ``i`` and sets the value for update ``i + 1`` from
``epoch_detail`` = the progress at the start of that update; its
``initialize`` (called by ``Trainer.run`` before the first update, also after
a resume) sets the value for the very first update.  The update that starts at
``epoch_detail = e`` therefore uses ``schedule(e)``.  Its priority (50) is
below ``PRIORITY_READER`` so that writers/readers such as
``extensions.observe_lr`` at the same iteration still see the value that the
update just finished used; snapshots (priority -100) run afterwards, which is
harmless because the value is recomputed on resume.

``make_schedule`` forms (``epoch = floor(epoch_detail)``, completed epochs):

* ``{'type': 'constant'}``: ``base_lr``.
* ``{'type': 'staircase', 'rate': r, 'every_epochs': k}``:
  ``base_lr * r ** floor(epoch / k)``.
* ``{'type': 'multistep', 'factor': f, 'at': [a1, a2, ...]}`` (fractions of
  ``total_epochs``): milestones ``m_j = floor(a_j * total_epochs + 0.5)``
  (nearest epoch, halves up); ``base_lr * f ** #{j : epoch >= m_j}``.  E.g.
  200 epochs, ``at=[0.5, 0.75]``, ``factor=0.1``: 1x for epochs 0-99, 0.1x for
  100-149, 0.01x from 150.

"""
import math

import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)

import numpy

import chainer
from chainer import optimizer as optimizer_module
from chainer.backends import cuda
from chainer.training import extension


__all__ = [
    'RMSpropMomentumRule', 'RMSpropMomentum', 'OPTIMIZER_NAMES',
    'make_optimizer', 'setup_optimizer', 'ConstantSchedule',
    'StaircaseSchedule', 'MultiStepSchedule', 'make_schedule', 'lr_attr',
    'LearningRateSchedule',
]


# ---------------------------------------------------------------------------
# RMSprop with momentum (TensorFlow-1 semantics)
# ---------------------------------------------------------------------------

_default_hyperparam = optimizer_module.Hyperparameter()
_default_hyperparam.lr = 0.01
_default_hyperparam.rho = 0.9
_default_hyperparam.momentum = 0.9
_default_hyperparam.eps = 1e-8
_default_hyperparam.ms_init = 1.0


def _state_dtype(dtype):
    """dtype of the state and of the arithmetic: float32 for float16 params."""
    dtype = numpy.dtype(dtype)
    if dtype == numpy.float16:
        return numpy.dtype(numpy.float32)
    return dtype


class RMSpropMomentumRule(optimizer_module.UpdateRule):

    """Update rule of :class:`RMSpropMomentum` (see the module docstring).

    Args:
        parent_hyperparam (~chainer.optimizer.Hyperparameter): defaults.
        lr (float): learning rate (inside the momentum buffer, as in TF).
        rho (float): decay of the mean square ``ms``.
        momentum (float): decay of the momentum buffer ``mom``.
        eps (float): added to ``ms`` inside the square root.
        ms_init (float): initial value of ``ms`` (TF1: 1.0).

    State: ``ms`` and ``mom``, shaped like the parameter, in the parameter's
    dtype (float32 for float16 parameters).
    """
    is_elementwise = True

    _kernel = None

    def __init__(self, parent_hyperparam=None, lr=None, rho=None,
                 momentum=None, eps=None, ms_init=None):
        super(RMSpropMomentumRule, self).__init__(
            parent_hyperparam or _default_hyperparam)
        if lr is not None:
            self.hyperparam.lr = lr
        if rho is not None:
            self.hyperparam.rho = rho
        if momentum is not None:
            self.hyperparam.momentum = momentum
        if eps is not None:
            self.hyperparam.eps = eps
        if ms_init is not None:
            self.hyperparam.ms_init = ms_init

    def init_state(self, param):
        dtype = _state_dtype(param.dtype)
        with chainer.using_device(param.device):
            xp = param.device.xp
            self.state['ms'] = xp.full(
                param.data.shape, self.hyperparam.ms_init, dtype=dtype)
            self.state['mom'] = xp.zeros(param.data.shape, dtype=dtype)

    def _scalars(self, dtype):
        """Hyperparameters as scalars of the computation dtype (CPU == GPU)."""
        hp = self.hyperparam
        t = numpy.dtype(dtype).type
        eps = t(hp.eps)
        if hp.eps != 0 and eps == 0:
            raise ValueError(
                'eps of RMSpropMomentum is too small for {} ({})'.format(
                    numpy.dtype(dtype).name, hp.eps))
        return (t(hp.lr), t(hp.rho), t(1.0 - hp.rho), t(hp.momentum), eps)

    def update_core_cpu(self, param):
        grad = param.grad
        if grad is None:
            return
        ms, mom = self.state['ms'], self.state['mom']
        dtype = ms.dtype
        lr, rho, one_minus_rho, momentum, eps = self._scalars(dtype)
        g = grad.astype(dtype, copy=False)

        ms *= rho
        ms += one_minus_rho * g * g
        mom *= momentum
        mom += lr * g / numpy.sqrt(ms + eps)
        if param.data.dtype == dtype:
            param.data -= mom
        else:   # float16 parameter, float32 state
            param.data[...] = (param.data.astype(dtype) - mom).astype(
                param.data.dtype)

    def update_core_gpu(self, param):
        grad = param.grad
        if grad is None:
            return
        ms, mom = self.state['ms'], self.state['mom']
        lr, rho, one_minus_rho, momentum, eps = self._scalars(ms.dtype)
        if RMSpropMomentumRule._kernel is None:
            RMSpropMomentumRule._kernel = cuda.elementwise(
                'T grad, S lr, S rho, S one_minus_rho, S momentum, S eps',
                'T param, S ms, S mom',
                '''S g = static_cast<S>(grad);
                   ms = rho * ms + one_minus_rho * g * g;
                   mom = momentum * mom + lr * g / sqrt(ms + eps);
                   param = static_cast<T>(static_cast<S>(param) - mom);''',
                'mixnorm_rmsprop_momentum')
        RMSpropMomentumRule._kernel(
            grad, lr, rho, one_minus_rho, momentum, eps, param.data, ms, mom)


class RMSpropMomentum(optimizer_module.GradientMethod):

    """RMSprop with momentum, TensorFlow-1 semantics (see module docstring).

    ``ms <- rho ms + (1-rho) g^2; mom <- momentum mom + lr g / sqrt(ms + eps);
    param <- param - mom``, with ``ms`` initialised to ``ms_init`` (default 1,
    as TF1) and ``mom`` to 0.

    Args:
        lr (float): learning rate.
        rho (float): decay of the mean square (TF's ``decay``).
        momentum (float): momentum.
        eps (float): added inside the square root.
        ms_init (float): initial mean square (1.0 = TF1, 0.0 = Keras/PyTorch).
    """

    def __init__(self, lr=_default_hyperparam.lr, rho=_default_hyperparam.rho,
                 momentum=_default_hyperparam.momentum,
                 eps=_default_hyperparam.eps,
                 ms_init=_default_hyperparam.ms_init):
        super(RMSpropMomentum, self).__init__()
        self.hyperparam.lr = lr
        self.hyperparam.rho = rho
        self.hyperparam.momentum = momentum
        self.hyperparam.eps = eps
        self.hyperparam.ms_init = ms_init

    lr = optimizer_module.HyperparameterProxy('lr')
    rho = optimizer_module.HyperparameterProxy('rho')
    momentum = optimizer_module.HyperparameterProxy('momentum')
    eps = optimizer_module.HyperparameterProxy('eps')
    ms_init = optimizer_module.HyperparameterProxy('ms_init')

    def create_update_rule(self):
        return RMSpropMomentumRule(self.hyperparam)


# ---------------------------------------------------------------------------
# Optimizers from a validated config section
# ---------------------------------------------------------------------------

OPTIMIZER_NAMES = ('adam', 'momentum_sgd', 'nesterov', 'rmsprop_momentum')


def make_optimizer(config):
    """Chainer optimizer (not set up) from a validated ``optimizer`` section.

    ``config`` is what :func:`experiments.config.validate_section` (or a loaded config's
    ``['optimizer']``) returns: every key of the chosen ``name`` is present and checked,
    so nothing is defaulted or checked here.  ``lr`` is Adam's ``alpha``.
    """
    name = config['name']
    if name == 'adam':
        return chainer.optimizers.Adam(alpha=config['lr'], beta1=config['beta1'],
                                       beta2=config['beta2'], eps=config['eps'])
    if name == 'rmsprop_momentum':
        return RMSpropMomentum(lr=config['lr'], momentum=config['momentum'],
                               rho=config['rho'], eps=config['eps'],
                               ms_init=config['ms_init'])
    if name == 'nesterov':
        return chainer.optimizers.NesterovAG(lr=config['lr'], momentum=config['momentum'])
    if name == 'momentum_sgd':
        return chainer.optimizers.MomentumSGD(lr=config['lr'], momentum=config['momentum'])
    raise ValueError('optimizer %r: one of %s (validate the config with '
                     'experiments.config first)' % (name, ', '.join(OPTIMIZER_NAMES)))


def setup_optimizer(config, link):
    """:func:`make_optimizer`, ``setup(link)``, WeightDecay iff weight_decay > 0.

    The hook (``chainer.optimizer_hooks.WeightDecay``, named
    ``'WeightDecay'``) adds ``weight_decay * param`` to every gradient before
    the update, i.e. the gradient of ``weight_decay / 2 * ||w||^2`` (TF's
    ``tf.nn.l2_loss`` regulariser), on *all* parameters of ``link``.
    """
    opt = make_optimizer(config)
    opt.setup(link)
    if config['weight_decay'] > 0:
        opt.add_hook(chainer.optimizer_hooks.WeightDecay(config['weight_decay']))
    return opt


# ---------------------------------------------------------------------------
# Learning-rate schedules
# ---------------------------------------------------------------------------

def _completed_epochs(epoch_detail):
    return int(math.floor(epoch_detail))


class ConstantSchedule(object):
    """``schedule(epoch_detail) = base_lr``."""

    def __init__(self, base_lr):
        self.base_lr = float(base_lr)

    def __call__(self, epoch_detail):
        return self.base_lr

    def __repr__(self):
        return 'ConstantSchedule(base_lr={!r})'.format(self.base_lr)


class StaircaseSchedule(object):
    """``base_lr * rate ** floor(floor(epoch_detail) / every_epochs)``."""

    def __init__(self, base_lr, rate, every_epochs):
        self.base_lr = float(base_lr)
        self.rate = float(rate)
        self.every_epochs = every_epochs

    def __call__(self, epoch_detail):
        k = int(math.floor(_completed_epochs(epoch_detail) / self.every_epochs))
        return self.base_lr * self.rate ** k

    def __repr__(self):
        return 'StaircaseSchedule(base_lr={!r}, rate={!r}, every_epochs={!r})'\
            .format(self.base_lr, self.rate, self.every_epochs)


class MultiStepSchedule(object):
    """``base_lr * factor ** #{m in milestones : floor(epoch_detail) >= m}``."""

    def __init__(self, base_lr, factor, milestones):
        self.base_lr = float(base_lr)
        self.factor = float(factor)
        self.milestones = sorted(int(m) for m in milestones)

    def __call__(self, epoch_detail):
        epoch = _completed_epochs(epoch_detail)
        n = sum(1 for m in self.milestones if epoch >= m)
        return self.base_lr * self.factor ** n

    def __repr__(self):
        return 'MultiStepSchedule(base_lr={!r}, factor={!r}, milestones={!r})'\
            .format(self.base_lr, self.factor, self.milestones)


def make_schedule(config, base_lr, total_epochs=None):
    """Schedule callable ``epoch_detail -> value`` from a validated ``schedule``
    section (see the module docstring for the forms).  ``total_epochs`` is needed by
    ``multistep`` only (its ``at`` are fractions of it)."""
    kind = config['type']
    if kind == 'constant':
        return ConstantSchedule(base_lr)
    if kind == 'staircase':
        return StaircaseSchedule(base_lr, config['rate'], config['every_epochs'])
    if kind == 'multistep':
        if total_epochs is None:
            raise ValueError("make_schedule: 'total_epochs' is required for a "
                             "multistep schedule (its 'at' are fractions of it)")
        milestones = [int(math.floor(float(a) * total_epochs + 0.5)) for a in config['at']]
        return MultiStepSchedule(base_lr, config['factor'], milestones)
    raise ValueError('schedule type %r: one of constant, staircase, multistep (validate '
                     'the config with experiments.config first)' % (kind,))


def lr_attr(optimizer):
    """Name of the learning-rate hyperparameter: ``'alpha'`` for Adam."""
    if isinstance(optimizer, chainer.optimizers.Adam):
        return 'alpha'
    return 'lr'


class LearningRateSchedule(extension.Extension):

    """Sets ``optimizer.<attr> = schedule(updater.epoch_detail)``; stateless.

    Runs every iteration after the update (and in ``initialize``, so the
    first update, also after a resume, uses the scheduled value): the update
    that starts at ``epoch_detail = e`` uses ``schedule(e)``.

    Args:
        schedule (callable): ``epoch_detail -> value`` (see
            :func:`make_schedule`).
        attr (str or None): hyperparameter to set; ``None`` = ``'alpha'`` for
            Adam, ``'lr'`` otherwise.
        optimizer (~chainer.Optimizer or None): the optimizer; ``None`` = the
            updater's ``'main'`` optimizer.
    """

    trigger = (1, 'iteration')
    priority = extension.PRIORITY_READER - 50

    def __init__(self, schedule, attr=None, optimizer=None):
        if not callable(schedule):
            raise ValueError('schedule must be callable, got {!r}'.format(
                schedule))
        self._schedule = schedule
        self._attr = attr
        self._optimizer = optimizer

    def _get_optimizer(self, trainer):
        return self._optimizer or trainer.updater.get_optimizer('main')

    def _apply(self, trainer):
        opt = self._get_optimizer(trainer)
        attr = self._attr if self._attr is not None else lr_attr(opt)
        if attr not in opt.hyperparam.get_dict():
            raise ValueError('{} has no hyperparameter {!r}'.format(
                type(opt).__name__, attr))
        value = float(self._schedule(trainer.updater.epoch_detail))
        setattr(opt, attr, value)

    def initialize(self, trainer):
        self._apply(trainer)

    def __call__(self, trainer):
        self._apply(trainer)
