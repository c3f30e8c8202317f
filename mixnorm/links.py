"""``MixtureNormalization``: the drop-in replacement for ``chainer.links.BatchNormalization``.

The link holds the state (affine parameters, the inference queue, counters and their
serialization); the math lives in :mod:`mixnorm.functions` and :mod:`mixnorm.gmm`, as
Chainer splits ``links/normalization/batch_normalization.py`` from
``functions/normalization/batch_normalization.py``.
"""
from mixnorm import _compat  # noqa: F401

import numpy

import chainer
from chainer import backend
from chainer import initializers
from chainer import variable

from mixnorm import functions
from mixnorm import gmm as _gmm

AFFINE_MODES = ('channel', 'component', None)


class MixtureNormalization(chainer.Link):
    """Mixture Normalization (paper Sec. 3.2).

    Training (``chainer.config.train``): fits a K-component diagonal GMM to the
    n = N*H*W points in R^C of the batch (K-means++ seeding, then the paper's
    "EM iter." ``em_iters`` split evenly into K-means and EM iterations), prunes
    components lighter than ``min_weight`` and normalizes with Eq. 34-36 using the
    posteriors as constants; the fitted statistics (lambda_k, mu_k, sigma^2_k) enter a
    queue of the last ``queue_length`` = T batches.

    Inference: Eq. 38-39 -- every point is standardized by each of the T*K queued
    components and the results are mixed by the posteriors of the mixture with weights
    tau_t * lambda_k^t (tau_t = zeta^(T-t-1) (1-zeta) / (1-zeta^T), zeta = ``decay``;
    t = T-1 is the newest batch).  While the queue is not yet full the tau of the m
    entries present are renormalised over those m.  With ``lambda_scaling`` the factor
    1/sqrt(lambda_k^t) of Eq. 34 is applied at inference too, although Eq. 38 omits it:
    it is the only choice under which inference with T = 1 reproduces the training
    output of the same batch (the test ``test_inference_matches_training_with_T1``).
    Inference before any training step raises ``RuntimeError``.

    ``lambda_scaling=False`` drops 1/sqrt(lambda_k) (Eq. 34): each component's
    contribution then has unit variance regardless of its weight, so the output's
    overall variance no longer depends on how the mass is split; useful when MN feeds a
    layer that expects BN-like unit-variance inputs.

    Affine: ``'channel'`` (default) y = gamma * xhat + beta per channel, as BN;
    ``'component'`` the paper's Eq. 37: beta_k shifts the mean and gamma_k scales the
    variance of component k (parameters (K, C), indexed by the rank of the component's
    weight in the batch, heaviest first, since fitted components have no identity across
    batches); ``None`` no parameters.

    Readable state: ``effective_components`` (K' of the last fit), ``last_gmm``
    (the last :class:`mixnorm.GMM`, components sorted by weight), ``n_fits``.
    """

    def __init__(self, size, n_components=3, em_iters=2, *, eps=2e-5, decay=0.9,
                 queue_length=10, fit_fraction=1.0, min_weight=0.01, affine='channel',
                 lambda_scaling=True, dtype=None, seed=None):
        super().__init__()
        if int(size) != size or size < 1:
            raise ValueError('size must be a positive integer (the channel count), got %r'
                             % (size,))
        if int(n_components) != n_components or n_components < 1:
            raise ValueError('n_components must be a positive integer, got %r'
                             % (n_components,))
        if affine not in AFFINE_MODES:
            raise ValueError("affine must be 'channel', 'component' or None, got %r"
                             % (affine,))
        if not 0.0 < decay < 1.0:
            raise ValueError('decay (zeta) must be in (0, 1), got %r' % (decay,))
        if int(queue_length) != queue_length or queue_length < 1:
            raise ValueError('queue_length must be a positive integer, got %r'
                             % (queue_length,))
        if not eps > 0:
            raise ValueError('eps must be positive, got %r' % (eps,))
        self.size = int(size)
        self.n_components = int(n_components)
        self.em_iters = em_iters
        self.kmeans_iters, self.gmm_em_iters = _gmm.split_em_iters(em_iters)
        self.eps = eps
        self.decay = decay
        self.queue_length = int(queue_length)
        self.fit_fraction = fit_fraction
        self.min_weight = min_weight
        self.affine = affine
        self.lambda_scaling = lambda_scaling
        self._dtype = chainer.get_dtype(dtype)
        self.effective_components = None
        self.last_gmm = None

        T, K, C = self.queue_length, self.n_components, self.size
        self.queue_weights = numpy.zeros((T, K), dtype=numpy.float64)
        self.queue_means = numpy.zeros((T, K, C), dtype=numpy.float64)
        self.queue_vars = numpy.ones((T, K, C), dtype=numpy.float64)
        self.n_fits = 0
        self.seed = int(numpy.random.randint(2 ** 31)) if seed is None else int(seed)
        for name in ('queue_weights', 'queue_means', 'queue_vars', 'n_fits', 'seed'):
            self.register_persistent(name)

        with self.init_scope():
            if affine is not None:
                shape = (C,) if affine == 'channel' else (K, C)
                self.gamma = variable.Parameter(initializers.One(self._dtype), shape)
                self.beta = variable.Parameter(initializers.Zero(self._dtype), shape)
            else:
                self.gamma = None
                self.beta = None

    # ------------------------------------------------------------------ helpers
    def _check_input(self, x):
        """Validate the shape of ``x`` (N, C, *S); return the number of points n."""
        if x.ndim < 2 or x.shape[1] != self.size:
            raise ValueError('%s expects input of shape (N, %d) or (N, %d, ...), got %s'
                             % (self._label(), self.size, self.size, tuple(x.shape)))
        return x.size // self.size

    def _points(self, x):
        """Activations (N, C, *S) as the (N*prod(S), C) points the mixture is fitted to."""
        self._check_input(x)
        if x.ndim == 2:
            return x
        xp = backend.get_array_module(x)
        return xp.ascontiguousarray(xp.moveaxis(x, 1, -1)).reshape(-1, self.size)

    def _label(self):
        return 'MixtureNormalization %r' % (self.name or '(unnamed)',)

    def _fit(self, points):
        """The batch's mixture, components sorted by weight (heaviest first, as
        :func:`mixnorm.gmm.fit_gmm` returns them), and the posteriors (n, K') of the
        points in that order."""
        try:
            g, resp = _gmm.fit_gmm(
                points, self.n_components, self.kmeans_iters, self.gmm_em_iters,
                fit_fraction=self.fit_fraction, min_weight=self.min_weight, eps=self.eps,
                seed=(self.seed * 1000003 + self.n_fits) % 2 ** 32,
                return_responsibilities=True)
        except ValueError as e:
            raise ValueError('%s, input with %d points in R^%d: %s'
                             % (self._label(), points.shape[0], points.shape[1], e)) from e
        return g, resp

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
        xp = backend.get_array_module(self.queue_weights)
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

    def _forward_train(self, x, x_arr):
        xp = backend.get_array_module(x_arr)
        if self.n_components == 1:
            # one component: nu = 1 everywhere, no fit needed; this is exactly BN.
            g = None
            resp = xp.ones((self._check_input(x_arr), 1), dtype=numpy.float32
                           if x_arr.dtype == numpy.float16 else x_arr.dtype)
        else:
            g, resp = self._fit(self._points(x_arr))
        gamma, beta = self.gamma, self.beta
        if self.affine == 'component':
            k = resp.shape[1]
            gamma, beta = gamma[:k], beta[:k]
        y, node = functions._apply_training(x, gamma, beta, resp, self.eps,
                                            self.lambda_scaling, keep_stats=True)
        lam, mu, var = node.batch_stats()
        if g is None:
            if not node.finite:                 # known on the host: no device sync
                _gmm._raise_not_finite(self._points(x_arr), name='%s input %s' % (
                    self._label(), tuple(x_arr.shape)))
            g = _gmm.GMM(lam, mu, var + self.eps)
        self.last_gmm = g
        self.effective_components = g.n_components
        self._push(lam, mu, var)
        return y

    def _forward_test(self, x, points):
        xp = backend.get_array_module(points)
        g, lam = self.queue_mixture()
        dtype = numpy.float64 if points.dtype == numpy.float64 else numpy.float32
        means, variances = g.means.astype(dtype), g.variances.astype(dtype)
        # posteriors of Eq. 38: densities N(x | mu, sigma^2 + eps), weights tau * lambda
        density = _gmm.GMM(g.weights.astype(dtype), means, variances + self.eps)
        try:
            resp = _gmm.responsibilities(points, density)
        except ValueError as e:
            raise ValueError('%s: %s' % (self._label(), e)) from e
        if self.lambda_scaling:
            scale = xp.where(lam > 0, 1.0 / xp.sqrt(xp.maximum(lam, 1e-300)), 0.0)
        else:
            scale = xp.ones_like(lam)
        gamma, beta = self.gamma, self.beta
        if self.affine == 'component':
            m = lam.shape[0] // self.n_components
            gamma = chainer.functions.tile(gamma, (m, 1))
            beta = chainer.functions.tile(beta, (m, 1))
        return functions.normalize_with_components(
            x, gamma, beta, resp, means, variances, scale.astype(dtype), eps=self.eps)
