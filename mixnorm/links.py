"""``MixtureNormalization``: the drop-in replacement for ``chainer.links.BatchNormalization``.

The link holds the state (affine parameters, the inference queue, counters and their
serialization) and calls the math through a small public interface:
:func:`mixnorm.gmm.fit_gmm` and :func:`mixnorm.gmm.responsibilities` for the mixture,
:func:`mixnorm.functions.mixture_normalization` (training, which returns the batch's
:class:`~mixnorm.functions.BatchStats`) and
:func:`mixnorm.functions.fixed_mixture_normalization` (inference), as Chainer splits
``links/normalization/batch_normalization.py`` from its function nodes.
"""
from mixnorm import _compat  # noqa: F401

import functools
import numbers

import numpy

import chainer
from chainer import initializers
from chainer import variable

from mixnorm import _arrays
from mixnorm import functions
from mixnorm import gmm as _gmm
from mixnorm import settings as _settings

#: The recomputed forwards (``F.forget``) a link remembers the posteriors of.
MAX_PENDING_RECOMPUTES = 16


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


class MixtureNormalization(chainer.Link):
    """Mixture Normalization (paper Sec. 3.2), a drop-in for ``L.BatchNormalization``.

    Training (``chainer.config.train``): fits a K-component diagonal GMM to the
    n = N*H*W points in R^C of the batch (K-means++ seeding, then the paper's
    "EM iter." ``em_iters`` split evenly into K-means and EM iterations), prunes
    components lighter than ``min_weight`` or with fewer than ``min_count`` effective
    points, and normalizes with Eq. 34-36 using the posteriors as constants; the fitted
    statistics (lambda_k, mu_k, sigma^2_k) enter a queue of the last ``queue_length``
    = T batches.

    Inference: Eq. 38-39 -- every point is standardized by each of the T*K queued
    components and the results are mixed by the posteriors of the mixture with weights
    tau_t * lambda_k^t (tau_t = zeta^(T-t-1) (1-zeta) / (1-zeta^T), zeta = ``decay``;
    t = T-1 is the newest batch).  While the queue is not yet full the tau of the m
    entries present are renormalised over those m.  ``inference='consistent'``
    (default) also applies the factor 1/sqrt(lambda_k^t) of Eq. 34 (when
    ``lambda_scaling``), which Eq. 38 omits: it is the only choice under which
    inference with T = 1 reproduces the training output of the same batch.
    ``inference='paper'`` is Eq. 38 exactly as printed: no 1/sqrt(lambda) factor, and
    sigma_k^t = sqrt(sigma^2 + eps).  Inference before any training step raises
    ``RuntimeError``.

    ``lambda_scaling=False`` drops 1/sqrt(lambda_k) (Eq. 34) in training and
    inference: each component's contribution then has unit variance regardless of its
    weight.

    Affine: ``'channel'`` (default) y = gamma * xhat + beta per channel, as BN;
    ``'component'`` the paper's Eq. 37: beta_k shifts the mean and gamma_k scales the
    variance of component k (parameters (K, C), indexed by the rank of the component's
    weight in the batch, heaviest first, since fitted components have no identity across
    batches); ``None`` no parameters.  As in BN, ``use_gamma``/``use_beta`` drop either
    parameter and ``initial_gamma``/``initial_beta`` (a scalar, an array or a Chainer
    initializer) set their initial values.

    BatchNormalization's arguments: ``size`` (an int, ``(C,)``, or None to take C from
    the first input, as BN), ``eps``, ``dtype`` (parameters are float32 under
    ``chainer.mixed16``, as BN's; statistics are computed in float32 for float16
    input), ``decay`` (here zeta of Eq. 39), ``use_gamma``, ``use_beta``,
    ``initial_gamma``, ``initial_beta``, and ``axis`` where it names the channel layout
    ((0,) or (0, 2, 3, ...)).  Another ``axis``, and ``initial_avg_mean``/
    ``initial_avg_var`` (MN keeps no running averages), raise ``ValueError`` saying
    what to use instead.

    Recomputation (``F.forget``, ``chainer.config.in_recomputing``): the recomputed
    forward reuses the posteriors of the first forward; it neither fits again nor
    changes the queue, ``n_fits`` or the seed counter, as BN skips its running-average
    update.  The posteriors (n, K) are kept between the two forwards.

    Readable state: ``effective_components`` (K' of the last fit), ``last_gmm``
    (the last :class:`mixnorm.GMM`, components sorted by weight), ``n_fits``.

    MN's settings (every argument above but BN's) are defined, with their ranges and
    defaults, in :data:`mixnorm.settings.SETTINGS`; a value out of range raises
    ``ValueError`` naming the argument, its range and its meaning.
    """

    def __init__(self, size=None, n_components=3, em_iters=2, *, eps=2e-5, decay=0.9,
                 queue_length=10, fit_fraction=1.0, min_weight=0.01, min_count=16,
                 affine='channel', lambda_scaling=True, inference='consistent',
                 dtype=None, seed=None, use_gamma=True,
                 use_beta=True, initial_gamma=None, initial_beta=None, axis=None,
                 initial_avg_mean=None, initial_avg_var=None):
        super().__init__()
        size = _check_size(size)
        setting = functools.partial(_settings.check, caller=type(self).__name__)
        self.n_components = setting('n_components', n_components)
        self.em_iters = setting('em_iters', em_iters)
        self.kmeans_iters, self.gmm_em_iters = _gmm.split_em_iters(self.em_iters)
        self.eps = setting('eps', eps)
        self.decay = setting('decay', decay)
        self.queue_length = setting('queue_length', queue_length)
        self.fit_fraction = setting('fit_fraction', fit_fraction)
        self.min_weight = setting('min_weight', min_weight)
        self.min_count = setting('min_count', min_count)
        self.affine = setting('affine', affine)
        self.lambda_scaling = setting('lambda_scaling', lambda_scaling)
        self.inference = setting('inference', inference)
        seed = setting('seed', seed)
        self.axis = _check_axis(axis)
        _check_bn_only_arguments(initial_avg_mean, initial_avg_var)
        if affine is None and (initial_gamma is not None or initial_beta is not None):
            raise ValueError('initial_gamma/initial_beta need an affine: affine=None has '
                             "no parameters (use affine='channel' or 'component')")
        self._dtype = chainer.get_dtype(dtype, map_mixed16=numpy.float32)
        self.effective_components = None
        self.last_gmm = None
        self._pending = []          # (fit index, posteriors) for recomputed forwards
        self._reducer = None        # collectives of a process group (distributed.py)

        self.queue_weights = None
        self.queue_means = None
        self.queue_vars = None
        self.n_fits = 0
        self.seed = int(numpy.random.randint(2 ** 31)) if seed is None else int(seed)
        for name in ('queue_weights', 'queue_means', 'queue_vars', 'n_fits', 'seed'):
            self.register_persistent(name)

        with self.init_scope():
            self.gamma = self.beta = None
            if affine is not None:
                if use_gamma:
                    self.gamma = variable.Parameter(
                        _initializer(initial_gamma, 1, self._dtype))
                if use_beta:
                    self.beta = variable.Parameter(
                        _initializer(initial_beta, 0, self._dtype))
        self.size = None
        if size is not None:
            self._initialize(size)

    # ------------------------------------------------------------------ state
    def _initialize(self, size):
        """Create the queue and the parameters for ``size`` channels."""
        self.size = int(size)
        T, K, C = self.queue_length, self.n_components, self.size
        if self.queue_weights is None:
            dev = self.device
            self.queue_weights = dev.send(numpy.zeros((T, K), dtype=numpy.float64))
            self.queue_means = dev.send(numpy.zeros((T, K, C), dtype=numpy.float64))
            self.queue_vars = dev.send(numpy.ones((T, K, C), dtype=numpy.float64))
        shape = (C,) if self.affine == 'channel' else (K, C)
        for p in (self.gamma, self.beta):
            if p is not None and p.array is None:
                p.initialize(shape)

    def _expected_shapes(self):
        T, K, C = self.queue_length, self.n_components, self.size
        shapes = {'queue_weights': (T, K), 'queue_means': (T, K, C),
                  'queue_vars': (T, K, C)}
        pshape = (C,) if self.affine == 'channel' else (K, C)
        for name in ('gamma', 'beta'):
            if getattr(self, name) is not None:
                shapes[name] = pshape
        return shapes

    def serialize(self, serializer):
        if isinstance(serializer, chainer.serializer.Deserializer):
            self._check_snapshot(serializer)
        super().serialize(serializer)
        if self.size is None and self.queue_means is not None:   # lazily sized, loaded
            self._initialize(self.queue_means.shape[2])

    def _check_snapshot(self, serializer):
        """A snapshot of another K, T or C is an error naming the layer and the fix."""
        if self.size is None:
            return
        for name, expected in self._expected_shapes().items():
            try:
                got = serializer(name, None)
            except Exception:       # missing key: the deserializer's own error follows
                continue
            if got is not None and tuple(got.shape) != tuple(expected):
                raise ValueError(
                    '%s: the snapshot\'s %s has shape %s but this link expects %s '
                    '(size=%d, n_components=%d, queue_length=%d, affine=%r); build the '
                    'link with the settings the snapshot was saved with'
                    % (self._label(), name, tuple(got.shape), tuple(expected), self.size,
                       self.n_components, self.queue_length, self.affine))

    # ------------------------------------------------------------------ helpers
    def _check_input(self, x):
        """Validate ``x`` (N, C, *S), taking C from it when the link was built with
        ``size=None``; return the number of points n.  Raises ``ValueError``."""
        if self.size is None and x.ndim >= 2:
            self._initialize(x.shape[1])
        error = self._input_error(x)
        if error is not None:
            raise error
        return x.size // self.size

    def _input_error(self, x):
        """The ``ValueError`` for an ``x`` this link cannot normalize (shape, channel
        count, axis, dtype, no points), or None.  Changes nothing."""
        size = x.shape[1] if self.size is None and x.ndim >= 2 else self.size
        if x.ndim < 2 or x.shape[1] != size:
            return ValueError('%s expects input of shape (N, %s) or (N, %s, ...), got %s'
                              % (self._label(), size, size, tuple(x.shape)))
        if self.axis is not None and len(self.axis) != x.ndim - 1:
            return ValueError('%s was built with axis=%r but got %d-D input %s'
                              % (self._label(), self.axis, x.ndim, tuple(x.shape)))
        if x.dtype.kind != 'f':
            return ValueError('%s expects floating-point input, got %s'
                              % (self._label(), x.dtype))
        if x.size == 0:
            return ValueError('%s got an empty batch: input of shape %s has no points'
                              % (self._label(), tuple(x.shape)))
        return None

    def _collectives(self):
        """The reducer of this call's collectives (None: one process)."""
        return self._reducer

    def _points(self, x):
        """Activations (N, C, *S) as the (N*prod(S), C) points the mixture is fitted to."""
        self._check_input(x)
        if x.ndim == 2:
            return x
        xp = _arrays.get_array_module(x)
        return xp.ascontiguousarray(xp.moveaxis(x, 1, -1)).reshape(-1, self.size)

    def _label(self):
        return 'MixtureNormalization %r' % (self.name or '(unnamed)',)

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

    def _push(self, weights, means, variances):
        """Enqueue the statistics of this batch (K' <= K components; the rest weight 0)."""
        slot = self.n_fits % self.queue_length
        k = int(weights.shape[0])
        if k < self.n_components:           # pruned components: weight 0
            self.queue_weights[slot] = 0
            self.queue_means[slot] = 0
            self.queue_vars[slot] = 1
        self.queue_weights[slot, :k] = weights          # cast to float64 on assignment
        self.queue_means[slot, :k] = means
        self.queue_vars[slot, :k] = variances
        self.n_fits += 1

    def queue_mixture(self):
        """The inference mixture of Eq. 38-39 over the m <= T queued batches.

        Returns ``(gmm, lam)``: a :class:`mixnorm.GMM` over m*K components with weights
        tau_t * lambda_k^t, the queued means and variances (sigma^2, without eps), and
        the per-component lambda_k^t (m*K,), 0 for pruned slots.  Oldest batch first.
        """
        if self.n_fits == 0:
            raise RuntimeError(
                '%s has no statistics yet: run at least one training forward pass '
                '(chainer.config.train = True) before inference, or load a trained '
                'snapshot.' % self._label())
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
    def forward(self, x):
        x_arr = x.array if isinstance(x, chainer.Variable) else x
        if chainer.config.train:
            return self._forward_train(x, x_arr)
        return self._forward_test(x, self._points(x_arr))

    def _posteriors(self, x_arr):
        """(resp, gmm, fit index) of this batch; gmm is None for K = 1 (no fit)."""
        n = self._check_input(x_arr)
        if chainer.config.in_recomputing:
            index, resp = self._pending.pop() if self._pending else (self.n_fits - 1, None)
            if resp is not None and resp.shape[0] != n:
                raise ValueError('%s: the recomputed forward has %d points but the first '
                                 'forward had %d' % (self._label(), n, resp.shape[0]))
            if resp is not None or self.n_components == 1:
                return resp, None, index
            # no posteriors kept: refit with the seed of the last fit (same input,
            # same posteriors), without touching the state
            g, resp = self._fit(self._points(x_arr), max(index, 0))
            return resp, g, index
        if self.n_components == 1:
            return None, None, self.n_fits
        g, resp = self._fit(self._points(x_arr), self.n_fits)
        return resp, g, self.n_fits

    def _forward_train(self, x, x_arr):
        xp = _arrays.get_array_module(x_arr)
        resp, g, index = self._posteriors(x_arr)
        if resp is None:        # one component: nu = 1 everywhere; this is exactly BN
            resp = xp.ones((self._check_input(x_arr), 1), dtype=numpy.float32
                           if x_arr.dtype == numpy.float16 else x_arr.dtype)
        gamma, beta = self.gamma, self.beta
        if self.affine == 'component':
            k = resp.shape[1]
            gamma = gamma[:k] if gamma is not None else None
            beta = beta[:k] if beta is not None else None
        try:
            y, stats = functions.mixture_normalization(
                x, gamma, beta, resp, self.eps, self.lambda_scaling, return_stats=True,
                reducer=self._collectives())
        except ValueError as e:
            raise ValueError('%s, input %s: %s' % (self._label(), tuple(x_arr.shape), e)) \
                from e
        if chainer.config.in_recomputing:
            return y                     # the first forward already updated the state
        if getattr(chainer.config, '_will_recompute', False):
            self._pending.append((index, resp))
            del self._pending[:-MAX_PENDING_RECOMPUTES]
        lam, mu, var = stats
        self.last_gmm = g if g is not None else _gmm.GMM(lam, mu, var + self.eps)
        self.effective_components = self.last_gmm.n_components
        self._push(lam, mu, var)
        return y

    def _forward_test(self, x, points):
        xp = _arrays.get_array_module(points)
        g, lam = self.queue_mixture()
        dtype = numpy.float64 if points.dtype == numpy.float64 else numpy.float32
        means, variances = g.means.astype(dtype), g.variances.astype(dtype)
        # posteriors of Eq. 38: densities N(x | mu, sigma^2 + eps), weights tau * lambda
        density = _gmm.GMM(g.weights.astype(dtype), means, variances + self.eps)
        try:
            resp = _gmm.responsibilities(points, density)
        except ValueError as e:
            raise ValueError('%s at inference, input %s: %s'
                             % (self._label(), tuple(x.shape), e)) from e
        if self.lambda_scaling and self.inference == 'consistent':
            scale = xp.where(lam > 0, 1.0 / xp.sqrt(xp.maximum(lam, 1e-300)), 0.0)
        else:
            scale = xp.ones_like(lam)
        gamma, beta = self.gamma, self.beta
        if self.affine == 'component':
            m = lam.shape[0] // self.n_components
            gamma = chainer.functions.tile(gamma, (m, 1)) if gamma is not None else None
            beta = chainer.functions.tile(beta, (m, 1)) if beta is not None else None
        return functions.fixed_mixture_normalization(
            x, gamma, beta, resp, means, variances, scale.astype(dtype), eps=self.eps)


