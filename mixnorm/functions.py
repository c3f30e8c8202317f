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

Interface
---------
:func:`mixture_normalization` (training: statistics from the batch, returned as
:class:`BatchStats` with ``return_stats``) and :func:`fixed_mixture_normalization`
(inference: constant statistics) are two function nodes,
:class:`MixtureNormalizationFunction` and :class:`FixedMixtureNormalizationFunction`,
as Chainer splits ``batch_normalization`` from ``fixed_batch_normalization``; both
hand their backward to :class:`MixtureNormalizationGrad` with explicit arguments (the
host coefficients and device arrays of the forward).  :func:`mixture_normalization_relu`
is Eq. 40 and :func:`mixture_moments` the statistics alone.  With a ``reducer`` the
training node synchronizes its statistics over processes (see
:mod:`mixnorm.distributed`).

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
* Code is generic over NumPy/CuPy (:func:`mixnorm._arrays.get_array_module`).

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

from typing import NamedTuple

import numpy

import chainer
from chainer import function_node

from mixnorm import _arrays
from mixnorm import gmm as _gmm
from mixnorm import kernels
from mixnorm import settings

__all__ = [
    'BatchStats',
    'mixture_normalization',
    'mixture_normalization_relu',
    'fixed_mixture_normalization',
    'mixture_moments',
    'MixtureNormalizationFunction',
    'FixedMixtureNormalizationFunction',
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
    if _arrays.get_array_module(resp) is not _arrays.get_array_module(x):
        raise ValueError('{}: resp and x must live on the same device '
                         '(got {} and {})'.format(fname, type(resp), type(x)))
    return n


def _check_eps(eps):
    """``eps`` as MN's ``eps`` setting allows (:data:`mixnorm.settings.SETTINGS`)."""
    return settings.check('eps', eps, 'mixture normalization')


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
# the host coefficients of one forward: all that the backward needs
# --------------------------------------------------------------------------

class BatchStats(NamedTuple):
    """Statistics of one training forward (Eq. 35-36), arrays on the device of ``x``
    in the compute dtype: ``weights`` lambda (K,), ``means`` mu (K, C) and
    ``variances`` sigma^2 (K, C), clamped at 0 and without eps."""
    weights: object
    means: object
    variances: object


class _Spec(NamedTuple):
    """What a node computes: the affine mode, which parameters it has, Eq. 40 or not,
    eps, and whether the statistics come from the batch (training) or are fixed."""
    mode: str
    has_gamma: bool
    has_beta: bool
    relu: bool
    eps: float
    train: bool


class _Coefficients(NamedTuple):
    """Host float64 coefficients of one forward (C channels, K components).

    ``c`` (C,) is the shift the (C, n) passes subtract; ``muc = mu - c`` and
    ``mc = muc`` (+ beta_k for the component affine) are (C, K); ``S`` (C, K) is
    1 / sqrt(var (* gamma_k) + eps) (Eq. 35, 37); ``a`` (K,) the per-component factor
    (1 / sqrt(lambda_k) of Eq. 34, or the given scale); ``gc`` (C,) the channel gamma
    and ``gk`` (C, K) the component gamma, or None.  Training adds ``s`` (K,) the
    floored column sums of resp and ``var_pos`` (C, K), where var_raw > 0.
    """
    a: object
    S: object
    mc: object
    muc: object
    var: object
    c: object
    gc: object = None
    gk: object = None
    s: object = None
    var_pos: object = None


class _DeviceState(NamedTuple):
    """Device arrays the backward reuses: the (C, K) weight of x in the output ``wp``
    and ``rT`` = resp^T (K, n) for the fused pass; for Eq. 40 ``P``, ``Q`` (C, K) and
    ``rTa`` = a_k resp^T (K, n)."""
    wp: object = None
    rT: object = None
    P: object = None
    Q: object = None
    rTa: object = None


def _split(inputs, spec):
    it = iter(inputs[1:])
    gamma = next(it) if spec.has_gamma else None
    beta = next(it) if spec.has_beta else None
    return inputs[0], gamma, beta


def _coefficients(spec, muc, var, a, c, gh, bh, s=None, var_pos=None, check=True):
    """Eq. 35 and 37 on the host: the normalizer and centre of every component."""
    if spec.mode == _COMPONENT:
        gk = gh.T if gh is not None else numpy.ones_like(var)
        denom = gk * var + spec.eps
        mc = muc + bh.T if bh is not None else muc
    else:
        gk = None
        denom = var + spec.eps
        mc = muc
    if check and not bool((denom > 0).all()):
        raise ValueError(
            'non-positive normalizer: {} + eps must be > 0 for every component and '
            'channel (min {})'.format(
                'gamma_k * var_k' if spec.mode == _COMPONENT else 'var',
                float(numpy.min(denom))))
    gc = gh if spec.mode == _CHANNEL else None
    return _Coefficients(a, 1 / numpy.sqrt(denom), mc, muc, var, c, gc, gk, s, var_pos)


def _raise_non_finite_moments(x, ct):
    """The batch moments are not finite: NaN/Inf in ``x``, or finite values whose
    squares overflow the compute dtype."""
    xp = _arrays.get_array_module(x)
    _gmm.check_finite(x.reshape(x.shape[0], -1), name='the input')
    raise ValueError(
        'the input is finite but its second moments overflow {} (max |x| = {:g}): '
        'rescale the activations or compute in float64'.format(
            numpy.dtype(ct).name, float(xp.abs(x).max())))


def _normalize(xp, spec, lay, x, xc, spare, coef, r, beta, bh, ct, extra=()):
    """The normalizing pass: y (x-shaped), the device state for the backward, the
    device copies of ``extra`` host arrays (sent with the coefficients in one copy)
    and ``xc`` (computed here from the sent shift when None).  ``beta``/``bh``: the
    beta parameter on the device and on the host."""
    S, mc, a = coef.S, coef.mc, coef.a
    # term_k = xc * P_k + Q_k: the standardization of component k with the affine
    # applied; the channel beta is added once (after the sum over k), except under
    # the per-component rectifier (Eq. 40), where it enters Q_k
    P = S * coef.gc[:, None] if coef.gc is not None else S
    Q = -mc * P
    bc = beta is not None and spec.mode == _CHANNEL
    if spec.relu:
        send = [P, Q + bh[:, None] if bc else Q, a]
    else:
        send = [P * a, Q * a]
    need_xc = xc is None
    dev = _arrays.send(xp, send + ([coef.c] if need_xc else []) + list(extra), ct)
    n_send = len(send)
    if need_xc:
        xc = lay.to_cn(xp, x, ct, shift=dev[n_send])
        n_send += 1
    extra_dev = dev[n_send:]

    if not spec.relu:
        # y = sum_k a_k r_k (xc P_k + Q_k) + beta = xc * (aP) r^T + (aQ) r^T + beta,
        # one fused pass (kernels.combine)
        rT = xp.ascontiguousarray(r.T)
        y = kernels.combine(spare if spare is not None else lay.empty(xp, ct), xc,
                            dev[0], rT, Cm=dev[1],
                            beta=beta.astype(ct, copy=False) if bc else None)
        return lay.output(xp, y, x.dtype), _DeviceState(wp=dev[0], rT=rT), extra_dev, xc

    # Eq. 40: y = sum_k a_k r_k ReLU(term_k), one (C, n) pass set per k
    state = _DeviceState(P=dev[0], Q=dev[1],
                         rTa=xp.ascontiguousarray(r.T) * dev[2][:, None])
    y = lay.empty(xp, ct)
    t = spare if spare is not None else (lay.empty(xp, ct) if r.shape[1] > 1 else None)
    for k in range(r.shape[1]):
        buf = y if k == 0 else t
        _term(xp, state, xc, k, buf)
        xp.maximum(buf, 0, out=buf)
        buf *= state.rTa[k][None, :]
        if k > 0:
            y += buf
    return lay.output(xp, y, x.dtype, spare=t), state, extra_dev, xc


def _term(xp, state, xc, k, out):
    """(C, n) pre-activation of component k (affine applied) into ``out``."""
    xp.multiply(xc, state.P[:, k:k + 1], out=out)
    out += state.Q[:, k:k + 1]
    return out


# --------------------------------------------------------------------------
# function nodes
# --------------------------------------------------------------------------

class _MixtureNode(function_node.FunctionNode):
    """What both mixture-normalization nodes share: reading their inputs and handing
    the backward to :class:`MixtureNormalizationGrad` with what the forward saved."""
    reducer = None

    def _unpack(self, inputs):
        """``x, gamma, beta``, the array module, the compute dtype, the layout of ``x``,
        ``resp`` in the compute dtype and the parameters given."""
        x, gamma, beta = _split(inputs, self.spec)
        ct = _compute_dtype(x.dtype)
        return (x, gamma, beta, _arrays.get_array_module(x), ct, _Layout(x.shape),
                self.resp.astype(ct, copy=False), [p for p in (gamma, beta) if p is not None])

    def backward(self, indexes, grad_outputs):
        grads = MixtureNormalizationGrad(self.spec, *self._saved,
                                         reducer=self.reducer).apply(grad_outputs)
        return tuple(grads[i] for i in indexes)


class MixtureNormalizationFunction(_MixtureNode):
    """Mixture normalization with the batch's statistics (training; Eq. 34-37, and
    Eq. 40 with ``relu``).

    Inputs: ``x`` then ``gamma`` (if given) then ``beta`` (if given); ``resp`` is a
    constant.  After the forward, ``stats`` holds the :class:`BatchStats` used.
    The (C, n) passes (shift, squares, products with ``resp``, the output) run on the
    device of ``x``; the (C, K) arithmetic between them runs on the host in float64,
    fed by one device-to-host copy and answered by one copy back.

    ``reducer`` (None: one process) makes the statistics those of the union of all
    ranks' points: the (2C, K) moments of the forward and the (2C, K) sums of the
    backward are combined across ranks on the host (:func:`_reduce_moments`,
    :func:`_reduce_sums`), one collective each; ``resp`` is this rank's part.
    """

    def __init__(self, resp, mode, has_gamma, has_beta, eps=2e-5, lambda_scaling=True,
                 relu=False, reducer=None):
        self.resp = resp
        self.spec = _Spec(mode, bool(has_gamma), bool(has_beta), bool(relu), float(eps),
                          True)
        self.lambda_scaling = lambda_scaling
        self.reducer = reducer
        self.stats = None

    def forward(self, inputs):
        spec = self.spec
        x, gamma, beta, xp, ct, lay, r, params = self._unpack(inputs)
        with numpy.errstate(over='ignore', invalid='ignore'):  # overflow: raised below
            xc, spare, small = _device_moments(xp, lay, x, r, ct)
        host = _arrays.fetch(xp, small + params, ct)
        M, colsum, c = host[:3]
        if not numpy.isfinite(M).all():         # known on the host: no extra sync
            _raise_non_finite_moments(x, ct)
        if self.reducer is None:
            s, lam, muc, var_raw, var = _host_moments(M, colsum, lay.n, ct)
            mu = muc + c[:, None]
        else:
            M, colsum, n, c0 = _reduce_moments(self.reducer, M, colsum, c, lay.n)
            s, lam, muc0, var_raw, var = _host_moments(M, colsum, n, ct)
            mu = muc0 + c0[:, None]              # the same on every rank
            muc = muc0 + (c0 - c)[:, None]       # mu - c of this rank's shift c
        a = 1 / numpy.sqrt(lam) if self.lambda_scaling else numpy.ones_like(lam)
        gh, bh = _host_params(spec, host[3:])
        coef = _coefficients(spec, muc, var, a, c, gh, bh, s=s, var_pos=var_raw > 0,
                             check=spec.mode == _COMPONENT)
        y, state, stats, _ = _normalize(xp, spec, lay, x, xc, spare, coef, r, beta, bh,
                                        ct, extra=[lam, mu.T, var.T])
        self.stats = BatchStats(*stats)
        self._saved = (lay, coef, state, xc, r, tuple(a.dtype for a in inputs))
        return y,



def _reduce_moments(reducer, M, colsum, c, n):
    """The moments of the union of all ranks' points, about rank 0's shift.

    Each rank's ``M`` = [sum r xc; sum r xc^2] (2C, K) is taken about its own shift
    ``c`` (C,); one all-gather brings every rank's ``(M, colsum, c, n)``, and each rank
    re-centres them on rank 0's shift c0 (``x - c0 = xc + d``, ``d = c - c0``:
    ``sum r (x - c0) = S1 + d s``, ``sum r (x - c0)^2 = S2 + 2 d S1 + d^2 s``) and adds
    them up in rank order, so every rank gets the same float64 numbers.  Returns
    ``(M0, colsum, n, c0)``.
    """
    C, K = c.shape[0], colsum.shape[0]
    mine = numpy.concatenate([M.ravel(), colsum, c, [n]])
    every = reducer.allgather(mine)
    c0 = every[0, 2 * C * K + K:2 * C * K + K + C]
    M0 = numpy.zeros((2 * C, K))
    s0 = numpy.zeros(K)
    n0 = 0
    for row in every:
        Mp = row[:2 * C * K].reshape(2 * C, K)
        sp = row[2 * C * K:2 * C * K + K]
        d = (row[2 * C * K + K:2 * C * K + K + C] - c0)[:, None]
        M0[:C] += Mp[:C] + d * sp
        M0[C:] += Mp[C:] + 2 * d * Mp[:C] + d * d * sp
        s0 += sp
        n0 += int(row[-1])
    if not numpy.isfinite(M0).all():
        raise ValueError('the input of another rank is not finite (or its moments '
                         'overflow): the synchronized statistics cannot be computed')
    return M0, s0, n0, c0


def _reduce_sums(reducer, arrays):
    """Host arrays summed over all ranks (the same numbers on every rank)."""
    flat = reducer.sum(numpy.concatenate([numpy.ravel(a) for a in arrays]))
    out, i = [], 0
    for a in arrays:
        out.append(flat[i:i + a.size].reshape(a.shape))
        i += a.size
    return out


class FixedMixtureNormalizationFunction(_MixtureNode):
    """Mixture normalization with constant component statistics (inference, Eq. 38).

    Inputs: ``x`` then ``gamma`` (if given) then ``beta`` (if given); ``resp``,
    ``means``, ``variances`` and ``scale`` are constants.
    """

    def __init__(self, resp, means, variances, scale, mode, has_gamma, has_beta,
                 eps=2e-5):
        self.resp = resp
        self.constants = (means, variances, scale)
        self.spec = _Spec(mode, bool(has_gamma), bool(has_beta), False, float(eps), False)

    def forward(self, inputs):
        spec = self.spec
        x, gamma, beta, xp, ct, lay, r, params = self._unpack(inputs)
        host = _arrays.fetch(xp, list(self.constants) + params, ct)
        means, variances, a = host[:3]
        c = means.mean(axis=0)
        gh, bh = _host_params(spec, host[3:])
        coef = _coefficients(spec, means.T - c[:, None], variances.T, a, c, gh, bh)
        y, state, _, xc = _normalize(xp, spec, lay, x, None, None, coef, r, beta, bh, ct)
        self._saved = (lay, coef, state, xc, r, tuple(a.dtype for a in inputs))
        return y,



def _host_params(spec, host):
    """(gamma, beta) host float64 arrays (None where absent) from those fetched."""
    it = iter(host)
    gh = next(it) if spec.has_gamma else None
    bh = next(it) if spec.has_beta else None
    return gh, bh


class MixtureNormalizationGrad(function_node.FunctionNode):
    """Analytic first-order gradient of both mixture-normalization nodes.

    Explicit arguments: the node's :class:`_Spec`, the layout of ``x``, the host
    :class:`_Coefficients` and device :class:`_DeviceState` of its forward, the
    shifted input ``xc`` (C, n) it kept, ``resp`` and the input dtypes.  Through
    mu = nu_hat^T x and var = nu_hat^T x^2 - mu^2 when the statistics came from the
    batch (training).
    """

    def __init__(self, spec, lay, coef, state, xc, r, dtypes, reducer=None):
        self.spec, self.lay, self.coef, self.state = spec, lay, coef, state
        self.xc, self.r, self.dtypes, self.reducer = xc, r, dtypes, reducer

    def forward(self, inputs):
        gy, = inputs
        spec, lay, coef, st, xc, r = self.spec, self.lay, self.coef, self.state, \
            self.xc, self.r
        xp = _arrays.get_array_module(gy)
        ct = xc.dtype
        C, K = lay.C, r.shape[1]
        channel_beta = spec.mode == _CHANNEL and spec.has_beta
        buf = lay.empty(xp, ct, 2)
        g, t = buf[:C], buf[C:]
        lay.to_cn(xp, gy, ct, out=g)

        if not spec.relu:
            # h_k = gy a_k r_k  =>  H0 = a (gy^T r), H1 = a ((gy xc)^T r): one product
            # (with beta, a ones column of r gives gbeta = sum_i gy as well)
            xp.multiply(g, xc, out=t)
            G, = _arrays.fetch(xp, [xp.matmul(buf, _with_ones_column(xp, r)
                                              if channel_beta else r)], ct)
            H0, H1 = G[:C, :K] * coef.a, G[C:, :K] * coef.a
            gbeta = G[:C, K] if channel_beta else None
            gx = None                               # one fused pass below
        else:
            H = xp.empty((2 * C, K), ct)
            gx = lay.empty(xp, ct)
            u = lay.empty(xp, ct)
            mask = lay.empty(xp, numpy.bool_)
            for k in range(K):
                xp.greater(_term(xp, st, xc, k, t), 0, out=mask)
                xp.multiply(g, mask, out=t)
                t *= st.rTa[k][None, :]              # h_k
                H[:C, k] = t.sum(axis=1)
                xp.multiply(t, xc, out=u)
                H[C:, k] = u.sum(axis=1)
                if k == 0:
                    xp.multiply(t, st.P[:, k:k + 1], out=gx)
                else:
                    t *= st.P[:, k:k + 1]
                    gx += t
            del mask, u
            H = _arrays.fetch(xp, [H], ct)[0]
            H0, H1 = H[:C], H[C:]
            gbeta = H0.sum(axis=1) if channel_beta else None

        S, mc = coef.S, coef.mc
        S3 = S * S * S
        D = H1 - mc * H0                            # sum_i h_k (xc - mc_k)
        # the parameters' gradients are this process's (its loss depends on gamma and
        # beta only through its own points); the input's go through the statistics,
        # which depend on every process's points
        ggamma = None
        if spec.mode == _CHANNEL:
            if spec.has_gamma:
                ggamma = (S * D).sum(axis=1)
        else:
            if spec.mode == _COMPONENT and spec.has_gamma:
                ggamma = (-0.5 * D * coef.var * S3).T
            if spec.mode == _COMPONENT and spec.has_beta:
                gbeta = -(S * H0).T
        if self.reducer is not None:                # sums over every process's points
            H0, D = _reduce_sums(self.reducer, [H0, D])
        dS, dM = D, -(S * H0)
        if spec.mode == _CHANNEL and spec.has_gamma:
            dS = D * coef.gc[:, None]
            dM = dM * coef.gc[:, None]
        if spec.mode == _COMPONENT:
            dvar = -0.5 * dS * coef.gk * S3
        else:
            dvar = -0.5 * dS * S3

        send = [g for g in (ggamma, gbeta) if g is not None]
        if spec.train:
            # through mu = nu_hat^T xc and var = nu_hat^T xc^2 - mu^2
            dvar = dvar * coef.var_pos
            dmu = dM - 2 * coef.muc * dvar
            send += [2 * dvar / coef.s, dmu / coef.s]
        dev = _arrays.send(xp, send, ct)
        if not spec.relu:
            # gx = gy * (a P) r^T [+ xc * (2 dvar / s) r^T + (dmu / s) r^T]
            gx = kernels.combine(t, g, st.wp, st.rT, v=xc if spec.train else None,
                                 B=dev[-2] if spec.train else None,
                                 Cm=dev[-1] if spec.train else None)
            spare = g
        else:
            if spec.train:
                t = lay.expand(xp, dev[-2], r, out=t)
                t *= xc
                gx += t
                gx += lay.expand(xp, dev[-1], r, out=t)
            spare = t

        dtypes = self.dtypes
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

def _prepare(x, gamma, beta, resp, fname, what='K'):
    xa = _raw(x)
    ra = _raw(resp)
    _check_x_resp(xa, ra, fname)
    mode = _affine_mode(_raw(gamma), _raw(beta), xa.shape[1], ra.shape[1], what)
    params = [p for p in (gamma, beta) if p is not None]
    return xa, ra, mode, params


def _train(x, gamma, beta, resp, eps, lambda_scaling, relu, return_stats, fname,
           reducer=None):
    _check_eps(eps)
    xa, ra, mode, params = _prepare(x, gamma, beta, resp, fname)
    node = MixtureNormalizationFunction(ra, mode, gamma is not None, beta is not None,
                                        eps, lambda_scaling, relu=relu, reducer=reducer)
    y, = node.apply([x] + params)
    return (y, node.stats) if return_stats else y


def mixture_normalization(x, gamma, beta, resp, eps=2e-5, lambda_scaling=True,
                          return_stats=False, reducer=None):
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
        return_stats: also return the :class:`BatchStats` used.
        reducer: None, or the collectives of a group of processes
            (:class:`mixnorm.distributed.Reducer`): the statistics are then those
            of all processes' points together, ``x`` and ``resp`` being this
            process's part (synchronized MN); the gradients are exact for the
            union as well.

    Returns:
        Variable of x's shape and dtype; with ``return_stats`` a tuple
        ``(y, BatchStats(weights, means, variances))`` of arrays (K,), (K, C),
        (K, C) in the compute dtype (``variances`` clamped at 0, without eps),
        as :func:`mixture_moments` gives them.  Gradients flow to x (also
        through mu_k and var_k), gamma and beta.  The node keeps one (n, C)
        buffer of the compute dtype for backward.

    Raises ``ValueError`` when the batch moments are not finite (NaN/Inf input,
    or finite input whose squares overflow the compute dtype), saying which.
    """
    return _train(x, gamma, beta, resp, eps, lambda_scaling, False, return_stats,
                  'mixture_normalization', reducer)


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
    return _train(x, gamma, beta, resp, eps, lambda_scaling, True, return_stats,
                  'mixture_normalization_relu')


def fixed_mixture_normalization(x, gamma, beta, resp, means, variances, scale,
                                eps=2e-5):
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
    fname = 'fixed_mixture_normalization'
    xa, ra, mode, params = _prepare(x, gamma, beta, resp, fname, 'M')
    C, M = xa.shape[1], ra.shape[1]
    means, variances, scale = _raw(means), _raw(variances), _raw(scale)
    for name, arr, shape in (('means', means, (M, C)), ('variances', variances, (M, C)),
                             ('scale', scale, (M,))):
        if tuple(arr.shape) != shape:
            raise ValueError('{}: {} must have shape {} (M = resp.shape[1], C = '
                             'x.shape[1]), got {}'.format(fname, name, shape,
                                                         tuple(arr.shape)))
        if _arrays.get_array_module(arr) is not _arrays.get_array_module(xa):
            raise ValueError('{}: {} must live on the same device as x'.format(fname, name))
    node = FixedMixtureNormalizationFunction(ra, means, variances, scale, mode,
                                             gamma is not None, beta is not None, eps)
    y, = node.apply([x] + params)
    return y


def mixture_moments(x, resp):
    """Batch statistics used by :func:`mixture_normalization` (Eq. 35-36).

    Args:
        x: (N, C) or (N, C, *spatial) array (or Variable, read only).
        resp: (n, K) posteriors.

    Returns:
        :class:`BatchStats` ``(weights, means, variances)`` of shapes (K,), (K, C),
        (K, C) in the compute dtype (float32 for float16 input):
        ``lam_k = mean_i resp_ik``, ``mu = nu_hat^T x``,
        ``var = max(nu_hat^T x^2 - mu^2, 0)``.
    """
    xa = _raw(x)
    ra = _raw(resp)
    _check_x_resp(xa, ra, 'mixture_moments')
    xp = _arrays.get_array_module(xa)
    ct = _compute_dtype(xa.dtype)
    lay = _Layout(xa.shape)
    _, _, small = _device_moments(xp, lay, xa, ra.astype(ct, copy=False), ct)
    M, s, c = _arrays.fetch(xp, small, ct)
    if not numpy.isfinite(M).all():
        _raise_non_finite_moments(xa, ct)
    _, lam, muc, _, var = _host_moments(M, s, lay.n, ct)
    return BatchStats(*_arrays.send(xp, [lam, (muc + c[:, None]).T, var.T], ct))
