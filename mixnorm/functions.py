"""Mixture Normalizing Transform as Chainer functions (paper Sec. 3.2, Eq. 34-41).

Notation (paper, "Differentiability and Gradient Propagation"): ``x`` has shape
``(N, C)`` or ``(N, C, *spatial)``; its ``n = N * prod(spatial)`` points are the
rows of ``x`` moved to channels-last and flattened, i.e. row
``((i * H) + h) * W + w`` is sample ``i`` at ``(h, w)``.  ``resp`` is the
``(n, K)`` posterior matrix ``nu`` (Eq. 31) in that row order.  It comes from a
GMM fit outside the graph, so it is a constant here: no gradient flows to it.

With ``nu_hat = nu / colsum(nu)`` (Eq. 36) and ``lambda_k = mean_i nu_ik``::

    mu    = nu_hat^T x,       var = nu_hat^T x^2 - mu^2          (K, C)
    xhat^k_i = (x_i - mu_k) / sqrt(var_k + eps)                  (Eq. 35)
    xhat_i   = sum_k nu_ik / sqrt(lambda_k) * xhat^k_i           (Eq. 34)

Implementation notes
--------------------
* Everything is a handful of ``(C, n) x (n, K)`` / ``(C, K) x (K, n)`` matrix
  products plus elementwise passes over ``(C, n)`` arrays; no ``(n, C, K)``
  tensor is ever formed.  ``y = x * P - Q`` with ``P = A S``, ``Q = A (M S)``,
  ``A = nu / sqrt(lambda)``.
* The data are shifted by a per-channel estimate of the batch mean (mean of a
  strided subsample) before any moment is taken; the transform is shift
  invariant, and this keeps ``nu_hat^T x^2 - mu^2`` free of catastrophic
  cancellation in float32 when ``|mean| >> std``.
* float16 inputs are computed in float32 and cast back; float32 stays float32,
  float64 stays float64.  Gradients come back in each input's own dtype.
* Only first-order gradients are implemented (no double backward).
* Code is generic over NumPy/CuPy (``chainer.backend.get_array_module``).

Affine modes (``gamma``/``beta``):

* ``None``/``None``: no affine.
* shape ``(C,)`` ("channel", like batch normalization): ``y = gamma * xhat + beta``.
* shape ``(K, C)`` ("component", Eq. 37): ``beta_k`` shifts the k-th mean and
  ``gamma_k`` scales the k-th variance,
  ``xhat^k = (x - mu_k - beta_k) / sqrt(gamma_k * var_k + eps)``, with
  ``var_k`` the variance about the unshifted mean ``mu_k``; no channel affine
  follows (so gamma = 1, beta = 0 is the identity).  A ``ValueError`` is raised
  if any ``gamma_k * var_k + eps`` is not strictly positive (or NaN); this
  check costs one device synchronisation per call on GPU.

One of ``gamma``/``beta`` may be ``None`` while the other is given; the missing
one then acts as the identity (gamma = 1, beta = 0).  In
:func:`mixture_normalization_relu` the channel affine is applied per component
before the rectifier (see its docstring).
"""
import mixnorm._compat  # noqa: F401  (must run before ``import chainer``)

import numpy

import chainer
from chainer import backend
from chainer import function_node

__all__ = [
    'mixture_normalization',
    'mixture_normalization_relu',
    'normalize_with_components',
    'mixture_moments',
    'MixtureNormalizationFunction',
]

_NONE = 'none'
_CHANNEL = 'channel'
_COMPONENT = 'component'


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _raw(a):
    return a.array if isinstance(a, chainer.Variable) else a


def _compute_dtype(dtype):
    """float64 stays float64; float16/float32 are computed in float32."""
    return numpy.dtype(numpy.float64) if dtype == numpy.float64 \
        else numpy.dtype(numpy.float32)


