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
  tensor is ever formed.  ``y = x * (a P) nu^T + (a Q) nu^T`` with
  ``P = S = 1 / sqrt(var + eps)``, ``Q = -mu P`` (C, K), ``a = 1 / sqrt(lambda)``.
  ``[x; x^2]`` and ``[gy; gy x]`` are stacked so one product gives both moments.
  The output and the input gradient are each one pass of
  :func:`mixnorm.kernels.combine` (a fused kernel on the GPU, its blocked twin
  on the CPU); the per-component rectifier of Eq. 40 loops over k instead.
* The (C, K) arithmetic between the passes (Eq. 35-36, the affine, the
  gradient's chain rule) runs on the host in float64: one device-to-host copy
  of the moments and one copy of the coefficients back per pass.  On the GPU
  that replaces a few dozen tiny kernel launches; on the CPU it costs nothing.
  The ValueError for a non-positive normalizer therefore costs no extra sync.
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
  if any ``gamma_k * var_k + eps`` is not strictly positive (or NaN).

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

from mixnorm import _arrays
from mixnorm import kernels

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
    (N, C, L) <-> (C, N, L) transposition a single cheap copy.  :meth:`empty`
    can stack several such arrays in one buffer, ``(stack*C, n)``, so that one
    matrix product serves all of them.
    """

    def __init__(self, shape):
        self.shape = tuple(shape)
        self.N, self.C = self.shape[0], self.shape[1]
        self.L = int(numpy.prod(self.shape[2:], dtype=numpy.int64))
        self.n = self.N * self.L
        self.rows = len(self.shape) == 2
        self.shape3 = (self.C, self.N) if self.rows else (self.C, self.N, self.L)

    def empty(self, xp, dtype, stack=1):
        if self.rows:
            return xp.empty((self.n, stack * self.C), dtype).T
        return xp.empty((stack * self.C, self.n), dtype)

    def as3(self, a):
        return a if self.rows else a.reshape(self.shape3)

    def src3(self, a):
        """(C, N[, L]) view of an x-shaped array."""
        if self.rows:
            return a.T
        return a.reshape(self.N, self.C, self.L).transpose(1, 0, 2)

    def to_cn(self, xp, a, dtype, shift=None, out=None):
        """x-shaped ``a`` minus ``shift`` (C,) as a (C, n) array of ``dtype``,
        written into ``out`` (a (C, n) block of :meth:`empty`) if given."""
        src = self.src3(a)
        if out is None:
            out = self.empty(xp, dtype)
        if shift is None:
            self.as3(out)[...] = src
        else:
            sh = shift[:, None] if self.rows else shift[:, None, None]
            xp.subtract(src, sh, out=self.as3(out))
        return out

    def output(self, xp, a, dtype, spare=None):
        """x-shaped array of ``dtype`` holding the (C, n) array ``a``.

        May return ``a`` itself (2-D case) or write into ``spare``, a (C, n)
        block of :meth:`empty` that is no longer needed; otherwise allocates.
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

        ``out``: optional (C, n) block of :meth:`empty` to write into.
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
            if out is None:
                return xp.matmul(r, w.T).T
            if out.T.flags.c_contiguous:
                xp.matmul(r, w.T, out=out.T)
            else:                                  # a block of a stacked buffer
                out[...] = xp.matmul(r, w.T).T
            return out
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
# moments: two (C, n) passes on the device, the arithmetic on the host
# --------------------------------------------------------------------------

def _shift_estimate(xp, lay, x, ct):
    """Per-channel mean of a strided subsample of about 1000 points.

    Only used as a shift before taking moments (the transform is shift
    invariant), so it needs to be close to the batch mean, not equal to it.
    """
    src = lay.src3(x)
    if lay.rows:
        return src[:, ::max(1, lay.N // 1024)].mean(axis=1, dtype=ct)
    sub = src[:, ::max(1, lay.N // 32), ::max(1, lay.L // 32)]
    return sub.mean(axis=(1, 2), dtype=ct)


def _device_moments(xp, lay, x, r, ct):
    """``xc`` = x minus a per-channel shift ``c`` close to the batch mean, as the
    first (C, n) block of a stacked (2C, n) buffer whose second block is free,
    and the small device arrays ``[[xc; xc^2]^T r (2C, K), colsum(r) (K,), c (C,)]``.
    Moments are taken of ``xc`` so that ``E[x^2] - mu^2`` does not cancel."""
    C = lay.C
    work = lay.empty(xp, ct, 2)
    xc, spare = work[:C], work[C:]
    c = _shift_estimate(xp, lay, x, ct)
    lay.to_cn(xp, x, ct, shift=c, out=xc)
    xp.multiply(xc, xc, out=spare)
    return xc, spare, [xp.matmul(work, r), r.sum(axis=0), c]


def _host_moments(M, s, n, ct):
    """Eq. 35-36 from the moments of :func:`_device_moments` (host, float64):
    ``s`` (K,) floored column sums, ``lam`` (K,), ``muc`` (C, K) = mu - c,
    ``var_raw`` (C, K) and ``var`` = max(var_raw, 0)."""
    C = M.shape[0] // 2
    tiny = numpy.finfo(ct).tiny
    s = numpy.maximum(s, tiny)
    lam = numpy.maximum(s / n, tiny)
    muc = M[:C] / s
    var_raw = M[C:] / s - muc * muc
    return s, lam, muc, var_raw, numpy.maximum(var_raw, 0)


# --------------------------------------------------------------------------
# function nodes
# --------------------------------------------------------------------------

class MixtureNormalizationFunction(function_node.FunctionNode):
    """Mixture normalization (Eq. 34-37, 40) or its inference form (Eq. 38).

    Inputs: ``x`` then ``gamma`` (if given) then ``beta`` (if given).
    ``resp`` and, for the inference form, ``stats = (means, variances, scale)``
    are constants held by the node.  ``relu=True`` applies the rectifier per
    component (Eq. 40).  Use the module-level functions rather than this class.

    The (C, n) passes (shift, squares, matrix products with ``resp``, the output)
    run on the device of ``x``; the (C, K) arithmetic between them runs on the
    host in float64, fed by one device-to-host copy and answered by one copy
    back per pass (on the GPU this replaces a few dozen tiny kernel launches).
    """

    def __init__(self, resp, mode, has_gamma, has_beta, eps=2e-5,
                 lambda_scaling=True, relu=False, stats=None, keep_stats=False):
        self.resp = resp
        self.mode = mode
        self.has_gamma = has_gamma
        self.has_beta = has_beta
        self.eps = float(eps)
        self.lambda_scaling = lambda_scaling
        self.relu = relu
        self.stats = stats
        self.keep_stats = keep_stats

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
        params = [p for p in (gamma, beta) if p is not None]

        if self.stats is None:      # training: statistics from the batch
            xc, spare, small = _device_moments(xp, lay, x, r, ct)
            host = _arrays.fetch(xp, small + params, ct)
            s, lam, muc, var_raw, var = _host_moments(host[0], host[1], lay.n, ct)
            self.finite = bool(numpy.isfinite(host[0]).all())
            c = host[2]
            a = 1 / numpy.sqrt(lam) if self.lambda_scaling else numpy.ones_like(lam)
            self._s, self._var_pos = s, var_raw > 0
            host_params = host[3:]
        else:                       # inference: constant statistics (Eq. 38)
            host = _arrays.fetch(xp, list(self.stats) + params, ct)
            means, variances, a = host[:3]
            c = means.mean(axis=0)
            muc = means.T - c[:, None]
            var = variances.T
            lam = None
            host_params = host[3:]
        it = iter(host_params)
        gh = next(it) if gamma is not None else None
        bh = next(it) if beta is not None else None

        gc = gh if self.mode == _CHANNEL else None
        bc = bh if self.mode == _CHANNEL else None
        if self.mode == _COMPONENT:
            gk = gh.T if gh is not None else numpy.ones_like(var)
            denom = gk * var + self.eps
            mc = muc + bh.T if bh is not None else muc
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
                    float(numpy.min(denom))))
        S = 1 / numpy.sqrt(denom)                   # (C, K)
        self._a, self._S, self._mc, self._muc = a, S, mc, muc
        self._var, self._gc, self._gk, self._lam, self._c = var, gc, gk, lam, c

        # term_k = xc * P_k + Q_k: the standardization of component k with the
        # affine applied; the channel beta is added once (after the sum over k)
        # except under the per-component rectifier (Eq. 40), where it enters Q_k
        P = S * gc[:, None] if gc is not None else S
        Q = -mc * P
        if self.relu:
            send = [P, Q + bc[:, None] if bc is not None else Q, a]
        else:
            send = [P * a, Q * a]
        if self.stats is not None:
            send.append(c)
        if self.keep_stats:
            send += self._stats_host()
        dev = _arrays.send(xp, send, ct)
        if self.stats is not None:
            xc = lay.to_cn(xp, x, ct, shift=dev[-1 - 3 * self.keep_stats])
            spare = None
        if self.keep_stats:
            self._stats_dev = tuple(dev[-3:])
        self._xc = xc

        if not self.relu:
            # y = sum_k a_k r_k (xc P_k + Q_k) + beta = xc * (aP) r^T + (aQ) r^T + beta,
            # one fused pass (kernels.combine)
            self._wp = dev[0]
            self._rT = xp.ascontiguousarray(r.T)
            y = kernels.combine(spare if spare is not None else lay.empty(xp, ct), xc,
                                dev[0], self._rT, Cm=dev[1],
                                beta=beta.astype(ct, copy=False) if bc is not None else None)
            return lay.output(xp, y, x.dtype),

        # Eq. 40: y = sum_k a_k r_k ReLU(term_k), one (C, n) pass set per k
        self._P, self._Q = dev[0], dev[1]
        self._rTa = rTa = xp.ascontiguousarray(r.T) * dev[2][:, None]   # (K, n)
        y = lay.empty(xp, ct)
        t = spare if spare is not None else (lay.empty(xp, ct) if r.shape[1] > 1 else None)
        for k in range(r.shape[1]):
            buf = y if k == 0 else t
            self._term(xp, k, buf)
            xp.maximum(buf, 0, out=buf)
            buf *= rTa[k][None, :]
            if k > 0:
                y += buf
        return lay.output(xp, y, x.dtype, spare=t),

    def _term(self, xp, k, out):
        """(C, n) pre-activation of component k (affine applied) into ``out``."""
        xp.multiply(self._xc, self._P[:, k:k + 1], out=out)
        out += self._Q[:, k:k + 1]
        return out

    def _stats_host(self):
        mu = self._muc + self._c[:, None]
        return [self._lam, mu.T, self._var.T]

    def batch_stats(self):
        """``(lam (K,), mu (K, C), var (K, C))`` of the last training forward,
        arrays on the device of ``x`` in the compute dtype (float32 for float16
        input); ``var`` is clamped at 0 and excludes eps.  Needs ``keep_stats``."""
        return self._stats_dev

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
        lay, ct, r, xc = f._lay, f._ct, f._r, f._xc
        C, K = lay.C, r.shape[1]
        channel_beta = f.mode == _CHANNEL and f.has_beta
        buf = lay.empty(xp, ct, 2)
        g, t = buf[:C], buf[C:]
        lay.to_cn(xp, gy, ct, out=g)

        if not f.relu:
            # h_k = gy a_k r_k  =>  H0 = a (gy^T r), H1 = a ((gy xc)^T r): one product
            # (with beta, a ones column of r gives gbeta = sum_i gy as well)
            xp.multiply(g, xc, out=t)
            G, = _arrays.fetch(xp, [xp.matmul(buf, _with_ones_column(xp, r)
                                              if channel_beta else r)], ct)
            H0, H1 = G[:C, :K] * f._a, G[C:, :K] * f._a
            gbeta = G[:C, K] if channel_beta else None
            gx = None                               # one fused pass below
        else:
            H = xp.empty((2 * C, K), ct)
            gx = lay.empty(xp, ct)
            u = lay.empty(xp, ct)
            mask = lay.empty(xp, numpy.bool_)
            for k in range(K):
                xp.greater(f._term(xp, k, t), 0, out=mask)
                xp.multiply(g, mask, out=t)
                t *= f._rTa[k][None, :]              # h_k
                H[:C, k] = t.sum(axis=1)
                xp.multiply(t, xc, out=u)
                H[C:, k] = u.sum(axis=1)
                if k == 0:
                    xp.multiply(t, f._P[:, k:k + 1], out=gx)
                else:
                    t *= f._P[:, k:k + 1]
                    gx += t
            del mask, u
            H = _arrays.fetch(xp, [H], ct)[0]
            H0, H1 = H[:C], H[C:]
            gbeta = H0.sum(axis=1) if channel_beta else None

        S, mc = f._S, f._mc
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

        send = [g for g in (ggamma, gbeta) if g is not None]
        if f.stats is None:
            # through mu = nu_hat^T xc and var = nu_hat^T xc^2 - mu^2
            dvar = dvar * f._var_pos
            dmu = dM - 2 * f._muc * dvar
            send += [2 * dvar / f._s, dmu / f._s]
        dev = _arrays.send(xp, send, ct)
        if not f.relu:
            # gx = gy * (a P) r^T [+ xc * (2 dvar / s) r^T + (dmu / s) r^T]
            stats = f.stats is None
            gx = kernels.combine(t, g, f._wp, f._rT, v=xc if stats else None,
                                 B=dev[-2] if stats else None, Cm=dev[-1] if stats else None)
            spare = g
        else:
            if f.stats is None:
                t = lay.expand(xp, dev[-2], r, out=t)
                t *= xc
                gx += t
                gx += lay.expand(xp, dev[-1], r, out=t)
            spare = t

        dtypes = f._dtypes
        outs = [lay.output(xp, gx, dtypes[0], spare=spare)]
        for i, grad in enumerate(dev[:len(dtypes) - 1]):
            outs.append(grad.astype(dtypes[i + 1], copy=False))
        return tuple(outs)

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError(
            'double backward is not supported by mixture normalization')


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
    y, node = _apply_training(x, gamma, beta, resp, eps, lambda_scaling, return_stats)
    return (y, node.batch_stats()) if return_stats else y


def _apply_training(x, gamma, beta, resp, eps, lambda_scaling, keep_stats):
    """:func:`mixture_normalization`, returning the output and the node (whose
    ``finite`` says whether the batch moments were finite, known on the host)."""
    _check_eps(eps)
    xa, ra, mode, params = _prepare(x, gamma, beta, resp, 'mixture_normalization')
    node = MixtureNormalizationFunction(ra, mode, gamma is not None, beta is not None,
                                        eps, lambda_scaling, keep_stats=keep_stats)
    y, = node.apply([x] + params)
    return y, node


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
                                        eps, lambda_scaling, relu=True,
                                        keep_stats=return_stats)
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
    _, _, small = _device_moments(xp, lay, xa, ra.astype(ct, copy=False), ct)
    M, s, c = _arrays.fetch(xp, small, ct)
    _, lam, muc, _, var = _host_moments(M, s, lay.n, ct)
    return tuple(_arrays.send(xp, [lam, (muc + c[:, None]).T, var.T], ct))
