"""``MixtureNormalization``: a stand-in for ``chainer.links.BatchNormalization``.

The link holds the state (affine parameters, BN's running averages, the inference queue,
counters and their serialization) and calls the math through a small public interface:
:func:`mixnorm.gmm.fit_gmm` and :func:`mixnorm.gmm.responsibilities` for the mixture,
:func:`mixnorm.functions.mixture_normalization` (training, which returns the batch's
:class:`~mixnorm.functions.BatchStats`) and
:func:`mixnorm.functions.fixed_mixture_normalization` (inference), as Chainer splits
``links/normalization/batch_normalization.py`` from its function nodes.  BN's inference
(``inference='running'``) is Chainer's own ``fixed_batch_normalization``, and with one
component its training step is Chainer's ``batch_normalization``.
"""
from mixnorm import _compat  # noqa: F401

import functools
import numbers
import threading
import warnings
import weakref

import numpy

import chainer
from chainer import backend
from chainer import initializers
from chainer import variable
from chainer.functions.normalization import batch_normalization as _bn
from chainer.utils import argument
from chainer.utils import type_check

from mixnorm import _arrays
from mixnorm import functions
from mixnorm import gmm as _gmm
from mixnorm import kernels
from mixnorm import settings as _settings

#: The recomputed forwards (``F.forget``) a link remembers the posteriors of.
MAX_PENDING_RECOMPUTES = 16

#: Channels, and elements of the samples, per block of the points' transposing copy on
#: NumPy (:meth:`MixtureNormalization._points`).
_POINTS_CHANNELS = 128
_POINTS_BLOCK = 1 << 17

#: BatchNormalization's constructor arguments, in BN's order and positions.
BN_ARGUMENTS = ('size', 'decay', 'eps', 'dtype', 'use_gamma', 'use_beta', 'initial_gamma',
                'initial_beta', 'axis', 'initial_avg_mean', 'initial_avg_var')


class InvalidInput(type_check.InvalidType, ValueError):
    """An input the link cannot normalize (shape, axes, dtype, no points): Chainer's
    ``type_check.InvalidType``, as BN's function raises it, and a ``ValueError``."""

    def __init__(self, msg):
        super().__init__(None, None, msg)

    def __reduce__(self):
        return (type(self), (self.args[0],))


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _raw(x):
    return x.array if isinstance(x, chainer.Variable) else x