class _Layout(object):
    """Maps ``x`` of shape (N, C, *spatial) to a (C, n) "points" matrix.

    For 2-D ``x`` the (C, n) arrays are transposed views of C-ordered (n, C)
    buffers; for N-D ``x`` they are C-ordered (C, N*L) buffers, which makes the
    (N, C, L) <-> (C, N, L) transposition a single cheap copy.
    """

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.N, self.C = self.shape[0], self.shape[1]
        self.L = int(numpy.prod(self.shape[2:], dtype=numpy.int64))
        self.n = self.N * self.L
        self.rows = len(self.shape) == 2
        self.shape3 = (self.C, self.N) if self.rows else (self.C, self.N, self.L)

    def empty(self, xp, dtype):
        if self.rows:
            return xp.empty((self.n, self.C), dtype).T
        return xp.empty((self.C, self.n), dtype)

    def as3(self, a):
        return a if self.rows else a.reshape(self.shape3)

    def src3(self, a):
        """(C, N[, L]) view of an x-shaped array."""
        if self.rows:
            return a.T
        return a.reshape(self.N, self.C, self.L).transpose(1, 0, 2)

    def to_cn(self, xp, a, dtype, copy, shift=None):
        """x-shaped ``a`` as a (C, n) array of ``dtype``, minus ``shift`` (C,).

        Returns a view when possible and ``copy`` is False and there is no shift.
        """
        src = self.src3(a)
        if self.rows and not copy and shift is None and src.dtype == dtype:
            return src
        out = self.empty(xp, dtype)
        if shift is None:
            self.as3(out)[...] = src
        else:
            sh = shift[:, None] if self.rows else shift[:, None, None]
            xp.subtract(src, sh, out=self.as3(out))
        return out

    def owns_copy(self, dtype, ct):
        """Whether :meth:`to_cn` (copy=False, no shift) returns a new buffer."""
        return not (self.rows and dtype == ct)

    def output(self, xp, a, dtype, spare=None):
        """x-shaped array of ``dtype`` holding the (C, n) array ``a``.

        May return ``a`` itself (2-D case) or write into ``spare``, a (C, n)
        buffer from :meth:`empty` that is no longer needed; otherwise allocates.
        """
        if a.dtype == dtype:
            if self.rows:
                return xp.ascontiguousarray(a.T)    # a no-op for layout buffers
            if spare is not None and spare.dtype == dtype:
                out = spare.reshape(self.N, self.C, self.L)   # reuse the memory
                out.transpose(1, 0, 2)[...] = self.as3(a)
                return out.reshape(self.shape)
        out = xp.empty(self.shape, dtype)
        self.src3(out)[...] = self.as3(a)
        return out

    def expand(self, xp, w, r, out=None):
        """(C, K') coefficients -> (C, n) array ``sum_k w[c, k] r[i, k]``.

        ``out``: optional (C, n) buffer from :meth:`empty` to write into.
        """
        if r.shape[1] == 1:     # an outer product: BLAS with k = 1 is ~10x slower
            if out is None:
                return w * r.T if not self.rows else (r * w.T).T
            if self.rows:
                xp.multiply(r, w.T, out=out.T)
            else:
                xp.multiply(w, r.T, out=out)
            return out
        if self.rows:
            return xp.matmul(r, w.T, out=None if out is None else out.T).T
        return xp.matmul(w, r.T, out=out)


def _with_ones_column(xp, r):
    n, k = r.shape
    r1 = xp.empty((n, k + 1), r.dtype)
    r1[:, :k] = r
    r1[:, k] = 1
    return r1


def _affine_mode(gamma, beta, C, K, what='K'):
    """Validate gamma/beta shapes; return 'none' | 'channel' | 'component'."""
    shapes = []
    for name, p in (('gamma', gamma), ('beta', beta)):
        if p is None:
            continue
        shape = tuple(p.shape)
        if shape == (C,):
            shapes.append((name, shape, _CHANNEL))
        elif len(shape) == 2 and shape == (K, C):
            shapes.append((name, shape, _COMPONENT))
        else:
            raise ValueError(
                '{} must have shape (C,)=({},) for the channel affine or '
                '({}, C)=({}, {}) for the component affine, got {}'.format(
                    name, C, what, K, C, shape))
    if not shapes:
        return _NONE
    if len(shapes) == 2 and shapes[0][2] != shapes[1][2]:
        raise ValueError(
            'gamma and beta must both be (C,) or both be ({}, C); got gamma {} '
            'and beta {}'.format(what, shapes[0][1], shapes[1][1]))
    return shapes[0][2]