def _check_size(size):
    """The channel count: an int, a 1-tuple (as BN's ``size``), or None (lazy)."""
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        if len(size) != 1:
            raise ValueError('size must be the channel count C (an int or (C,)): '
                             'MixtureNormalization normalizes over the channel axis 1; '
                             'got %r' % (size,))
        size = size[0]
    if not _is_int(size) or size < 1:
        raise ValueError('size must be a positive integer (the channel count), got %r'
                         % (size,))
    return int(size)


def _check_axis(axis):
    """BN's ``axis``: only the channel layout (every axis but 1) is MN's."""
    if axis is None:
        return None
    axis = (axis,) if _is_int(axis) else tuple(axis)
    if not axis or axis[0] != 0 or list(axis[1:]) != list(range(2, len(axis) + 1)):
        raise ValueError(
            'axis=%r: MixtureNormalization fits the mixture to the points of the channel '
            'axis 1, i.e. it normalizes over axes (0,) or (0, 2, 3, ...); move the '
            'channels to axis 1 (F.moveaxis) instead' % (axis,))
    return axis


def _check_bn_only_arguments(initial_avg_mean, initial_avg_var):
    if initial_avg_mean is not None or initial_avg_var is not None:
        raise ValueError(
            'initial_avg_mean/initial_avg_var: MixtureNormalization keeps no running '
            'mean and variance but a queue of the last queue_length fitted mixtures '
            '(Eq. 38-39); load a trained snapshot instead')


def _initializer(initial, default, dtype):
    """A Chainer initializer for ``initial`` (None, a scalar, an array or an
    initializer), as BN builds ``initial_gamma``/``initial_beta``."""
    init = initializers._get_initializer(default if initial is None else initial)
    init.dtype = dtype
    return init