class MixtureNormalization(chainer.Link):
    """Mixture Normalization (paper Sec. 3.2), a stand-in for ``L.BatchNormalization``.

    **BatchNormalization's arguments, in BN's order and positions**: ``size`` (an int, a
    tuple, or None to take it from the first input), ``decay``, ``eps``, ``dtype``
    (parameters and running averages are float32 under ``chainer.mixed16``),
    ``use_gamma``, ``use_beta``, ``initial_gamma``, ``initial_beta``, ``axis`` (the axes
    normalized over, any that BN takes), ``initial_avg_mean``, ``initial_avg_var``.
    MN's own settings follow as keywords only (:data:`mixnorm.settings.SETTINGS` defines
    them with their ranges): ``n_components`` K, ``em_iters``, ``queue_length`` T,
    ``fit_fraction``, ``min_weight``, ``min_count``, ``affine``, ``lambda_scaling``,
    ``inference`` and ``seed``.

    **Points.** The axes not in ``axis`` are the features: each position along the
    normalized axes is a point in R^D, D their size (for (N, C, H, W) and the default
    axes, n = N*H*W points in R^C).

    **Training** (``chainer.config.train``): fits a K-component diagonal GMM to the
    batch's points (K-means++ seeding, then ``em_iters`` split evenly into K-means and
    EM iterations), prunes components lighter than ``min_weight`` or with fewer than
    ``min_count`` effective points, and normalizes with Eq. 34-36, the posteriors held
    constant.  The fitted (lambda_k, mu_k, sigma^2_k) enter a queue of the last T
    batches.  With K = 1 and ``inference='running'`` (one process) the step is
    Chainer's ``batch_normalization`` itself.

    **BN's state.** ``avg_mean``, ``avg_var`` and ``N`` are kept as BN keeps them:
    after every training step ``avg <- decay * avg + (1 - decay) * batch``, from the
    batch's pooled per-channel mean and variance (sum_k lambda_k mu_k and the total
    variance of the mixture, which is the batch's own variance), the variance unbiased
    by n / (n - 1).  ``forward(x, finetune=True)`` counts batches in ``N`` and uses
    decay 1 - 1/N (population statistics), as BN; ``start_finetuning()`` resets ``N``.
    ``decay`` is also zeta of Eq. 39, the queue's weighting (the paper's 0.9 is BN's
    default too); fine-tuning changes only the running averages' decay.

    **Inference** (``inference``):

    * ``'consistent'`` (default): Eq. 38-39, every point standardized by each of the
      T*K queued components and mixed by the posteriors of the mixture with weights
      tau_t * lambda_k^t (tau_t = zeta^(T-t-1) (1-zeta) / (1-zeta^T)), with Eq. 34's
      1/sqrt(lambda_k^t) (when ``lambda_scaling``), so that T = 1 reproduces the
      training output of the same batch;
    * ``'paper'``: Eq. 38 exactly as printed (no 1/sqrt(lambda));
    * ``'running'``: BN's inference, ``fixed_batch_normalization`` with ``avg_mean``
      and ``avg_var``: MN's training with BN's inference statistics.

    With K = 1 and ``inference='running'`` the link is ``L.BatchNormalization`` in every
    mode, bit for bit.  With K = 1 and the queue it is BN in training only: the queue
    mixes the last T batches' Gaussians by each point's posterior, which no BN does.
    Queue inference before any training step raises ``RuntimeError``, unless
    ``initial_avg_mean``/``initial_avg_var`` or a BN snapshot started the queue.

    **BN's state crosses.** A BN snapshot (npz or HDF5) loads into the link: gamma,
    beta, the running averages and ``N``, and the queue starts as one batch with BN's
    running mean and variance, so that the converted link gives BN's inference output
    before its first training step; ``initial_avg_mean``/``initial_avg_var`` start it
    the same way.  An MN snapshot loads into BN.  ``copyparams`` works both ways.

    ``lambda_scaling=False`` drops 1/sqrt(lambda_k) (Eq. 34) in training and inference.
    ``affine``: ``'channel'`` (default) gamma and beta of shape ``size`` as BN's;
    ``'component'`` Eq. 37's (K, *size) parameters, indexed by weight rank; ``None``
    none.

    Recomputation (``F.forget``, ``chainer.config.in_recomputing``): the recomputed
    forward reuses the posteriors of the first forward and changes no state.

    **On a GPU** a training step (without the fit) and an inference forward are a few
    fused kernels each and copy nothing to the host: the queue's inference mixture is
    built on the device after each training step and cached; ``effective_components``
    and ``last_gmm`` are made when read.  The checks for NaN/Inf input (and a
    non-positive normalizer of the component affine) read device values, so on a device
    they run under ``chainer.config.debug`` only, as Chainer's own NaN checks do; there a
    NaN input otherwise gives NaN output where it is, as BN's.  On the CPU they always
    run (reading costs nothing there).

    Readable state: ``effective_components`` (K' of the last fit), ``last_gmm`` (the
    last :class:`mixnorm.GMM`, components sorted by weight), ``n_fits``.

    Errors: an input of the wrong shape, axes or dtype raises :class:`InvalidInput`
    (``type_check.InvalidType``, as BN); a bad argument raises
    :class:`mixnorm.settings.InvalidParameter` naming it, its range and its meaning.
    """

    gamma = None
    beta = None

    def __init__(self, size=None, decay=0.9, eps=2e-5, dtype=None, use_gamma=True,
                 use_beta=True, initial_gamma=None, initial_beta=None, axis=None,
                 initial_avg_mean=None, initial_avg_var=None, *, n_components=3,
                 em_iters=2, queue_length=10, fit_fraction=1.0, min_weight=0.01,
                 min_count=16, affine='channel', lambda_scaling=True,
                 inference='consistent', seed=None):
        super().__init__()
        caller = type(self).__name__
        size = _check_size(size, caller)
        _check_positional_decay(decay, caller)
        setting = functools.partial(_settings.check, caller=caller)
        self.decay = setting('decay', decay)
        self.eps = setting('eps', eps)
        self.n_components = setting('n_components', n_components)
        self.em_iters = setting('em_iters', em_iters)
        self.kmeans_iters, self.gmm_em_iters = _gmm.split_em_iters(self.em_iters)
        self.queue_length = setting('queue_length', queue_length)
        self.fit_fraction = setting('fit_fraction', fit_fraction)
        self.min_weight = setting('min_weight', min_weight)
        self.min_count = setting('min_count', min_count)
        self.affine = setting('affine', affine)
        self.lambda_scaling = setting('lambda_scaling', lambda_scaling)
        self.inference = setting('inference', inference)
        seed = setting('seed', seed)
        self.axis = _check_axis(axis, caller)
        if affine is None and (initial_gamma is not None or initial_beta is not None):
            raise ValueError('initial_gamma/initial_beta need an affine: affine=None has '
                             "no parameters (use affine='channel' or 'component')")
        _settings.check_together(dict(inference=self.inference, affine=self.affine), caller)
        self._dtype = self._highprec_dtype = chainer.get_dtype(
            dtype, map_mixed16=numpy.float32)
        self._initial_avg_mean = initial_avg_mean
        self._initial_avg_var = initial_avg_var
        self._last_fit = None       # (gmm or None, BatchStats, eps) of the last step
        self._queue_state = {'version': 0}  # shared by copy(): the inference mixture's cache
        self._ones_cache = {}       # K = 1's posteriors, and BN's weight, by shape
        self._pending = []          # (fit index, posteriors) for recomputed forwards
        self._reducer = None        # collectives of a process group (distributed.py)
        self.path = None            # the link's path in its model, for messages
        self._said_fallback = False     # the K' = 1 notice is given once
        self._sharing = [weakref.ref(self)]     # links sharing this queue (copy())

        self.avg_mean = self.avg_var = None
        self.N = 0
        self.queue_weights = self.queue_means = self.queue_vars = None
        self.n_fits = 0
        self.seed = int(numpy.random.randint(2 ** 31)) if seed is None else int(seed)
        for name in ('avg_mean', 'avg_var', 'N', 'queue_weights', 'queue_means',
                     'queue_vars', 'n_fits', 'seed'):
            self.register_persistent(name)

        with self.init_scope():
            if affine is not None:
                if use_gamma:
                    self.gamma = variable.Parameter(
                        _initializer(initial_gamma, 1, self._dtype))
                if use_beta:
                    self.beta = variable.Parameter(
                        _initializer(initial_beta, 0, self._dtype))
        self.size = None            # D, the number of features
        self.param_shape = None     # their shape, BN's ``size``
        if size is not None:
            self._initialize(size)

    # ------------------------------------------------------------------ state
    def _initialize(self, shape):
        """Create the queue, the running averages and the parameters for features of
        ``shape`` (a tuple)."""
        self.param_shape = tuple(int(s) for s in shape)
        self.size = int(numpy.prod(self.param_shape, dtype=numpy.int64))
        T, K, D = self.queue_length, self.n_components, self.size
        dev = self.device
        if self.queue_weights is None:
            self.queue_weights = dev.send(numpy.zeros((T, K), dtype=numpy.float64))
            self.queue_means = dev.send(numpy.zeros((T, K, D), dtype=numpy.float64))
            self.queue_vars = dev.send(numpy.ones((T, K, D), dtype=numpy.float64))
        started = self._initial_avg_mean is not None or self._initial_avg_var is not None
        if self.avg_mean is None:
            self.avg_mean = self._init_array(self._initial_avg_mean, 0)
            self.avg_var = self._init_array(self._initial_avg_var, 1)
        self._initial_avg_mean = self._initial_avg_var = None
        shape = self._affine_shape()
        for p in (self.gamma, self.beta):
            if p is not None and p.array is None:
                p.initialize(shape)
        if started:
            self._start_queue_from_running()

    def _init_array(self, initializer, default):
        init = initializers._get_initializer(default if initializer is None
                                             else initializer)
        return initializers.generate_array(init, self.param_shape, self.xp,
                                           dtype=self._dtype, device=self.device)

    def _affine_shape(self):
        return self.param_shape if self.affine == 'channel' \
            else (self.n_components,) + self.param_shape

    def _expected_shapes(self):
        T, K, D = self.queue_length, self.n_components, self.size
        shapes = {'queue_weights': (T, K), 'queue_means': (T, K, D),
                  'queue_vars': (T, K, D), 'avg_mean': self.param_shape,
                  'avg_var': self.param_shape}
        for name in ('gamma', 'beta'):
            if getattr(self, name) is not None:
                shapes[name] = self._affine_shape()
        return shapes

    def copy(self, mode='share'):
        """``Link.copy``; with ``mode='share'`` (the default, as ``model.copy()`` for an
        evaluation model) the copy shares the queue, the running averages and the
        parameters with this link, and the counters that index the queue follow
        whichever of them trains, so both stay right."""
        ret = super().copy(mode)
        if mode == 'share':
            ret._sharing = self._sharing
            self._sharing.append(weakref.ref(ret))
        else:
            ret._sharing = [weakref.ref(ret)]
        return ret

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_sharing'] = None            # a copy made by pickling or deepcopy shares nothing
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._sharing = [weakref.ref(self)]

    def _share_counters(self):
        """Give the links that share this queue (``copy()``) the counters of this one."""
        for ref in self._sharing:
            link = ref()
            if link is not None and link is not self and \
                    link.queue_weights is self.queue_weights:
                link.n_fits, link.N = self.n_fits, self.N

    @property
    def last_gmm(self):
        """The mixture of the last training step (:class:`mixnorm.GMM`, components sorted
        by weight, variances with eps), or None; made when first asked for."""
        if self._last_fit is None:
            return None
        g, stats, eps = self._last_fit
        if g is None:
            g = _gmm.GMM(stats.weights, stats.means, stats.variances + eps)
            self._last_fit = (g, stats, eps)
        return g

    @property
    def effective_components(self):
        """K', the number of components of the last fit (None before any)."""
        g = self.last_gmm
        return None if g is None else g.n_components

    def _queue_changed(self):
        """Mark the queue as changed: the cached inference mixture is rebuilt."""
        self._queue_state['version'] = self._queue_state.get('version', 0) + 1

    def _ones(self, shape, dtype):
        """A device array of ones (cached: the same shape recurs every step)."""
        key = (tuple(shape), numpy.dtype(dtype).str, type(self.queue_weights))
        a = self._ones_cache.get(key)
        if a is None:
            xp = _arrays.get_array_module(self.queue_weights)
            if len(self._ones_cache) > 8:
                self._ones_cache.clear()
            a = self._ones_cache[key] = xp.ones(shape, dtype)
        return a

    def start_finetuning(self):
        """Reset ``N``, the count of fine-tuning batches, as BN's ``start_finetuning``."""
        self.N = 0
        self._share_counters()

    def _start_queue_from_running(self):
        """The queue as one batch of a single Gaussian with the running mean and
        variance: queue inference then equals BN's inference with them."""
        self.queue_weights[...] = 0
        self.queue_means[...] = 0
        self.queue_vars[...] = 1
        self.queue_weights[0, 0] = 1
        self.queue_means[0, 0] = self.avg_mean.reshape(-1)
        self.queue_vars[0, 0] = self.avg_var.reshape(-1)
        self.n_fits = 1
        self._queue_changed()
        self._share_counters()

    def _running_from_queue(self):
        """Running averages for an MN snapshot saved without them: the mean and the
        variance of the queue's inference mixture (Eq. 39 weights)."""
        if self.n_fits == 0:
            return
        g, _ = self.queue_mixture()
        kernels.running_update(g.weights, g.means, g.variances, self.avg_mean.reshape(-1),
                               self.avg_var.reshape(-1), 0.0, 1.0)

    # ------------------------------------------------------------------ state across
    def serialize(self, serializer):
        """BN's serialization, plus the queue.  Loading also takes a BN snapshot (no
        queue: it starts from the running averages) and an MN snapshot saved without
        running averages (they are taken from its queue)."""
        if not isinstance(serializer, chainer.serializer.Deserializer):
            return super().serialize(serializer)
        if self.path is None and getattr(serializer, 'path', '').strip('/'):
            self.path = serializer.path.strip('/')      # the link's place in the snapshot
        self._check_snapshot(serializer)
        missing = [name for name in self._persistent if not _stored(serializer, name)]
        bn = 'queue_weights' in missing and 'avg_mean' not in missing
        old_mn = 'avg_mean' in missing and 'queue_weights' not in missing
        if not (bn or old_mn):
            super().serialize(serializer)       # missing keys: the serializer's error
        else:
            d = self.__dict__
            for name in self._params:
                param = d[name]
                data = serializer(name, param.array)
                if param.array is None and data is not None:
                    param.initialize(data.shape)
                    param.array[...] = param.device.send(data)
            for name in self._persistent:
                if name not in missing:
                    d[name] = serializer(name, d[name])
        if self.size is None:
            loaded = self.avg_mean if self.avg_mean is not None else (
                None if self.queue_means is None else self.queue_means[0, 0])
            if loaded is not None:
                self._initialize(loaded.shape)
        self._queue_changed()
        if bn:
            self._start_queue_from_running()
        elif old_mn:
            self._running_from_queue()

    def _check_snapshot(self, serializer):
        """A snapshot of another K, T or size is an error naming the layer and the fix."""
        if self.size is None:
            return
        for name, expected in self._expected_shapes().items():
            try:
                got = serializer(name, None)
            except Exception:       # missing key: handled by serialize
                continue
            if got is not None and tuple(got.shape) != tuple(expected):
                raise ValueError(
                    '%s: the snapshot\'s %s has shape %s but this link expects %s '
                    '(size=%s, n_components=%d, queue_length=%d, affine=%r); build the '
                    'link with the settings the snapshot was saved with'
                    % (self._label(), name, tuple(got.shape), tuple(expected),
                       _size_text(self.param_shape), self.n_components,
                       self.queue_length, self.affine))

    def copyparams(self, link, copy_persistent=True):
        """Copy parameters (and persistent values) from ``link``, an MN link or a BN
        (any link with BN's ``avg_mean``/``avg_var``/``N`` and no queue): from a BN,
        what both links have (see :meth:`take_batch_normalization_state`)."""
        if isinstance(link, MixtureNormalization):
            super().copyparams(link, copy_persistent)
            self._queue_changed()
            return
        self.take_batch_normalization_state(link, running=copy_persistent)

    def take_batch_normalization_state(self, bn, parameters=True, running=True,
                                       start_queue=True):
        """Take a BN's state: gamma and beta where both links have them
        (``parameters``), and (``running``) the running averages and ``N``, with the
        queue started from them (``start_queue``), so that this link's inference is the
        BN's."""
        src = bn.__dict__
        avg_mean = src.get('avg_mean')
        if self.size is None and avg_mean is not None:
            self._initialize(avg_mean.shape)
        if parameters:
            for name in self._params:
                if src.get(name) is not None:
                    self.__dict__[name].copydata(src[name])
        if running and avg_mean is not None:
            backend.copyto(self.avg_mean, avg_mean)
            backend.copyto(self.avg_var, src['avg_var'])
            self.N = int(src.get('N', 0))
            if start_queue:
                self._start_queue_from_running()

    def settings(self):
        """The constructor arguments that build a link like this one (BN's and MN's)."""
        out = dict(size=self.param_shape, decay=self.decay, eps=self.eps, dtype=self._dtype,
                   use_gamma=self.gamma is not None, use_beta=self.beta is not None,
                   axis=self.axis)
        out.update({name: getattr(self, name) for name in _settings.SETTINGS
                    if name not in out})
        return out

    @property
    def printable_specs(self):
        yield 'size', _size_text(self.param_shape)
        for name in ('decay', 'eps', 'n_components', 'em_iters', 'inference'):
            yield name, getattr(self, name)
        yield 'dtype', self._dtype
        yield 'use_gamma', self.gamma is not None
        yield 'use_beta', self.beta is not None

    # ------------------------------------------------------------------ layout
    def _reduce_axes(self, ndim):
        """The axes normalized over, as BN computes them."""
        if self.axis is not None:
            return self.axis
        n_kept = 1 if self.param_shape is None else len(self.param_shape)
        return (0,) + tuple(range(1 + n_kept, ndim))

    def _kept_axes(self, ndim):
        reduce = self._reduce_axes(ndim)
        return tuple(i for i in range(ndim) if i not in reduce)

    def _input_error(self, x):
        """The :class:`InvalidInput` for an ``x`` this link cannot normalize (dtype,
        axes, feature shape, no points), or None.  Changes nothing."""
        if x.dtype.kind != 'f':
            return InvalidInput('%s expects floating-point input, got %s'
                                % (self._label(), x.dtype))
        reduce = self._reduce_axes(x.ndim)
        kept = self._kept_axes(x.ndim)
        expected = self.param_shape
        if self.axis is None and expected in (None, (self.size,)):
            size = x.shape[1] if expected is None and x.ndim >= 2 else self.size
            if x.ndim < 2 or x.shape[1] != size:
                return InvalidInput('%s expects input of shape (N, %s) or (N, %s, ...), '
                                    'got %s' % (self._label(), size, size, tuple(x.shape)))
        elif max(reduce) >= x.ndim or (
                expected is not None and tuple(x.shape[i] for i in kept) != expected):
            return InvalidInput(
                '%s normalizes over axis=%r with features of shape %s; input of shape %s '
                'has %s' % (self._label(), reduce, _size_text(expected), tuple(x.shape),
                            'no axis %d' % max(reduce) if max(reduce) >= x.ndim else
                            'features %s' % (tuple(x.shape[i] for i in kept),)))
        if x.size == 0:
            return InvalidInput('%s got an empty batch: input of shape %s has no points'
                                % (self._label(), tuple(x.shape)))
        return None

    def _check_input(self, x):
        """Validate ``x``, taking the feature shape from it when the link was built
        without ``size``; raises :class:`InvalidInput`."""
        error = self._input_error(x)
        if error is not None:
            raise error
        if self.size is None:
            self._initialize(tuple(x.shape[i] for i in self._kept_axes(x.ndim)))

    def _view(self, x):
        """``x`` with its D features on axis 1, (N', D, *S'), as the mixture functions
        take it, and the function that maps a result back to ``x``'s layout."""
        ndim, shape = x.ndim, x.shape
        kept = self._kept_axes(ndim)
        if kept == (1,):
            return x, _same
        if kept == tuple(range(1, 1 + len(kept))):      # features right after axis 0
            y = chainer.functions.reshape(x, (shape[0], self.size) + shape[1 + len(kept):])
            return y, functools.partial(chainer.functions.reshape, shape=shape)
        order = self._reduce_axes(ndim) + kept
        moved = chainer.functions.transpose(x, order)
        back = tuple(int(i) for i in numpy.argsort(order))
        return (chainer.functions.reshape(moved, (-1, self.size)),
                lambda y: chainer.functions.transpose(
                    chainer.functions.reshape(y, moved.shape), back))

    def _points(self, x, scratch=False):
        """The (n, D) points of ``x`` in the layout of :meth:`_view`.  ``scratch``: on
        NumPy they may be written into this thread's scratch buffer (reused by the next
        call with ``scratch``; for a fit, which keeps nothing of its points), which saves
        the page faults of fresh memory."""
        if x.ndim == 2:
            return x
        xp = _arrays.get_array_module(x)
        if xp is not numpy:
            return xp.ascontiguousarray(xp.moveaxis(x, 1, -1)).reshape(-1, self.size)
        # on NumPy a few samples and channels at a time: each block's transposition
        # stays in cache (about 1.5x faster than one transposing copy of the whole array)
        N, C = x.shape[0], x.shape[1]
        x3 = x.reshape(N, C, -1)
        shape = (N, x3.shape[2], C)
        out = _scratch(shape, x.dtype) if scratch else numpy.empty(shape, x.dtype)
        step = max(1, _POINTS_BLOCK // max(C * shape[1], 1))
        for a0 in range(0, N, step):
            for c0 in range(0, C, _POINTS_CHANNELS):
                out[a0:a0 + step, :, c0:c0 + _POINTS_CHANNELS] = \
                    x3[a0:a0 + step, c0:c0 + _POINTS_CHANNELS].transpose(0, 2, 1)
        return out.reshape(-1, self.size)

    def _flat_affine(self):
        """gamma and beta shaped for the mixture functions: (D,) or (K, D)."""
        shape = (self.size,) if self.affine == 'channel' else (self.n_components, self.size)
        return tuple(None if p is None else
                     (p if p.shape == shape else chainer.functions.reshape(p, shape))
                     for p in (self.gamma, self.beta))

    def _bn_affine(self):
        """gamma and beta as BN's functions take them: ones and zeros where absent."""
        xp, shape = self.xp, self.param_shape
        with chainer.using_device(self.device):
            gamma = self.gamma if self.gamma is not None \
                else xp.ones(shape, dtype=self._dtype)
            beta = self.beta if self.beta is not None \
                else xp.zeros(shape, dtype=self._dtype)
        return gamma, beta

    # ------------------------------------------------------------------ helpers
    def _collectives(self):
        """The reducer of this call's collectives (None: one process)."""
        return self._reducer

    def _where(self):
        """The link's path in its model (set by :func:`mixnorm.name_layers`, which
        ``replace_batch_normalization`` calls), else its name."""
        return self.path or self.name or '(unnamed)'

    def _label(self):
        return 'MixtureNormalization %r' % (self._where(),)

    def _fit_seed(self, index):
        return (self.seed * 1000003 + index) % 2 ** 32

    def _fit(self, points, index):
        """The batch's mixture, components sorted by weight (heaviest first, as
        :func:`mixnorm.gmm.fit_gmm` returns them), and the posteriors (n, K') of the
        points in that order."""
        try:
            return _gmm.fit_gmm(
                points, self.n_components, self.kmeans_iters, self.gmm_em_iters,
                fit_fraction=self.fit_fraction, min_weight=self.min_weight,
                min_count=self.min_count, eps=self.eps, seed=self._fit_seed(index),
                return_responsibilities=True, **self._fit_options())
        except ValueError as e:
            raise ValueError('%s, input with %d points in R^%d: %s'
                             % (self._label(), points.shape[0], points.shape[1], e)) from e

    def _fit_options(self):
        reducer = self._collectives()
        return {} if reducer is None else {'reducer': reducer}

    def _push(self, weights, means, variances, running=None):
        """Enqueue the statistics of this batch (K' <= K components; the rest weight 0);
        with ``running`` = (n, decay) also update BN's running averages from them (as
        BN's update of the pooled moments, :func:`mixnorm.kernels.running_update`, the
        variance unbiased by n / (n - 1), ``n`` this process's points as ChainerMN's BN
        counts them), in the same kernel."""
        slot = self.n_fits % self.queue_length
        if running is None:
            kernels.mn_push(weights, means, variances, self.queue_weights,
                            self.queue_means, self.queue_vars, slot)    # float64 queue
        else:
            n, decay = running
            kernels.mn_record(weights, means, variances, self.queue_weights,
                              self.queue_means, self.queue_vars, slot,
                              self.avg_mean.reshape(-1), self.avg_var.reshape(-1), decay,
                              n / max(n - 1., 1.))      # unbiased, as BN
        self.n_fits += 1
        self._queue_changed()
        self._share_counters()

    def queue_mixture(self):
        """The inference mixture of Eq. 38-39 over the m <= T queued batches.

        Returns ``(gmm, lam)``: a :class:`mixnorm.GMM` over m*K components with weights
        tau_t * lambda_k^t, the queued means and variances (sigma^2, without eps), and
        the per-component lambda_k^t (m*K,), 0 for pruned slots.  Oldest batch first.
        """
        self._check_has_statistics()
        xp = _arrays.get_array_module(self.queue_weights)
        T, K, C = self.queue_means.shape
        m = min(self.n_fits, T)
        # slots in chronological order, oldest first
        slots = [(self.n_fits - m + t) % T for t in range(m)]
        tau = self.decay ** numpy.arange(m - 1, -1, -1, dtype=numpy.float64)
        tau *= (1 - self.decay) / (1 - self.decay ** m)
        lam = self.queue_weights[slots]                                  # (m, K)
        weights = (xp.asarray(tau)[:, None] * lam).reshape(-1)
        means = self.queue_means[slots].reshape(-1, C)
        variances = self.queue_vars[slots].reshape(-1, C)
        return _gmm.GMM(weights, means, variances), lam.reshape(-1)

    # ------------------------------------------------------------------ forward
    def forward(self, x, **kwargs):
        """forward(self, x, finetune=False)

        Training: normalize with the batch's mixture and update the queue and the
        running averages (``finetune=True``: population statistics, as BN).
        Inference: the queue's mixture (Eq. 38-39) or, with ``inference='running'``,
        the running averages."""
        finetune, = argument.parse_kwargs(
            kwargs, ('finetune', False),
            test='test argument is not supported anymore. Use chainer.using_config')
        x_arr = _raw(x)
        self._check_input(x_arr)
        if chainer.config.train:
            decay = self._running_decay(finetune)
            if self._is_batch_normalization():
                return self._forward_bn(x, x_arr, decay)
            return self._forward_train(x, decay)
        if self.inference == 'running':
            gamma, beta = self._bn_affine()
            return _bn.fixed_batch_normalization(
                x, gamma, beta, self.avg_mean, self.avg_var, self.eps,
                axis=self._reduce_axes(x_arr.ndim))
        return self._forward_test(x)

    def _running_decay(self, finetune):
        if not finetune:
            return self.decay
        if not chainer.config.in_recomputing:
            self.N += 1
            self._share_counters()
        return 1. - 1. / max(self.N, 1)

    def _is_batch_normalization(self):
        """One component, BN's inference, one process: Chainer's BN function."""
        return self.n_components == 1 and self.inference == 'running' \
            and self._collectives() is None

    def _forward_bn(self, x, x_arr, decay):
        """K = 1: ``F.batch_normalization``'s node, which also updates the running
        averages; its batch mean and variance enter the queue."""
        recomputing = chainer.config.in_recomputing
        node = _bn.BatchNormalization(
            self.eps, None if recomputing else self.avg_mean,
            None if recomputing else self.avg_var, decay,
            axis=self._reduce_axes(x_arr.ndim))
        y, = node.apply((x,) + self._bn_affine())
        if recomputing:
            return y
        xp = _arrays.get_array_module(node.mean)
        mean = node.mean.reshape(1, -1)
        var = node.var if node.var is not None else node.inv_std ** -2 - self.eps
        var = var.reshape(1, -1)
        if functions._checks_on(xp) and not bool(xp.isfinite(var).all()):
            raise self._non_finite_error(x_arr, var.dtype)
        weight = self._ones((1,), mean.dtype)
        self._last_fit = (None, functions.BatchStats(weight, mean, var), self.eps)
        self._push(weight, mean, var)
        return y

    def _non_finite_error(self, x, dtype):
        label = '%s, input %s: ' % (self._label(), tuple(x.shape))
        try:
            _gmm.check_finite(x.reshape(x.shape[0], -1), name='the input')
        except ValueError as e:
            return ValueError(label + str(e))
        xp = _arrays.get_array_module(x)
        return ValueError(
            label + 'the input is finite but its second moments overflow %s (max |x| = '
            '%g): rescale the activations or compute in float64'
            % (numpy.dtype(dtype).name, float(xp.abs(x).max())))

    def _posteriors(self, x):
        """(resp, gmm, fit index) of the points of ``x`` (the layout of :meth:`_view`);
        gmm is None for K = 1 (no fit, and the (n, D) points are not formed)."""
        n = x.size // self.size
        if chainer.config.in_recomputing:
            index, resp = self._pending.pop() if self._pending else (self.n_fits - 1, None)
            if resp is not None and resp.shape[0] != n:
                raise ValueError('%s: the recomputed forward has %d points but the first '
                                 'forward had %d' % (self._label(), n, resp.shape[0]))
            if resp is not None or self.n_components == 1:
                return resp, None, index
            # no posteriors kept: refit with the seed of the last fit (same input,
            # same posteriors), without touching the state
            g, resp = self._fit(self._points(x, scratch=True), max(index, 0))
            return resp, g, index
        if self.n_components == 1:
            return None, None, self.n_fits
        g, resp = self._fit(self._points(x, scratch=True), self.n_fits)
        return resp, g, self.n_fits

    def _forward_train(self, x, decay):
        view, back = self._view(x)
        view_arr = _raw(view)
        xp = _arrays.get_array_module(view_arr)
        n = view_arr.size // self.size
        if n == 1:
            warnings.warn(
                '%s received a batch with a single point (one sample, no other position '
                'along the normalized axes): its output is zero. Is chainer.config.train '
                'True during evaluation, or is the last batch of a non-repeating iterator '
                'of size 1?' % self._label(), UserWarning)
        resp, g, index = self._posteriors(view_arr)
        if resp is None:        # one component: nu = 1 everywhere
            resp = self._ones((n, 1), numpy.float32
                              if view_arr.dtype == numpy.float16 else view_arr.dtype)
        gamma, beta = self._flat_affine()
        if self.affine == 'component':
            k = resp.shape[1]
            gamma = gamma[:k] if gamma is not None else None
            beta = beta[:k] if beta is not None else None
        try:
            y, stats = functions.mixture_normalization(
                view, gamma, beta, resp, self.eps, self.lambda_scaling, return_stats=True,
                reducer=self._collectives())
        except ValueError as e:
            raise ValueError('%s, input %s: %s' % (self._label(), tuple(_raw(x).shape), e)) \
                from e
        if chainer.config.in_recomputing:
            return back(y)               # the first forward already updated the state
        if getattr(chainer.config, '_will_recompute', False):
            self._pending.append((index, resp))
            del self._pending[:-MAX_PENDING_RECOMPUTES]
        lam, mu, var = stats
        self._last_fit = (g, stats, self.eps)
        if resp.shape[1] == 1 < self.n_components and not self._said_fallback:
            self._said_fallback = True
            warnings.warn(
                '%s kept K\' = 1 of its %d components for a batch of %d points (a '
                'component needs min_count=%g effective points and weight min_weight=%g): '
                'for such batches it normalizes as BN.  Its effective_components tells K\' '
                'of each fit (this notice is given once per layer).'
                % (self._label(), self.n_components, n, self.min_count,
                   self.min_weight), UserWarning)
        self._push(lam, mu, var, running=(n, decay))
        if self.inference != 'running' and xp is not numpy:
            # ready for inference (one kernel on a device); on NumPy, where it would be
            # host work in every step, the first inference forward builds it
            self._inference_mixture(stats.means.dtype)
        return back(y)

    def _inference_mixture(self, dtype):
        """The queue's inference mixture (Eq. 38-39) as
        :func:`mixnorm.functions.queue_mixture_normalization` takes it, built on the device
        in one kernel when the queue has changed since the last build and cached (shared
        with the links that share the queue)."""
        self._check_has_statistics()
        lambda_scale = bool(self.lambda_scaling and self.inference == 'consistent')
        state = self._queue_state
        key = (id(self.queue_means), state.get('version', 0), self.n_fits,
               numpy.dtype(dtype).str, self.eps, self.decay, lambda_scale)
        if state.get('key') != key:
            state['mixture'] = kernels.mn_queue_mixture(
                self.queue_weights, self.queue_means, self.queue_vars, self.n_fits,
                self.decay, self.eps, lambda_scale, dtype)
            state['key'] = key
        return state['mixture']

    def _check_has_statistics(self):
        if self.n_fits == 0:
            raise RuntimeError(
                '%s has no statistics yet: run at least one training forward pass '
                '(chainer.config.train = True) before inference, or load a trained '
                'snapshot (an MN or a BN snapshot), or use inference=\'running\'.'
                % self._label())

    def _forward_test(self, x):
        view, back = self._view(x)
        view_arr = _raw(view)
        dtype = numpy.float64 if view_arr.dtype == numpy.float64 else numpy.float32
        mixture = self._inference_mixture(dtype)
        gamma, beta = self._flat_affine()
        try:
            y = functions.queue_mixture_normalization(
                view, gamma, beta, mixture, self.n_components, eps=self.eps)
        except ValueError as e:
            raise ValueError('%s at inference, input %s: %s'
                             % (self._label(), tuple(_raw(x).shape), e)) from e
        return back(y)


def _same(y):
    return y


_scratch_space = threading.local()


def _scratch(shape, dtype):
    """An uninitialized NumPy array of ``shape`` in this thread's scratch buffer (grown
    as needed, one per thread): the next call reuses the memory."""
    size = int(numpy.prod(shape, dtype=numpy.int64)) * numpy.dtype(dtype).itemsize
    buf = getattr(_scratch_space, 'buf', None)
    if buf is None or buf.size < size:
        buf = _scratch_space.buf = numpy.empty(max(size, 1), numpy.uint8)
    return buf[:size].view(dtype).reshape(shape)


def _stored(serializer, name):
    """Whether a deserializer holds ``name`` (a missing key raises KeyError)."""
    try:
        serializer(name, None)
    except KeyError:
        return False
    return True


def _size_text(shape):
    if shape is None:
        return 'None'
    return str(shape[0]) if len(shape) == 1 else str(shape)


def _check_size(size, caller):
    """BN's ``size``: an int, a tuple of ints (the feature shape), or None (lazy)."""
    if size is None:
        return None
    shape = tuple(size) if isinstance(size, (tuple, list)) else (size,)
    if not all(_is_int(s) and s >= 1 for s in shape) or isinstance(size, (str, dict)):
        raise _settings.invalid(
            caller, 'size', 'a positive int, a tuple of positive ints (the shape of the '
            'features, as BatchNormalization\'s size) or None (taken from the first input)',
            size)
    return tuple(int(s) for s in shape)


def _check_positional_decay(decay, caller):
    """An int >= 1 where ``decay`` stands is code written for MN's former signature,
    which took ``n_components`` second: say so."""
    if _is_int(decay) and decay >= 1:
        raise _settings.InvalidParameter(
            "The 'decay' parameter of %s %s. Got %r instead: %s takes "
            "BatchNormalization's arguments in BN's positions (size, decay, eps, ...) and "
            "its own settings by keyword only; pass n_components=%d"
            % (caller, _settings.SETTINGS['decay'].requirement(), decay, caller, decay))


def _check_axis(axis, caller):
    """BN's ``axis``: an int or a sorted tuple of distinct non-negative ints."""
    if axis is None:
        return None
    axis = (axis,) if _is_int(axis) else axis
    if not isinstance(axis, (tuple, list)) or not axis or \
            not all(_is_int(a) and a >= 0 for a in axis) or \
            list(axis) != sorted(set(axis)):
        raise _settings.invalid(
            caller, 'axis', 'None, an int or a tuple of ints in ascending order (the axes '
            'normalized over, as BatchNormalization\'s axis)', axis)
    return tuple(int(a) for a in axis)


def _initializer(initial, default, dtype):
    """A Chainer initializer for ``initial`` (None, a scalar, an array or an
    initializer), as BN builds ``initial_gamma``/``initial_beta``."""
    init = initializers._get_initializer(default if initial is None else initial)
    init.dtype = dtype
    return init