def _check_x_resp(x, resp, fname):
    if x.ndim < 2:
        raise ValueError('{}: x must have shape (N, C) or (N, C, *spatial), got '
                         'shape {}'.format(fname, tuple(x.shape)))
    if x.dtype.kind != 'f':
        raise ValueError('{}: x must be floating point, got {}'.format(fname, x.dtype))
    n = x.shape[0] * int(numpy.prod(x.shape[2:], dtype=numpy.int64))
    if resp.ndim != 2:
        raise ValueError('{}: resp must be an (n, K) array, got shape {}'.format(
            fname, tuple(resp.shape)))
    if resp.shape[0] != n or resp.shape[1] < 1:
        raise ValueError(
            '{}: resp must have shape (n, K) with n = N*prod(spatial) = {} for x '
            'of shape {}, got {}'.format(fname, n, tuple(x.shape), tuple(resp.shape)))
    if backend.get_array_module(resp) is not backend.get_array_module(x):
        raise ValueError('{}: resp and x must live on the same device '
                         '(got {} and {})'.format(fname, type(resp), type(x)))
    return n


def _check_eps(eps):
    if not eps > 0:
        raise ValueError('eps must be > 0, got {}'.format(eps))


# --------------------------------------------------------------------------
# function nodes
# --------------------------------------------------------------------------

class MixtureNormalizationFunction(function_node.FunctionNode):
    """Mixture normalization (Eq. 34-37, 40) or its inference form (Eq. 38).

    Inputs: ``x`` then ``gamma`` (if given) then ``beta`` (if given).
    ``resp`` and, for the inference form, ``stats = (means, variances, scale)``
    are constants held by the node.  ``relu=True`` applies the rectifier per
    component (Eq. 40).  Use the module-level functions rather than this class.
    """

    def __init__(self, resp, mode, has_gamma, has_beta, eps=2e-5,
                 lambda_scaling=True, relu=False, stats=None):
        self.resp = resp
        self.mode = mode
        self.has_gamma = has_gamma
        self.has_beta = has_beta
        self.eps = float(eps)
        self.lambda_scaling = lambda_scaling
        self.relu = relu
        self.stats = stats

    def _split(self, inputs):
        it = iter(inputs[1:])
        gamma = next(it) if self.has_gamma else None
        beta = next(it) if self.has_beta else None
        return inputs[0], gamma, beta

    def forward(self, inputs):
        x, gamma, beta = self._split(inputs)
        xp = backend.get_array_module(x)
        ct = _compute_dtype(x.dtype)
        lay = _Layout(x.shape)
        r = self.resp.astype(ct, copy=False)
        self._dtypes = tuple(a.dtype for a in inputs)
        self._lay, self._ct, self._r = lay, ct, r

        if self.stats is None:      # training: statistics from the batch
            s, lam, muc, var, var_raw, xc, c, spare = _batch_moments(xp, lay, x, r, ct)
            a = 1 / xp.sqrt(lam) if self.lambda_scaling else xp.ones_like(lam)
            self._s, self._var_pos, self._lam, self._c = s, var_raw > 0, lam, c
        else:                       # inference: constant statistics (Eq. 38)
            means, variances, scale = self.stats
            c = means.astype(ct).mean(axis=0)
            xc = lay.to_cn(xp, x, ct, copy=True, shift=c)
            spare = None
            muc = means.T.astype(ct) - c[:, None]
            var = variances.T.astype(ct)
            a = scale.astype(ct)

        gc = gamma.astype(ct, copy=False) if (self.mode == _CHANNEL and
                                                gamma is not None) else None
        bc = beta.astype(ct, copy=False) if (self.mode == _CHANNEL and
                                              beta is not None) else None
        if self.mode == _COMPONENT:
            gk = (gamma.T.astype(ct) if gamma is not None
                  else xp.ones_like(var))
            denom = gk * var + self.eps
            mc = muc + beta.T.astype(ct) if beta is not None else muc
        else:
            gk = None
            denom = var + self.eps
            mc = muc
        if (self.mode == _COMPONENT or self.stats is not None) and \
                not bool((denom > 0).all()):
            raise ValueError(
                'non-positive normalizer: {} + eps must be > 0 for every '
                'component and channel (min {})'.format(
                    'gamma_k * var_k' if self.mode == _COMPONENT else 'var',
                    float(denom.min())))
        S = 1 / xp.sqrt(denom)                      # (C, K)
        self._xc, self._a, self._S, self._mc, self._muc = xc, a, S, mc, muc
        self._var, self._gc, self._gk, self._beta_c = var, gc, gk, bc

        if not self.relu:
            # y = xc * P - Q,  P = (a S gamma) r^T,  Q = (a S gamma mc) r^T - beta
            wp = S * a
            if gc is not None:
                wp *= gc[:, None]
            wq = wp * mc
            self._r1 = None
            if bc is not None:      # fold beta into the Q product: [r | 1]
                self._r1 = _with_ones_column(xp, r)
                q = lay.expand(xp, xp.concatenate([wq, -bc[:, None]], axis=1),
                               self._r1, out=spare)
            else:
                q = lay.expand(xp, wq, r, out=spare)
            y = lay.expand(xp, wp, r)
            y *= xc
            y -= q
            self._wp = wp
            return lay.output(xp, y, x.dtype, spare=q),

        # Eq. 40: y = sum_k a_k r_k ReLU(term_k), one (C, n) pass set per k
        self._rT = rT = xp.ascontiguousarray(r.T)   # (K, n)
        y = lay.empty(xp, ct)
        t = spare if spare is not None else (lay.empty(xp, ct) if r.shape[1] > 1 else None)
        for k in range(r.shape[1]):
            buf = y if k == 0 else t
            self._term(xp, k, buf)
            xp.maximum(buf, 0, out=buf)
            buf *= (a[k] * rT[k])[None, :]
            if k > 0:
                y += buf
        return lay.output(xp, y, x.dtype, spare=t),

    def _term(self, xp, k, out):
        """(C, n) pre-activation of component k (affine applied) into ``out``."""
        pk, qk = self._pq(k)
        xp.multiply(self._xc, pk[:, None], out=out)
        out += qk[:, None]
        return out

    def _pq(self, k):
        """term_k = xc * pk + qk per channel."""
        pk = self._S[:, k]
        if self._gc is not None:
            pk = pk * self._gc
        qk = -self._mc[:, k] * pk
        if self._beta_c is not None:
            qk = qk + self._beta_c
        return pk, qk

    def batch_stats(self):
        """``(lam (K,), mu (K, C), var (K, C))`` of the last training forward.

        Compute dtype (float32 for float16 input); ``var`` is clamped at 0 and
        excludes eps.
        """
        xp = backend.get_array_module(self._var)
        mu = self._muc + self._c[:, None]
        return (self._lam, xp.ascontiguousarray(mu.T),
                xp.ascontiguousarray(self._var.T))

    def backward(self, indexes, grad_outputs):
        grads = _MixtureNormalizationGrad(self).apply(grad_outputs)
        return tuple(grads[i] for i in indexes)


class _MixtureNormalizationGrad(function_node.FunctionNode):
    """Analytic first-order gradient of :class:`MixtureNormalizationFunction`."""

    def __init__(self, fwd):
        self.f = fwd

    def forward(self, inputs):
        gy, = inputs
        f = self.f
        xp = backend.get_array_module(gy)
        lay, ct, r = f._lay, f._ct, f._r
        xc, a, S, mc = f._xc, f._a, f._S, f._mc
        K = r.shape[1]
        gyt = lay.to_cn(xp, gy, ct, copy=False)
        own = lay.owns_copy(gy.dtype, ct)           # gyt is ours to overwrite
        channel_beta = f.mode == _CHANNEL and f.has_beta

        if not f.relu:
            # h_k = gy * a_k r_k  =>  H0 = a * (gy^T r), H1 = a * ((gy xc)^T r)
            g0 = xp.matmul(gyt, f._r1 if f._r1 is not None else r)
            gbeta = g0[:, K] if channel_beta else None
            H0 = g0[:, :K] * a
            t = lay.empty(xp, ct)
            xp.multiply(gyt, xc, out=t)
            H1 = xp.matmul(t, r) * a
            # direct term: gx = gy * (a S gamma) r^T
            if own:
                gx = gyt
                gx *= lay.expand(xp, f._wp, r, out=t)
            else:
                gx = lay.expand(xp, f._wp, r, out=t)
                gx *= gyt
                t = lay.empty(xp, ct) if f.stats is None else None
        else:
            H0 = xp.empty(S.shape, ct)
            H1 = xp.empty(S.shape, ct)
            gx = lay.empty(xp, ct)
            t = lay.empty(xp, ct)
            u = lay.empty(xp, ct)
            mask = lay.empty(xp, numpy.bool_)
            for k in range(K):
                pk, _ = f._pq(k)
                xp.greater(f._term(xp, k, t), 0, out=mask)
                xp.multiply(gyt, mask, out=t)
                t *= (a[k] * f._rT[k])[None, :]     # h_k
                H0[:, k] = t.sum(axis=1)
                xp.multiply(t, xc, out=u)
                H1[:, k] = u.sum(axis=1)
                if k == 0:
                    xp.multiply(t, pk[:, None], out=gx)
                else:
                    t *= pk[:, None]
                    gx += t
            del mask, u
            gbeta = H0.sum(axis=1) if channel_beta else None

        D = H1 - mc * H0                            # sum_i h_k (xc - mc_k)
        ggamma = None
        dS, dM = D, -(S * H0)
        if f.mode == _CHANNEL:
            if f.has_gamma:
                ggamma = (S * D).sum(axis=1)
                dS = D * f._gc[:, None]
                dM = dM * f._gc[:, None]
        S3 = S * S * S
        if f.mode == _COMPONENT:
            if f.has_gamma:
                ggamma = (-0.5 * dS * f._var * S3).T
            if f.has_beta:
                gbeta = dM.T
            dvar = -0.5 * dS * f._gk * S3
        else:
            dvar = -0.5 * dS * S3

        if f.stats is None:
            # through mu = nu_hat^T xc and var = nu_hat^T xc^2 - mu^2
            dvar = dvar * f._var_pos
            dmu = dM - 2 * f._muc * dvar
            s = f._s
            t = lay.expand(xp, 2 * dvar / s, r, out=t)
            t *= xc
            gx += t
            gx += lay.expand(xp, dmu / s, r, out=t)

        dtypes = f._dtypes
        outs = [lay.output(xp, gx, dtypes[0], spare=t)]
        i = 1
        if f.has_gamma:
            outs.append(ggamma.astype(dtypes[i], copy=False))
            i += 1
        if f.has_beta:
            outs.append(gbeta.astype(dtypes[i], copy=False))
        return tuple(outs)

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError(
            'double backward is not supported by mixture normalization')


def _shift_estimate(xp, lay, x, ct):
    """Per-channel mean of a strided subsample of about 1000 points.

    Only used as a shift before taking moments (the transform is shift
    invariant), so it needs to be close to the batch mean, not equal to it.
    """
    src = lay.src3(x)
    if lay.rows:
        sub = src[:, ::max(1, lay.N // 1024)]
    else:
        sub = src[:, ::max(1, lay.N // 32), ::max(1, lay.L // 32)]
    return sub.astype(ct).reshape(lay.C, -1).mean(axis=1)


def _batch_moments(xp, lay, x, r, ct):
    """Component weights and moments of the batch (Eq. 35-36).

    Returns ``s`` (K,) column sums of resp (floored), ``lam`` (K,), ``muc``
    and ``var`` (C, K), ``var_raw`` (unclamped), ``xc`` = (C, n) data minus a
    per-channel shift ``c`` (C,) close to the batch mean (``muc = mu - c``),
    and a spare (C, n) buffer.
    Moments are taken of ``xc`` so that ``E[x^2] - mu^2`` does not cancel.
    """
    tiny = numpy.finfo(ct).tiny
    s = xp.maximum(r.sum(axis=0), tiny)
    lam = xp.maximum(s / lay.n, tiny)
    c = _shift_estimate(xp, lay, x, ct)
    xc = lay.to_cn(xp, x, ct, copy=True, shift=c)
    muc = xp.matmul(xc, r) / s                      # nu_hat^T (x - c), (C, K)
    sq = xc * xc
    m2 = xp.matmul(sq, r) / s
    var_raw = m2 - muc * muc
    var = xp.maximum(var_raw, 0)
    return s, lam, muc, var, var_raw, xc, c, sq


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------

def _prepare(x, gamma, beta, resp, fname):
    xa = _raw(x)
    ra = _raw(resp)
    _check_x_resp(xa, ra, fname)
    mode = _affine_mode(_raw(gamma), _raw(beta), xa.shape[1], ra.shape[1])
    params = [p for p in (gamma, beta) if p is not None]
    return xa, ra, mode, params


def mixture_normalization(x, gamma, beta, resp, eps=2e-5, lambda_scaling=True,
                          return_stats=False):
    """Mixture normalization, training form (Eq. 34-36, affine Eq. 37).

    Args:
        x: (N, C) or (N, C, *spatial) Variable/array.
        gamma, beta: None, (C,) (channel affine ``gamma * xhat + beta``) or
            (K, C) (component affine of Eq. 37, see module docstring).
        resp: (n, K) posteriors ``nu`` (Eq. 31), a constant array (a
            Variable is read as its array; no gradient reaches it).  Rows
            should sum to 1 (not checked); a component whose column is all
            zero contributes nothing and yields no NaN.
        eps: added to the (scaled) variances.
        lambda_scaling: multiply component k by ``1 / sqrt(lambda_k)`` (Eq. 34);
            False drops that factor.
        return_stats: also return the batch statistics used.

    Returns:
        Variable of x's shape and dtype; with ``return_stats`` a tuple
        ``(y, (lam, mu, var))`` of arrays (K,), (K, C), (K, C) in the compute
        dtype (``var`` clamped at 0, without eps), as :func:`mixture_moments`.
        Gradients flow to x (also through mu_k and var_k), gamma and beta.
        The node keeps one (n, C) buffer of the compute dtype for backward.
    """
    _check_eps(eps)
    xa, ra, mode, params = _prepare(x, gamma, beta, resp, 'mixture_normalization')
    node = MixtureNormalizationFunction(ra, mode, gamma is not None, beta is not None,
                                        eps, lambda_scaling)
    y, = node.apply([x] + params)
    return (y, node.batch_stats()) if return_stats else y


def mixture_normalization_relu(x, gamma, beta, resp, eps=2e-5, lambda_scaling=True,
                               return_stats=False):
    """Per-component rectified mixture normalization (Eq. 40).

    ``y_i = sum_k nu_ik / sqrt(lambda_k) * ReLU(t^k_i)`` where, per affine mode,

    * none:      ``t^k = xhat^k = (x - mu_k) / sqrt(var_k + eps)``
    * channel:   ``t^k = gamma * xhat^k + beta`` (affine per component, before
      the ReLU; so beta enters every component, weighted by nu_ik/sqrt(lambda_k))
    * component: ``t^k = (x - mu_k - beta_k) / sqrt(gamma_k var_k + eps)`` (Eq. 37)

    With one-hot ``resp`` this equals ``ReLU(mixture_normalization(...))``
    (Eq. 41).  Arguments and ``return_stats`` as in :func:`mixture_normalization`.
    """
    _check_eps(eps)
    xa, ra, mode, params = _prepare(x, gamma, beta, resp, 'mixture_normalization_relu')
    node = MixtureNormalizationFunction(ra, mode, gamma is not None, beta is not None,
                                        eps, lambda_scaling, relu=True)
    y, = node.apply([x] + params)
    return (y, node.batch_stats()) if return_stats else y


def normalize_with_components(x, gamma, beta, resp, means, variances, scale, eps=2e-5):
    """Mixture normalization with constant component statistics (inference, Eq. 38).

    ``y_i = sum_m resp_im * scale_m * (x_i - means_m) / sqrt(variances_m + eps)``
    followed by the affine of :func:`mixture_normalization`: ``gamma``/``beta``
    of shape (C,) (channel) or (M, C) (component: already expanded per
    component, ``(x - means_m - beta_m) / sqrt(gamma_m * variances_m + eps)``).

    Args:
        x: (N, C) or (N, C, *spatial) Variable/array.
        gamma, beta: None, (C,) or (M, C).
        resp: (n, M) posteriors of the points under the stored mixture(s)
            (e.g. the tau-weighted posteriors of Eq. 38), constant.
        means, variances: (M, C) constant arrays.
        scale: (M,) per-component factor, e.g. ``1 / sqrt(lambda_m)`` or ones.
        eps: added to the (scaled) variances.

    Gradients flow to x, gamma and beta; resp and the statistics are constants.
    A ValueError is raised if a normalizer ``variances_m (* gamma_m) + eps`` is
    not positive.
    """
    _check_eps(eps)
    fname = 'normalize_with_components'
    xa = _raw(x)
    ra = _raw(resp)
    _check_x_resp(xa, ra, fname)
    C, M = xa.shape[1], ra.shape[1]
    means, variances, scale = _raw(means), _raw(variances), _raw(scale)
    for name, arr, shape in (('means', means, (M, C)), ('variances', variances, (M, C)),
                             ('scale', scale, (M,))):
        if tuple(arr.shape) != shape:
            raise ValueError('{}: {} must have shape {} (M = resp.shape[1], C = '
                             'x.shape[1]), got {}'.format(fname, name, shape,
                                                         tuple(arr.shape)))
        if backend.get_array_module(arr) is not backend.get_array_module(xa):
            raise ValueError('{}: {} must live on the same device as x'.format(fname, name))
    mode = _affine_mode(_raw(gamma), _raw(beta), C, M, 'M')
    params = [p for p in (gamma, beta) if p is not None]
    node = MixtureNormalizationFunction(ra, mode, gamma is not None, beta is not None,
                                        eps, stats=(means, variances, scale))
    y, = node.apply([x] + params)
    return y


def mixture_moments(x, resp):
    """Batch statistics used by :func:`mixture_normalization` (Eq. 35-36).

    Args:
        x: (N, C) or (N, C, *spatial) array (or Variable, read only).
        resp: (n, K) posteriors.

    Returns:
        ``(lam, mu, var)`` arrays of shapes (K,), (K, C), (K, C) in the compute
        dtype (float32 for float16 input): ``lam_k = mean_i resp_ik``,
        ``mu = nu_hat^T x``, ``var = max(nu_hat^T x^2 - mu^2, 0)``.
    """
    xa = _raw(x)
    ra = _raw(resp)
    _check_x_resp(xa, ra, 'mixture_moments')
    xp = backend.get_array_module(xa)
    ct = _compute_dtype(xa.dtype)
    lay = _Layout(xa.shape)
    _, lam, muc, var, _, _, c, _ = _batch_moments(xp, lay, xa, ra.astype(ct, copy=False), ct)
    mu = muc + c[:, None]
    return lam, xp.ascontiguousarray(mu.T), xp.ascontiguousarray(var.T)
