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
as Chainer splits ``batch_normalization`` from ``fixed_batch_normalization`` (and,
like the latter, the fixed node takes its means and variances as inputs and
differentiates them when they are Variables); both check their input types as
Chainer's nodes do and hand an ordinary backward to :class:`MixtureNormalizationGrad`
with what the forward saved, a named :class:`_Saved` (the host
:class:`_Coefficients`, the :class:`_DeviceState`, the shifted input and ``resp``);
it builds each gradient by name.  :func:`mixture_normalization_relu`
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
* Training on one process (the linear form, no ``reducer``) runs on the device
  end to end (:func:`_forward_on_device`, :func:`_backward_on_device`): a shift kernel,
  a stacking kernel ``[xc; xc^2; 1]`` with ``[resp | 1]``, one product for the moments
  and column sums, one kernel for the (C, K) arithmetic of Eq. 35-37 (in float64 inside
  the kernel) and one writing the output in x's layout; the backward is a stacking
  kernel ``[gy; gy xc]``, one product, one chain-rule kernel and one writing the input
  gradient.  Nothing is copied to the host.  Where the arrays are NumPy arrays the
  same arithmetic runs in cache-sized blocks with no (2C, n) stack: for input whose
  samples hold at least ``_HOST_MIN_L`` points in x's own layout, a block of samples at
  a time with batched products (:func:`_shift_moments_host`, :func:`_backward_host`,
  :func:`_combine_host`; the queue's inference likewise), else a block of channels at a
  time in the (C, n) layout with the kernels' twins.  Non-finite moments (NaN/Inf input, an
  overflow) and, under the component affine, a non-positive normalizer raise
  ``ValueError`` on the host always, and on a device under ``chainer.config.debug``
  only (reading the flag there is a synchronization); without it a NaN input gives
  NaN output, as BN's.
* With a ``reducer``, under Eq. 40, and in the fixed node, the (C, K) arithmetic runs
  on the host in float64: one device-to-host copy of the moments (which the reducer's
  collective needs on the host anyway) and one copy of the coefficients back per pass.
* The data are shifted by a per-channel estimate of the batch mean (mean of a
  strided subsample) before any moment is taken; the transform is shift
  invariant, and this keeps ``nu_hat^T x^2 - mu^2`` free of catastrophic
  cancellation in float32 when ``|mean| >> std``.
* float16 inputs are computed in float32 and cast back; float32 stays float32,
  float64 stays float64.  Gradients come back in each input's own dtype.
* Gradients are differentiable (double backprop, e.g. a gradient penalty).  An
  ordinary ``backward()`` (``enable_backprop`` off inside it) takes the analytic
  fast path above, unchanged: no input is retained, and its arithmetic and launch
  counts are those of first-order training.  A backward that builds a graph
  (``backward(enable_double_backprop=True)``, ``chainer.grad(...,
  enable_double_backprop=True)``) computes the same first-order formulas as
  chainer.functions (:func:`_differentiable_gradients`), with resp constant as in
  the first-order gradient (and, under Eq. 40, the ReLU's mask): the statistics
  are recomputed from the forward's shifted copy of x, and each input enters as
  its forward value plus a zero displacement attached to the input's graph node,
  so nothing more is kept by the forward.  Cost, on that path only: 40 to 70
  chainer.functions nodes (about 7 more per component under Eq. 40), whose graph
  holds 4 to 6 arrays of x's size (a few more under Eq. 40), in place of the fast
  path's one fused pass; its second backward is that graph's.  Not implemented
  with a ``reducer`` (synchronized statistics).
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

import functools
from typing import NamedTuple

import numpy

import chainer
from chainer import function_node
from chainer.utils import type_check

from mixnorm import _arrays
from mixnorm import _collectives
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
    'QueueMixtureNormalizationFunction',
    'queue_mixture_normalization',
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

    def expand(self, xp, coef, resp, out=None):
        """(C, K') coefficients -> (C, n) array ``sum_k coef[c, k] resp[i, k]``.

        ``out``: optional (C, n) block of :meth:`empty` to write into.
        """
        if resp.shape[1] == 1:     # an outer product: BLAS with k = 1 is ~10x slower
            if out is None:
                return coef * resp.T if not self.rows else (resp * coef.T).T
            if self.rows:
                xp.multiply(resp, coef.T, out=out.T)
            else:
                xp.multiply(coef, resp.T, out=out)
            return out
        if self.rows:
            if out is None:
                return xp.matmul(resp, coef.T).T
            if out.T.flags.c_contiguous:
                xp.matmul(resp, coef.T, out=out.T)
            else:                                  # a block of a stacked buffer
                out[...] = xp.matmul(resp, coef.T).T
            return out
        return xp.matmul(coef, resp.T, out=out)


def _with_ones_column(xp, resp):
    n, k = resp.shape
    with_ones = xp.empty((n, k + 1), resp.dtype)
    with_ones[:, :k] = resp
    with_ones[:, k] = 1
    return with_ones


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

def _shift_estimate(xp, layout, x, dtype):
    """Per-channel mean of a strided subsample of about 1000 points.

    Only used as a shift before taking moments (the transform is shift
    invariant), so it needs to be close to the batch mean, not equal to it.
    """
    src = layout.src3(x)
    if layout.rows:
        return src[:, ::max(1, layout.N // 1024)].mean(axis=1, dtype=dtype)
    sub = src[:, ::max(1, layout.N // 32), ::max(1, layout.L // 32)]
    return sub.mean(axis=(1, 2), dtype=dtype)


def _device_moments(xp, layout, x, resp, dtype):
    """``xc`` = x minus a per-channel shift ``c`` close to the batch mean, as the
    first (C, n) block of a stacked (2C, n) buffer whose second block is free,
    and the small device arrays ``[[xc; xc^2]^T resp (2C, K), colsum(resp) (K,),
    shift (C,)]``.
    Moments are taken of ``xc`` so that ``E[x^2] - mu^2`` does not cancel."""
    C = layout.C
    work = layout.empty(xp, dtype, 2)
    xc, spare = work[:C], work[C:]
    shift = _shift_estimate(xp, layout, x, dtype)
    layout.to_cn(xp, x, dtype, shift=shift, out=xc)
    xp.multiply(xc, xc, out=spare)
    return xc, spare, [xp.matmul(work, resp), resp.sum(axis=0), shift]


class _Moments(NamedTuple):
    """Eq. 35-36 on the host (float64): ``colsum`` (K,) the floored column sums of resp,
    ``weights`` lambda (K,), ``mean`` (C, K) mu - c about the shift c of the (C, n)
    passes, ``var_raw`` (C, K) nu_hat^T xc^2 - (mu - c)^2 and ``var`` = max(var_raw, 0)."""
    colsum: object
    weights: object
    mean: object
    var_raw: object
    var: object


def _host_moments(moments, colsum, n, dtype):
    """:class:`_Moments` from the (2C, K) moments ``[xc; xc^2]^T r`` and the column sums
    of r of :func:`_device_moments` over ``n`` points (host, float64)."""
    C = moments.shape[0] // 2
    tiny = numpy.finfo(dtype).tiny
    colsum = numpy.maximum(colsum, tiny)
    weights = numpy.maximum(colsum / n, tiny)
    mean = moments[:C] / colsum
    var_raw = moments[C:] / colsum - mean * mean
    return _Moments(colsum, weights, mean, var_raw, numpy.maximum(var_raw, 0))


# --------------------------------------------------------------------------
# what a forward computes and what it hands its backward
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

    ``shift`` c (C,) is what the (C, n) passes subtract from x; ``mean`` (C, K) is
    mu_k - c, and ``centre`` the same plus beta_k under the component affine (Eq. 37);
    ``inv_std`` S (C, K) is 1 / sqrt(var_k (* gamma_k) + eps) (Eq. 35, 37); ``scale``
    a (K,) is the factor of component k (1 / sqrt(lambda_k) of Eq. 34, or the given
    scale).  ``gamma_channel``/``beta_channel`` (C,) and ``gamma_component`` (C, K)
    are the affine parameters in use, or None.  Training adds ``colsum`` (K,), the
    floored column sums of resp, and ``var_positive`` (C, K), where var_raw > 0 (the
    clamp at 0 passes the gradient there only).
    """
    scale: object
    inv_std: object
    centre: object
    mean: object
    var: object
    shift: object
    gamma_channel: object = None
    beta_channel: object = None
    gamma_component: object = None
    colsum: object = None
    var_positive: object = None


class _DeviceState(NamedTuple):
    """Device arrays of a forward that its backward reuses.  Linear form: ``x_weight``
    (C, K), the weight a_k S_k (* gamma) of xc in the output, and ``resp_t`` = resp^T
    (K, n).  ReLU form (Eq. 40): component k's pre-activation is
    ``xc * slope_k + offset_k`` (``slope``, ``offset`` (C, K)), weighted by
    ``resp_t_scaled`` = a_k resp^T (K, n)."""
    x_weight: object = None
    resp_t: object = None
    slope: object = None
    offset: object = None
    resp_t_scaled: object = None


class _Dtypes(NamedTuple):
    """The dtypes of a node's inputs, which their gradients take (None: no such input)."""
    x: object
    gamma: object = None
    beta: object = None
    means: object = None
    variances: object = None


class _Inputs(NamedTuple):
    """A node's inputs as its forward reads them: ``x``, ``gamma`` and ``beta`` (None
    where absent), the array module ``xp``, the compute ``dtype``, the ``layout`` of x,
    ``resp`` in the compute dtype, the ``params`` given and the input ``dtypes``."""
    x: object
    gamma: object
    beta: object
    xp: object
    dtype: object
    layout: object
    resp: object
    params: list
    dtypes: _Dtypes


class _Saved(NamedTuple):
    """What a forward hands :class:`MixtureNormalizationGrad`: the ``layout`` of x, the
    host :class:`_Coefficients`, the :class:`_DeviceState`, the shifted input ``xc``
    (C, n) of the compute dtype, ``resp`` (n, K) and the input :class:`_Dtypes`;
    ``params`` the host (float64) ``(gamma, beta)`` as the forward read them (None where
    absent), which the differentiable backward (:func:`_differentiable_gradients`)
    starts from."""
    layout: object
    coef: _Coefficients
    device: _DeviceState
    xc: object
    resp: object
    dtypes: _Dtypes
    params: tuple = (None, None)


class _FastSaved(NamedTuple):
    """What the device form of the training forward (:func:`_forward_on_device`) hands
    its backward: the ``layout`` of x, ``coef`` the :class:`_Coefficients` fields that the
    differentiable backward reads (device arrays: ``scale``, ``colsum``, ``mean``,
    ``var``), ``views`` the named views of the :func:`mixnorm.kernels.mn_coef` buffer
    ``buf``, the shifted input ``xc`` (C, n), ``resp`` (n, K) and ``resp1`` = [resp | 1]
    (n, K+1) of the compute dtype, the input :class:`_Dtypes` and ``params`` the
    (gamma, beta) device arrays of the compute dtype (None where absent).  On NumPy, for
    input with a spatial extent, ``xc`` holds x itself (N, C, L) in the compute dtype
    instead (x - c is recomputed a block at a time, c = ``coef.shift``) and ``by_sample``
    holds ``resp1`` by sample, (N, K+1, L) (:func:`_shift_moments_host`)."""
    layout: object
    coef: object
    views: dict
    buf: object
    xc: object
    resp: object
    resp1: object
    dtypes: _Dtypes
    params: tuple = (None, None)
    by_sample: object = None


def _read_inputs(inputs, spec, resp):
    """:class:`_Inputs` of a node's ``inputs``: x, then gamma and beta if the node has them."""
    x = inputs[0]
    params = list(inputs[1:])
    given = iter(params)
    gamma = next(given) if spec.has_gamma else None
    beta = next(given) if spec.has_beta else None
    dtype = _compute_dtype(x.dtype)
    dtypes = _Dtypes(x.dtype, None if gamma is None else gamma.dtype,
                     None if beta is None else beta.dtype)
    return _Inputs(x, gamma, beta, _arrays.get_array_module(x), dtype, _Layout(x.shape),
                   resp.astype(dtype, copy=False), params, dtypes)


def _host_params(spec, host):
    """(gamma, beta) host float64 arrays (None where absent) from those fetched."""
    given = iter(host)
    gamma = next(given) if spec.has_gamma else None
    beta = next(given) if spec.has_beta else None
    return gamma, beta


def _coefficients(spec, mean, var, scale, shift, gamma, beta, colsum=None,
                  var_positive=None, check=True):
    """Eq. 35 and 37 on the host: the normalizer and centre of every component
    (``gamma``/``beta`` the host parameters, None where absent)."""
    if spec.mode == _COMPONENT:
        gamma_component = gamma.T if gamma is not None else numpy.ones_like(var)
        denom = gamma_component * var + spec.eps
        centre = mean + beta.T if beta is not None else mean
    else:
        gamma_component = None
        denom = var + spec.eps
        centre = mean
    if check and not bool((denom > 0).all()):
        raise ValueError(
            'non-positive normalizer: {} + eps must be > 0 for every component and '
            'channel (min {})'.format(
                'gamma_k * var_k' if spec.mode == _COMPONENT else 'var',
                float(numpy.min(denom))))
    channel = spec.mode == _CHANNEL
    return _Coefficients(scale, 1 / numpy.sqrt(denom), centre, mean, var, shift,
                         gamma if channel else None, beta if channel else None,
                         gamma_component, colsum, var_positive)


def _non_finite_moments_error(x, dtype):
    """The error for batch moments that are not finite: NaN/Inf in ``x`` (with the
    counts), or finite values whose squares overflow the compute dtype (with max |x|)."""
    try:
        _gmm.check_finite(x.reshape(x.shape[0], -1), name='the input')
    except ValueError as e:
        return e
    xp = _arrays.get_array_module(x)
    return ValueError(
        'the input is finite but its second moments overflow {} (max |x| = {:g}): '
        'rescale the activations or compute in float64'.format(
            numpy.dtype(dtype).name, float(xp.abs(x).max())))


# --------------------------------------------------------------------------
# the normalizing pass: Eq. 34 (linear) or Eq. 40 (ReLU per component)
# --------------------------------------------------------------------------

def _normalize(spec, ins, coef, xc=None, spare=None, extra=()):
    """The normalizing pass: ``(y, device, extra_device, xc)``, y x-shaped, the
    :class:`_DeviceState` for the backward, the device copies of the host arrays
    ``extra`` (sent with the coefficients in one copy) and ``xc`` (computed here from
    the sent shift when None).  ``spare``: a free (C, n) buffer, or None."""
    xp = ins.xp
    # the pre-activation of component k is xc * slope_k + offset_k, the affine applied;
    # the channel beta is added once after the sum over k, except under Eq. 40, where
    # it enters every offset_k
    slope = coef.inv_std * coef.gamma_channel[:, None] \
        if coef.gamma_channel is not None else coef.inv_std
    offset = -coef.centre * slope
    if spec.relu:
        if coef.beta_channel is not None:
            offset = offset + coef.beta_channel[:, None]
        send = [slope, offset, coef.scale]
    else:
        send = [slope * coef.scale, offset * coef.scale]
    rest = _arrays.send(xp, send + ([coef.shift] if xc is None else []) + list(extra),
                        ins.dtype)
    coefs, rest = rest[:len(send)], rest[len(send):]
    if xc is None:
        xc = ins.layout.to_cn(xp, ins.x, ins.dtype, shift=rest[0])
        rest = rest[1:]
    if spec.relu:
        y, device = _normalize_relu(ins, xc, spare, *coefs)
    else:
        y, device = _normalize_linear(ins, xc, spare, *coefs,
                                      channel_beta=coef.beta_channel is not None)
    return y, device, rest, xc


def _normalize_linear(ins, xc, spare, x_weight, offset_weight, channel_beta):
    """Eq. 34 with the affine: y = sum_k a_k r_k (xc S_k + offset_k) + beta
    = xc * (a S) r^T + (a offset) r^T + beta, one fused pass (:func:`kernels.combine`)."""
    xp, layout, dtype = ins.xp, ins.layout, ins.dtype
    beta = ins.beta.astype(dtype, copy=False) if channel_beta else None
    resp_t = xp.ascontiguousarray(ins.resp.T)
    y = kernels.combine(spare if spare is not None else layout.empty(xp, dtype), xc,
                        x_weight, resp_t, Cm=offset_weight, beta=beta)
    return layout.output(xp, y, ins.x.dtype), _DeviceState(x_weight=x_weight, resp_t=resp_t)


def _normalize_relu(ins, xc, spare, slope, offset, scale):
    """Eq. 40: y = sum_k a_k r_k ReLU(xc * slope_k + offset_k), one (C, n) pass set per k."""
    xp, layout, dtype = ins.xp, ins.layout, ins.dtype
    K = ins.resp.shape[1]
    device = _DeviceState(slope=slope, offset=offset,
                          resp_t_scaled=xp.ascontiguousarray(ins.resp.T) * scale[:, None])
    y = layout.empty(xp, dtype)
    work = spare if spare is not None else (layout.empty(xp, dtype) if K > 1 else None)
    for k in range(K):
        out = y if k == 0 else work
        _pre_activation(xp, device, xc, k, out)
        xp.maximum(out, 0, out=out)
        out *= device.resp_t_scaled[k][None, :]
        if k > 0:
            y += out
    return layout.output(xp, y, ins.x.dtype, spare=work), device


def _pre_activation(xp, device, xc, k, out):
    """(C, n) pre-activation of component k (affine applied) into ``out``."""
    xp.multiply(xc, device.slope[:, k:k + 1], out=out)
    out += device.offset[:, k:k + 1]
    return out


# --------------------------------------------------------------------------
# function nodes
# --------------------------------------------------------------------------

def _input_names(spec):
    """The names of a node's inputs, in order: x, gamma and beta where given, and the
    fixed node's means and variances."""
    return (('x',) + ('gamma',) * spec.has_gamma + ('beta',) * spec.has_beta
            + (() if spec.train else ('means', 'variances')))


class _MixtureNode(function_node.FunctionNode):
    """What both mixture-normalization nodes share: the type check of their inputs
    and the backward.  An ordinary backward (``enable_backprop`` off) is handed to
    :class:`MixtureNormalizationGrad` with what the forward saved (a :class:`_Saved`);
    one that builds a graph (double backprop) to :func:`_differentiable_gradients`."""
    reducer = None

    def check_type_forward(self, in_types):
        spec = self.spec
        type_check._argname(in_types, _input_names(spec))
        x_type = in_types[0]
        type_check.expect(x_type.dtype.kind == 'f', x_type.ndim >= 2)
        # resp (n, K) holds a row for each of the n = N * prod(spatial) points
        type_check.expect(x_type.size == x_type.shape[1] * self.resp.shape[0])
        n_affine = spec.has_gamma + spec.has_beta
        for p_type in in_types[1:1 + n_affine]:
            type_check.expect(p_type.dtype.kind == 'f')
            if spec.mode == _CHANNEL:
                type_check.expect(p_type.ndim == 1, p_type.shape[0] == x_type.shape[1])
            else:
                type_check.expect(p_type.ndim == 2, p_type.shape[0] == self.resp.shape[1],
                                  p_type.shape[1] == x_type.shape[1])
        for s_type in in_types[1 + n_affine:]:      # the fixed node's means, variances
            type_check.expect(s_type.dtype.kind == 'f', s_type.ndim == 2,
                              s_type.shape[0] == self.resp.shape[1],
                              s_type.shape[1] == x_type.shape[1])

    def backward(self, indexes, grad_outputs):
        if chainer.config.enable_backprop:          # a graph of the gradient is asked for
            return _differentiable_gradients(self, indexes, grad_outputs[0])
        n_affine = self.spec.has_gamma + self.spec.has_beta
        grads = MixtureNormalizationGrad(
            self.spec, self._saved, reducer=self.reducer,
            statistics=any(i > n_affine for i in indexes)).apply(grad_outputs)
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
        ins = _read_inputs(inputs, spec, self.resp)
        if self.reducer is None and not spec.relu:
            y, self.stats, self._saved = _forward_on_device(spec, ins, self.lambda_scaling)
            return y,
        with numpy.errstate(over='ignore', invalid='ignore'):  # overflow: raised below
            xc, spare, small = _device_moments(ins.xp, ins.layout, ins.x, ins.resp,
                                               ins.dtype)
        host = _arrays.fetch(ins.xp, small + ins.params, ins.dtype)
        moments, colsum, shift = host[:3]
        stats, mu = _batch_moments(self.reducer, ins, moments, colsum, shift)
        scale = 1 / numpy.sqrt(stats.weights) if self.lambda_scaling \
            else numpy.ones_like(stats.weights)
        params = _host_params(spec, host[3:])
        coef = _coefficients(spec, stats.mean, stats.var, scale, shift, *params,
                             colsum=stats.colsum, var_positive=stats.var_raw > 0,
                             check=spec.mode == _COMPONENT)
        y, device, batch_stats, _ = _normalize(spec, ins, coef, xc, spare,
                                               extra=[stats.weights, mu.T, stats.var.T])
        self.stats = BatchStats(*batch_stats)
        self._saved = _Saved(ins.layout, coef, device, xc, ins.resp, ins.dtypes, params)
        return y,


_MODES = {_NONE: kernels.MN_NONE, _CHANNEL: kernels.MN_CHANNEL,
          _COMPONENT: kernels.MN_COMPONENT}


def _as3(a, layout):
    """An x-shaped array as the (N, C, L) view the kernels take ((N, C) -> (N, C, 1))."""
    if layout.rows:
        return a[:, :, None]
    return a.reshape(layout.N, layout.C, layout.L)


def _checks_on(xp):
    """Whether a forward checks its statistics (NaN/Inf, a non-positive normalizer):
    always on the host, where reading them costs nothing; on a device under
    ``chainer.config.debug`` only, since reading them is a synchronization."""
    return xp is numpy or bool(chainer.config.debug)


def _check_status(spec, views, x, dtype, gamma):
    """Raise the ValueError the statuses of :func:`mixnorm.kernels.mn_coef` call for."""
    status = float(_arrays.to_host(views['status'].max()))
    if status >= 2:
        raise _non_finite_moments_error(x, dtype)
    if status >= 1:
        var = _arrays.to_host(views['var']).astype(numpy.float64)
        g = _arrays.to_host(gamma).T.astype(numpy.float64) if gamma is not None else 1.0
        raise ValueError(
            'non-positive normalizer: gamma_k * var_k + eps must be > 0 for every '
            'component and channel (min {})'.format(float(numpy.min(g * var + spec.eps))))


def _forward_on_device(spec, ins, lambda_scaling):
    """The training forward of the linear form (Eq. 34-37) on one process, with the
    (C, K) arithmetic on the device: a shift kernel, a stacking kernel ``[xc; xc^2; 1]``
    and ``[resp | 1]``, one product for the moments and the column sums, a kernel for
    Eq. 35-37 and one writing the output in x's layout; no copy to the host.  Returns
    ``(y, BatchStats, _FastSaved)``."""
    xp, dtype, layout = ins.xp, ins.dtype, ins.layout
    C, n, K = layout.C, layout.n, ins.resp.shape[1]
    x = ins.x if ins.x.dtype == dtype else ins.x.astype(dtype)
    x3 = _as3(x, layout)
    shift = kernels.mn_shift(x3, kernels.mn_shift_steps(layout.N, layout.L, layout.rows))
    by_sample = None
    with numpy.errstate(over='ignore', invalid='ignore'):   # overflow: checked below
        if xp is numpy and layout.L >= _HOST_MIN_L:
            y = numpy.empty(x.shape, dtype)         # x - shift, then the output
            resp1, by_sample, moments = _shift_moments_host(x3, shift, ins.resp,
                                                            _as3(y, layout))
            xc = x3                     # x - shift is recomputed a block at a time
        elif xp is numpy:
            xc, resp1, moments = _stack_moments_host(x3, shift, ins.resp)
            y = numpy.empty(x.shape, dtype)
        else:
            work = xp.empty((2 * C + 1, n), dtype)
            resp1 = xp.empty((n, K + 1), dtype)
            kernels.mn_stack(x3, shift, ins.resp, work, resp1)
            moments = xp.matmul(work, resp1)                 # (2C+1, K+1)
            xc = work[:C]
            y = work[C:2 * C].reshape(x.shape)  # the squares are spent: reuse their memory
    gamma, beta = (None if p is None else p.astype(dtype, copy=False)
                   for p in (ins.gamma, ins.beta))
    mode = _MODES[spec.mode]
    with numpy.errstate(over='ignore', invalid='ignore', divide='ignore'):
        buf = kernels.mn_coef(moments, n, shift, gamma, beta, mode, spec.eps,
                              lambda_scaling)
    views = kernels.mn_coef_views(buf, C, K)
    if _checks_on(xp):
        _check_status(spec, views, ins.x, dtype, gamma)
    if by_sample is not None:
        with numpy.errstate(over='ignore', invalid='ignore'):
            _combine_host(_as3(y, layout), [views['x_weight'], views['offset_weight']],
                          by_sample, beta=beta if spec.mode == _CHANNEL else None)
    else:
        kernels.mn_combine(_as3(y, layout), xc, views['x_weight'], resp1,
                           Cm=views['offset_weight'],
                           beta=beta if spec.mode == _CHANNEL else None)
    if y.dtype != ins.x.dtype:
        y = y.astype(ins.x.dtype)
    coef = _Coefficients(views['scale'], views['inv_std'], views['centre'], views['mean'],
                         views['var'], shift, colsum=views['colsum'])
    saved = _FastSaved(layout, coef, views, buf, xc, ins.resp, resp1, ins.dtypes,
                       (gamma, beta), by_sample)
    return y, BatchStats(views['weights'], views['mu'], views['var_t']), saved


#: Elements per block of channels of the host's training passes (cache-resident).
_HOST_CHANNEL_BLOCK = 1 << 15

#: Elements per block of samples of the host's passes in x's layout (cache-resident).
_HOST_BLOCK = 3 << 16

#: The host's passes work in x's layout, a block of samples at a time, where each sample
#: has at least this many points (else a block of channels at a time in the (C, n)
#: layout, as the device does).
_HOST_MIN_L = 16


def _sample_block(N, C, L, stack=2):
    """Samples per block of the host's passes in x's layout (``stack`` (C, L) arrays per
    sample within :data:`_HOST_BLOCK` elements)."""
    return min(N, max(1, _HOST_BLOCK // (stack * C * L)))


def _plane(v, L):
    """A per-channel vector ``v`` (C,) repeated along a sample's L points, a C-ordered
    (C, L) array: an operation with a block of samples (b, C, L) then broadcasts over b
    only, with contiguous inner loops of C L elements."""
    return numpy.ascontiguousarray(numpy.broadcast_to(v[:, None], (v.shape[0], L)))


def _shift_moments_host(x3, shift, resp, out):
    """The moments of :func:`_forward_on_device` on NumPy, in x's layout, a block of
    samples at a time (the squares stay in cache): xc = x - shift written into ``out``
    (N, C, L), which the output then overwrites in place (:func:`_combine_host`),
    ``resp1`` = [resp | 1] (n, K+1), the same by sample, ``r1`` (N, K+1, L), and the
    moments ``[xc; xc^2; 1] resp1`` (2C+1, K+1), two batched products per block."""
    N, C, L = x3.shape
    K, dtype = resp.shape[1], out.dtype
    resp1 = numpy.empty((N * L, K + 1), dtype)
    resp1[:, :K] = resp
    resp1[:, K] = 1
    rows = resp1.reshape(N, L, K + 1)
    r1 = numpy.ascontiguousarray(rows.transpose(0, 2, 1))
    moments = numpy.empty((2 * C + 1, K + 1), dtype)
    moments[:2 * C] = _centred_sums(x3, _plane(shift, L), out, rows).reshape(2 * C, K + 1)
    moments[2 * C, :K] = resp.sum(axis=0)
    moments[2 * C, K] = N * L
    return resp1, r1, moments


def _centred_sums(x3, plane, out, rows, u3=None):
    """A block of samples at a time (cache-sized): xc = x - ``plane`` (C, L) written into
    ``out`` (N, C, L), and the sums ``[u; u xc] rows`` (2, C, K+1) over all points, with
    ``u`` = xc (the moments of the forward) or ``u3`` (N, C, L) (the gradient's sums),
    ``rows`` (N, L, K+1) the posteriors with a column of ones.  Two batched products per
    block, summed by position in the block."""
    N, C, L = x3.shape
    b = _sample_block(N, C, L)
    dtype = out.dtype
    prod = numpy.empty((b, C, L), dtype)
    part = numpy.empty((2, b, C, rows.shape[2]), dtype)
    acc = numpy.zeros((2, b, C, rows.shape[2]), dtype)
    for a0 in range(0, N, b):
        a1 = min(N, a0 + b)
        xc, v, p = out[a0:a1], prod[:a1 - a0], part[:, :a1 - a0]
        numpy.subtract(x3[a0:a1], plane, out=xc)
        u = xc if u3 is None else u3[a0:a1]
        numpy.multiply(u, xc, out=v)
        numpy.matmul(u, rows[a0:a1], out=p[0])
        numpy.matmul(v, rows[a0:a1], out=p[1])
        acc[:, :a1 - a0] += p
    return acc.sum(axis=1)


def _combine_host(out3, weights, r1, g3=None, beta=None):
    """:func:`mixnorm.kernels.mn_combine` in x's layout on NumPy, in place: ``out3`` (N, C,
    L) holds xc = x - shift and becomes ``xc * (W_0 r) + W_1 r + beta`` (the output;
    ``weights`` two (C, K) W's), or with ``g3`` ``g3 * (W_0 r) + xc * (W_1 r) + W_2 r``
    (the input gradient; three W's); ``r1`` the posteriors with a row of ones (N, K+1, L)
    (:func:`_shift_moments_host`), ``g3`` x-shaped (N, C, L), ``beta`` (C,), which enters
    the product through the row of ones.  One batched product per block of samples, then
    two (the output) or four (the gradient) elementwise passes in cache, nothing
    transposed."""
    N, C, L = out3.shape
    K, m = r1.shape[1] - 1, len(weights)
    dtype = out3.dtype
    if beta is not None and K > 1:              # beta enters with the row of ones
        W = numpy.zeros((m * C, K + 1), dtype)
        W[:, :K] = numpy.concatenate(weights)
        W[(m - 1) * C:, K] = beta
        r = r1
        beta = None
    else:
        W = numpy.concatenate(weights).astype(dtype, copy=False)          # (m C, K)
        r = r1[:, :K]
    return _combine_blocks(out3, W, r, g3, None if beta is None else _plane(beta, L))


def _combine_blocks(out3, W, r, g3=None, beta=None):
    """The blocks of :func:`_combine_host`, in place, from the stacked weights ``W``
    (m C, K') and the posteriors ``r`` (N, K', L) (m = 2: the output, m = 3 with
    ``g3``: the input gradient); ``beta`` a (C, L) plane or None."""
    N, C, L = out3.shape
    m = W.shape[0] // C
    b = _sample_block(N, C, L, m + 1)
    expanded = numpy.empty((b, m * C, L), out3.dtype)
    for a0 in range(0, N, b):
        a1 = min(N, a0 + b)
        e = expanded[:a1 - a0]
        if r.shape[1] == 1:     # an outer product: BLAS with k = 1 is much slower
            numpy.multiply(W[None], r[a0:a1], out=e)
        else:
            numpy.matmul(W, r[a0:a1], out=e)
        y = out3[a0:a1]
        if g3 is None:
            y *= e[:, :C]
        else:
            y *= e[:, C:2 * C]
            e0 = e[:, :C]
            e0 *= g3[a0:a1]
            y += e0
        y += e[:, (m - 1) * C:]
        if beta is not None:
            y += beta
    return out3


def _channel_blocks(C, n):
    step = max(1, _HOST_CHANNEL_BLOCK // max(n, 1))
    return [(c0, min(C, c0 + step)) for c0 in range(0, C, step)]


def _stack_moments_host(x3, shift, resp):
    """:func:`mixnorm.kernels.mn_stack` and the moments' product of
    :func:`_forward_on_device` on NumPy, a block of channels at a time so that the
    squares never leave the cache: ``xc`` = x - shift (C, n), ``resp1`` = [resp | 1]
    (n, K+1) and the moments ``[xc; xc^2; 1] resp1`` (2C+1, K+1)."""
    N, C, L = x3.shape
    n, K, dtype = N * L, resp.shape[1], x3.dtype
    xc = numpy.empty((C, n), dtype)
    resp1 = numpy.empty((n, K + 1), dtype)
    resp1[:, :K] = resp
    resp1[:, K] = 1
    moments = numpy.empty((2 * C + 1, K + 1), dtype)
    blocks = _channel_blocks(C, n)
    squares = numpy.empty((blocks[0][1], n), dtype)
    for c0, c1 in blocks:
        xb, sq = xc[c0:c1], squares[:c1 - c0]
        numpy.subtract(x3[:, c0:c1].transpose(1, 0, 2), shift[c0:c1, None, None],
                       out=xb.reshape(c1 - c0, N, L))
        numpy.multiply(xb, xb, out=sq)
        numpy.matmul(xb, resp1, out=moments[c0:c1])
        numpy.matmul(sq, resp1, out=moments[C + c0:C + c1])
    numpy.matmul(numpy.ones((1, n), dtype), resp1, out=moments[2 * C:])
    return xc, resp1, moments


def _grad_sums_host(g3, xc, resp1):
    """:func:`mixnorm.kernels.mn_grad_stack` and the product of :func:`_backward_on_device`
    on NumPy, a block of channels at a time: ``[gy; gy xc] resp1`` (2C, K+1) from ``g3``
    (N, C, L) in x's layout, never forming the (2C, n) stack."""
    N, C, L = g3.shape
    n = N * L
    sums = numpy.empty((2 * C, resp1.shape[1]), xc.dtype)
    blocks = _channel_blocks(C, n)
    buf = numpy.empty((2, blocks[0][1], n), xc.dtype)
    for c0, c1 in blocks:
        gb, gxb = buf[0, :c1 - c0], buf[1, :c1 - c0]
        gb.reshape(c1 - c0, N, L)[...] = g3[:, c0:c1].transpose(1, 0, 2)
        numpy.multiply(gb, xc[c0:c1], out=gxb)
        numpy.matmul(gb, resp1, out=sums[c0:c1])
        numpy.matmul(gxb, resp1, out=sums[C + c0:C + c1])
    return sums


def _backward_on_device(spec, saved, gy):
    """The first-order gradients of :func:`_forward_on_device`: a stacking kernel
    ``[gy; gy xc]``, one product for the sums over the points (with the channel beta's
    gradient from the ones column), a kernel for the chain rule and one writing x's
    gradient in x's layout; no copy to the host."""
    xp = _arrays.get_array_module(gy)
    layout, views, dtype = saved.layout, saved.views, saved.xc.dtype
    C, n, K = layout.C, layout.n, saved.resp.shape[1]
    g = gy if gy.dtype == dtype else gy.astype(dtype)
    gamma, _ = saved.params
    if saved.by_sample is not None:
        return _backward_host(spec, saved, _as3(g, layout), gamma)
    if xp is numpy:
        g3 = _as3(g, layout)
        sums = _grad_sums_host(g3, saved.xc, saved.resp1)
        gx, u = numpy.empty(layout.shape, dtype), g3.transpose(1, 0, 2)
    else:
        work = xp.empty((2 * C, n), dtype)
        kernels.mn_grad_stack(_as3(g, layout), saved.xc, work)
        sums = xp.matmul(work, saved.resp1)                  # (2C, K+1)
        gx, u = work[C:].reshape(layout.shape), work[:C]     # gy xc is spent
    grads = kernels.mn_grad_coef_views(
        kernels.mn_grad_coef(sums, saved.buf, gamma, _MODES[spec.mode], spec.has_gamma,
                             spec.has_beta), C, K)
    kernels.mn_combine(_as3(gx, layout), u, views['x_weight'], saved.resp1,
                       v=saved.xc, B=grads['x_var'], Cm=grads['x_mean'])
    return _gradients(spec, saved, gx, grads)


def _backward_host(spec, saved, g3, gamma):
    """:func:`_backward_on_device` after :func:`_shift_moments_host`, in x's layout: the
    sums ``[gy; gy xc] [r | 1]`` per block of samples (xc recomputed from x and written
    into the gradient's array), then, in place, ``gx = gy (A r) + xc (B r) + Cm r`` per
    block (:func:`_combine_host`)."""
    layout, views = saved.layout, saved.views
    x3, r1, shift = saved.xc, saved.by_sample, saved.coef.shift
    N, C, L = x3.shape
    K = r1.shape[1] - 1
    rows = saved.resp1.reshape(N, L, K + 1)
    gx = numpy.empty(layout.shape, x3.dtype)
    gx3 = _as3(gx, layout)
    sums = _centred_sums(x3, _plane(shift, L), gx3, rows, g3).reshape(2 * C, K + 1)
    grads = kernels.mn_grad_coef_views(
        kernels.mn_grad_coef(sums, saved.buf, gamma,
                             _MODES[spec.mode], spec.has_gamma, spec.has_beta), C, K)
    _combine_host(gx3, [views['x_weight'], grads['x_var'], grads['x_mean']], r1,
                  g3=g3)
    return _gradients(spec, saved, gx, grads)


def _gradients(spec, saved, gx, grads):
    """The outputs of the first-order backward: x's gradient, then gamma's and beta's
    where the node has them, each in its input's dtype."""
    C, K = saved.layout.C, saved.resp.shape[1]
    dtypes = saved.dtypes
    outputs = [gx.astype(dtypes.x, copy=False)]
    shape = (C,) if spec.mode == _CHANNEL else (K, C)
    for name in ('gamma', 'beta'):
        if getattr(spec, 'has_' + name):
            size = C if spec.mode == _CHANNEL else C * K
            outputs.append(grads[name][:size].reshape(shape).astype(
                getattr(dtypes, name), copy=False))
    return tuple(outputs)


def _batch_moments(reducer, ins, moments, colsum, shift):
    """The batch's :class:`_Moments` (``mean`` about this rank's ``shift``) and mu (C, K):
    of this process's points, or with a ``reducer`` of all ranks' points (the same mu
    and var on every rank).  Non-finite moments raise ``ValueError`` (on every rank)."""
    if reducer is None:
        if not numpy.isfinite(moments).all():       # known on the host: no extra sync
            raise _non_finite_moments_error(ins.x, ins.dtype)
        stats = _host_moments(moments, colsum, ins.layout.n, ins.dtype)
        return stats, stats.mean + shift[:, None]
    total, colsum, n, shift0 = _reduce_moments(reducer, ins, moments, colsum, shift)
    stats = _host_moments(total, colsum, n, ins.dtype)
    # the same mu on every rank; mean is mu - c about this rank's shift c
    return stats._replace(mean=stats.mean + (shift0 - shift)[:, None]), \
        stats.mean + shift0[:, None]


def _reduce_moments(reducer, ins, moments, colsum, shift):
    """The moments of the union of all ranks' points, about rank 0's shift.

    Each rank's ``moments`` = [sum r xc; sum r xc^2] (2C, K) are taken about its own
    ``shift`` c (C,); one all-gather brings every rank's ``(moments, colsum, c, n)``, and
    each rank re-centres them on rank 0's shift c0 (``x - c0 = xc + d``, ``d = c - c0``:
    ``sum r (x - c0) = S1 + d s``, ``sum r (x - c0)^2 = S2 + 2 d S1 + d^2 s``) and adds
    them up in rank order, so every rank gets the same float64 numbers.  A rank whose
    moments are not finite (NaN/Inf input, or an overflow) makes every rank raise the
    same ``ValueError``, naming it and quoting its diagnosis.  Returns
    ``(moments0, colsum, n, c0)``.
    """
    C, K = shift.shape[0], colsum.shape[0]
    size = 2 * C * K
    every = reducer.allgather(numpy.concatenate([moments.ravel(), colsum, shift,
                                                 [ins.layout.n]]))
    finite = numpy.isfinite(every[:, :size]).all(axis=1)
    if not finite.all():
        def check():
            if not finite[reducer.rank]:
                raise _non_finite_moments_error(ins.x, ins.dtype)
        _collectives.agree(reducer, check, 'the input of rank(s) {ranks} is not finite or '
                           'its moments overflow, so the synchronized statistics cannot be '
                           'computed')
    c0 = every[0, size + K:size + K + C]
    total = numpy.zeros((2 * C, K))
    colsum0 = numpy.zeros(K)
    n0 = 0
    for row in every:
        mp = row[:size].reshape(2 * C, K)
        sp = row[size:size + K]
        d = (row[size + K:size + K + C] - c0)[:, None]
        total[:C] += mp[:C] + d * sp
        total[C:] += mp[C:] + 2 * d * mp[:C] + d * d * sp
        colsum0 += sp
        n0 += int(row[-1])
    if not numpy.isfinite(total).all():       # the same numbers on every rank
        raise ValueError('the moments of the union of all ranks\' inputs overflow: '
                         'rescale the activations or compute in float64')
    return total, colsum0, n0, c0


def _reduce_sums(reducer, arrays):
    """Host arrays summed over all ranks (the same numbers on every rank)."""
    flat = reducer.sum(numpy.concatenate([numpy.ravel(a) for a in arrays]))
    out, i = [], 0
    for a in arrays:
        out.append(flat[i:i + a.size].reshape(a.shape))
        i += a.size
    return out


class FixedMixtureNormalizationFunction(_MixtureNode):
    """Mixture normalization with given component statistics (inference, Eq. 38).

    Inputs: ``x``, then ``gamma`` (if given), then ``beta`` (if given), then ``means``
    and ``variances`` (M, C), as ``fixed_batch_normalization`` takes its mean and var:
    their gradients are computed only when asked for (Variables that require them);
    ``resp`` and ``scale`` are constants.
    """

    def __init__(self, resp, scale, mode, has_gamma, has_beta, eps=2e-5):
        self.resp = resp
        self.scale = scale
        self.spec = _Spec(mode, bool(has_gamma), bool(has_beta), False, float(eps), False)

    def forward(self, inputs):
        spec = self.spec
        means, variances = inputs[-2:]
        ins = _read_inputs(inputs[:-2], spec, self.resp)
        host = _arrays.fetch(ins.xp, [means, variances, self.scale] + ins.params,
                             ins.dtype)
        means, variances, scale = host[:3]
        shift = means.mean(axis=0)
        params = _host_params(spec, host[3:])
        coef = _coefficients(spec, means.T - shift[:, None], variances.T, scale, shift,
                             *params)
        y, device, _, xc = _normalize(spec, ins, coef)
        dtypes = ins.dtypes._replace(means=inputs[-2].dtype, variances=inputs[-1].dtype)
        self._saved = _Saved(ins.layout, coef, device, xc, ins.resp, dtypes, params)
        return y,


# --------------------------------------------------------------------------
# the gradient node
# --------------------------------------------------------------------------

class _ComponentSums(NamedTuple):
    """Host (C, K) sums over this rank's points of h_k = gy * a_k r_k (under Eq. 40 also
    times the ReLU's mask): ``h`` = sum_i h_ik and ``hx`` = sum_i h_ik xc_i;
    ``beta`` (C,) the channel beta's gradient, or None; ``gx`` the ReLU form's part
    sum_k h_k slope_k of the input gradient (device; None for the linear form)."""
    h: object
    hx: object
    beta: object = None
    gx: object = None


class _HostGradients(NamedTuple):
    """The chain rule's results on the host: the parameters' gradients (None where
    absent) and, in training, the (C, K) coefficients through which x reaches the
    statistics: ``x_var`` = 2 dL/dvar / s of xc r^T and ``x_mean`` = dL/dmu / s of r^T
    in the input gradient (None for fixed statistics).  With fixed statistics whose
    gradients are asked for, ``means`` and ``variances`` (M, C) are dL/dmeans and
    dL/dvariances."""
    gamma: object = None
    beta: object = None
    x_var: object = None
    x_mean: object = None
    means: object = None
    variances: object = None


class MixtureNormalizationGrad(function_node.FunctionNode):
    """Analytic first-order gradient of both mixture-normalization nodes.

    Arguments: the node's :class:`_Spec`, what its forward saved (:class:`_Saved`) and
    its ``reducer``.  Input ``gy``; outputs the gradients of x, then of gamma and beta
    where the node has them, then, with ``statistics`` (fixed statistics only), of
    means and variances.  With batch statistics (training) x's gradient also flows
    through mu = nu_hat^T x and var = nu_hat^T x^2 - mu^2, summed over every rank's
    points with a reducer.

    This node is the fast path of an ordinary backward and is not itself
    differentiable: a backward that builds a graph (``enable_double_backprop``) goes
    through :func:`_differentiable_gradients` instead.
    """

    def __init__(self, spec, saved, reducer=None, statistics=False):
        self.spec, self.saved, self.reducer = spec, saved, reducer
        self.statistics = bool(statistics) and not spec.train

    def check_type_forward(self, in_types):
        type_check._argname(in_types, ('gy',))
        gy_type, = in_types
        type_check.expect(gy_type.dtype == self.saved.dtypes.x,
                          gy_type.shape == self.saved.layout.shape)

    def forward(self, inputs):
        gy, = inputs
        spec, saved = self.spec, self.saved
        if isinstance(saved, _FastSaved):
            return _backward_on_device(spec, saved, gy)
        xp = _arrays.get_array_module(gy)
        dtype, C = saved.xc.dtype, saved.layout.C
        work = saved.layout.empty(xp, dtype, 2)        # [gy; scratch] (2C, n)
        saved.layout.to_cn(xp, gy, dtype, out=work[:C])
        sums = (_relu_sums if spec.relu else _linear_sums)(xp, spec, saved, work)
        host = _host_gradients(spec, saved.coef, sums, self.reducer, self.statistics)
        grads = _send_gradients(xp, host, dtype)
        gx_form = _relu_gx if spec.relu else _linear_gx
        gx, spare = gx_form(xp, saved, sums, grads, work[:C], work[C:])
        dtypes = saved.dtypes
        outputs = [saved.layout.output(xp, gx, dtypes.x, spare=spare)]
        if spec.has_gamma:
            outputs.append(grads.gamma.astype(dtypes.gamma, copy=False))
        if spec.has_beta:
            outputs.append(grads.beta.astype(dtypes.beta, copy=False))
        if self.statistics:
            outputs.append(grads.means.astype(dtypes.means, copy=False))
            outputs.append(grads.variances.astype(dtypes.variances, copy=False))
        return tuple(outputs)

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError(
            'MixtureNormalizationGrad is the first-order fast path; the mixture-'
            'normalization nodes build a differentiable gradient themselves when '
            'enable_backprop is on (see _differentiable_gradients)')


def _linear_sums(xp, spec, saved, work):
    """:class:`_ComponentSums` of the linear form: h_k = gy a_k r_k, so sum h = a (gy^T r)
    and sum h xc = a ((gy xc)^T r), one product of ``work`` = [gy; gy xc] (with the
    channel beta a ones column of r gives its gradient sum_i gy as well)."""
    C, K = saved.layout.C, saved.resp.shape[1]
    channel_beta = spec.mode == _CHANNEL and spec.has_beta
    xp.multiply(work[:C], saved.xc, out=work[C:])
    resp = _with_ones_column(xp, saved.resp) if channel_beta else saved.resp
    sums, = _arrays.fetch(xp, [xp.matmul(work, resp)], saved.xc.dtype)
    scale = saved.coef.scale
    return _ComponentSums(sums[:C, :K] * scale, sums[C:, :K] * scale,
                          sums[:C, K] if channel_beta else None)


def _relu_sums(xp, spec, saved, work):
    """:class:`_ComponentSums` of the ReLU form (Eq. 40): per k, h_k = gy a_k r_k where
    component k's pre-activation is positive, and the input gradient's part
    sum_k h_k slope_k.  ``work`` = [gy; scratch]."""
    layout, device, xc = saved.layout, saved.device, saved.xc
    C, K, dtype = layout.C, saved.resp.shape[1], xc.dtype
    gy_cn, h_k = work[:C], work[C:]
    sums = xp.empty((2 * C, K), dtype)
    gx, hx_k, mask = layout.empty(xp, dtype), layout.empty(xp, dtype), layout.empty(xp, numpy.bool_)
    for k in range(K):
        xp.greater(_pre_activation(xp, device, xc, k, h_k), 0, out=mask)
        xp.multiply(gy_cn, mask, out=h_k)
        h_k *= device.resp_t_scaled[k][None, :]
        sums[:C, k] = h_k.sum(axis=1)
        xp.multiply(h_k, xc, out=hx_k)
        sums[C:, k] = hx_k.sum(axis=1)
        if k == 0:
            xp.multiply(h_k, device.slope[:, k:k + 1], out=gx)
        else:
            h_k *= device.slope[:, k:k + 1]
            gx += h_k
    del mask, hx_k
    sums, = _arrays.fetch(xp, [sums], dtype)
    h = sums[:C]
    beta = h.sum(axis=1) if spec.mode == _CHANNEL and spec.has_beta else None
    return _ComponentSums(h, sums[C:], beta, gx)


def _host_gradients(spec, coef, sums, reducer, statistics=False):
    """The chain rule on the host (float64), a :class:`_HostGradients`.  The parameters'
    gradients are this rank's (its loss depends on gamma and beta only through its own
    points); the input's go through the statistics, which depend on every rank's
    points, so their sums are reduced first.  ``statistics``: with fixed statistics,
    also the gradients of the means and variances."""
    inv_std = coef.inv_std
    inv_std3 = inv_std * inv_std * inv_std
    centred = sums.hx - coef.centre * sums.h          # sum_i h_k (xc - centre_k)
    gamma, beta = None, sums.beta
    if spec.mode == _CHANNEL and spec.has_gamma:
        gamma = (inv_std * centred).sum(axis=1)
    if spec.mode == _COMPONENT and spec.has_gamma:
        gamma = (-0.5 * centred * coef.var * inv_std3).T
    if spec.mode == _COMPONENT and spec.has_beta:
        beta = -(inv_std * sums.h).T
    if not spec.train:
        if statistics:
            d_mean, d_var = _moment_gradients(spec, coef, sums.h, centred, inv_std3)
            return _HostGradients(gamma, beta, means=d_mean.T, variances=d_var.T)
        return _HostGradients(gamma, beta)
    h = sums.h
    if reducer is not None:                           # sums over every rank's points
        h, centred = _reduce_sums(reducer, [h, centred])
    return _HostGradients(gamma, beta, *_statistics_gradients(spec, coef, h, centred,
                                                              inv_std3))


def _moment_gradients(spec, coef, h, centred, inv_std3):
    """dL/dmu_k and dL/dvar_k (C, K) from the sums ``h`` and ``centred`` (C, K): the
    gradients of the fixed node's means and variances, and where the training node's
    statistics start."""
    d_std, d_mean = centred, -(coef.inv_std * h)
    if coef.gamma_channel is not None:
        d_std = centred * coef.gamma_channel[:, None]
        d_mean = d_mean * coef.gamma_channel[:, None]
    if spec.mode == _COMPONENT:
        d_var = -0.5 * d_std * coef.gamma_component * inv_std3
    else:
        d_var = -0.5 * d_std * inv_std3
    return d_mean, d_var


def _statistics_gradients(spec, coef, h, centred, inv_std3):
    """Eq. 35-36 backwards: dL/dvar and dL/dmu from the sums ``h`` and ``centred``
    (C, K), as the coefficients ``(2 dvar / s, dmu / s)`` of xc r^T and r^T in gx."""
    d_mean, d_var = _moment_gradients(spec, coef, h, centred, inv_std3)
    # through mu = nu_hat^T xc and var = nu_hat^T xc^2 - mu^2 (clamped at 0)
    d_var = d_var * coef.var_positive
    d_mu = d_mean - 2 * coef.mean * d_var
    return 2 * d_var / coef.colsum, d_mu / coef.colsum


def _send_gradients(xp, host, dtype):
    """:class:`_HostGradients` on the device, the arrays present sent in one copy."""
    present = [name for name, value in zip(host._fields, host) if value is not None]
    sent = _arrays.send(xp, [getattr(host, name) for name in present], dtype)
    return _HostGradients(**dict(zip(present, sent)))


def _linear_gx(xp, saved, sums, grads, gy_cn, scratch):
    """The input gradient of the linear form, one fused pass:
    gx = gy * (a S) r^T [+ xc * (2 dvar / s) r^T + (dmu / s) r^T].  Returns it and
    the (C, n) buffer left free."""
    device, train = saved.device, grads.x_var is not None
    gx = kernels.combine(scratch, gy_cn, device.x_weight, device.resp_t,
                         v=saved.xc if train else None, B=grads.x_var, Cm=grads.x_mean)
    return gx, gy_cn


def _relu_gx(xp, saved, sums, grads, gy_cn, scratch):
    """The input gradient of the ReLU form: its part from the per-component pass plus,
    in training, the part through the statistics.  Returns it and a free buffer."""
    gx = sums.gx
    if grads.x_var is not None:
        layout = saved.layout
        scratch = layout.expand(xp, grads.x_var, saved.resp, out=scratch)
        scratch *= saved.xc
        gx += scratch
        gx += layout.expand(xp, grads.x_mean, saved.resp, out=scratch)
    return gx, scratch


# --------------------------------------------------------------------------
# the differentiable backward (double backprop)
# --------------------------------------------------------------------------

def _constant(a):
    return chainer.Variable(a, requires_grad=False)


def _cn_variable(layout, v):
    """An x-shaped Variable as (C, n), the layout of the fast path's passes."""
    if layout.rows:
        return chainer.functions.transpose(v)
    F = chainer.functions
    return F.reshape(F.transpose(F.reshape(v, (layout.N, layout.C, layout.L)), (1, 0, 2)),
                     (layout.C, layout.n))


def _x_shaped_variable(layout, v):
    """A (C, n) Variable in the shape of x."""
    if layout.rows:
        return chainer.functions.transpose(v)
    F = chainer.functions
    return F.reshape(F.transpose(F.reshape(v, layout.shape3), (1, 0, 2)), layout.shape)


def _input_variable(node, index, value, dtype, arrange=None):
    """A Variable of ``value`` (a device array of the compute ``dtype``: the node's input
    ``index`` as the forward read it, arranged as the formulas use it) whose gradient
    flows to that input of ``node``.

    The input's array is not retained by the forward (that would keep an x-sized
    buffer alive for every ordinary backward).  Instead a zero displacement ``d`` of
    the input's shape and dtype is attached to the input's graph node, and the
    Variable is ``value + arrange(cast(d))``: its value is the forward's and its
    gradient is the input's.  ``d`` goes into nothing but ``F.identity``, which does
    not retain it (a function that retains its inputs would write the zeros into the
    input's node).  ``arrange``: None, or a function of Variables (e.g. to (C, n))."""
    vnode = node.inputs[index]
    xp = _arrays.get_array_module(value)
    zero = xp.zeros(vnode.shape, vnode.dtype)
    d = chainer.functions.identity(
        chainer.Variable._init_unchecked(zero, requires_grad=True, node=vnode))
    d = chainer.functions.cast(d, dtype)
    return _constant(value) + (d if arrange is None else arrange(d))


def _on_device(xp, arrays, dtype):
    """``arrays`` as device arrays of ``dtype``: those already on the device of ``xp`` as
    they are (cast), the host arrays among them sent in one copy."""
    host = [a for a in arrays if _arrays.get_array_module(a) is not xp]
    sent = iter(_arrays.send(xp, host, dtype))
    return [a.astype(dtype, copy=False) if _arrays.get_array_module(a) is xp
            else next(sent) for a in arrays]


def _differentiable_gradients(node, indexes, gy):
    """The gradients of ``node``'s inputs ``indexes`` as Variables that can be
    differentiated again (double backprop), given ``gy`` (a Variable).

    The same first-order formulas as :class:`MixtureNormalizationGrad` (the sums h and
    centred, Eq. 35-37 backwards), written as chainer.functions over the (C, n) layout
    of the fast path, with the batch statistics recomputed as functions of x:
    mu - c = nu_hat^T xc and var = relu(nu_hat^T xc^2 - (mu - c)^2), xc the forward's
    shifted input.  ``resp`` is a constant, as in the first-order gradient; so is the
    ReLU's mask under Eq. 40 (the fast path's own).  The compute dtype is the
    forward's (float32 for float16 input); each gradient is cast to its input's dtype.
    """
    F = chainer.functions
    spec, saved = node.spec, node._saved
    if node.reducer is not None:
        raise NotImplementedError(
            'double backward of synchronized mixture normalization (a reducer) is not '
            'implemented')
    layout, coef, xc, resp = saved.layout, saved.coef, saved.xc, saved.resp
    if getattr(saved, 'by_sample', None) is not None:     # x in x's layout: x - c (C, n)
        xc = (xc.transpose(1, 0, 2) - coef.shift[:, None, None]).reshape(layout.C, layout.n)
    xp = _arrays.get_array_module(xc)
    dtype, C, K = xc.dtype, layout.C, resp.shape[1]
    names = _input_names(spec)
    wanted = {names[i] for i in indexes}
    position = {name: i for i, name in enumerate(names)}
    gamma_host, beta_host = saved.params
    component = spec.mode == _COMPONENT
    host = [coef.scale] + ([coef.colsum, None, None] if spec.train
                           else [None, coef.mean, coef.var]) + [gamma_host, beta_host]
    sent = iter(_on_device(xp, [a for a in host if a is not None], dtype))
    scale, colsum, mean0, var0, gamma0, beta0 = \
        [None if a is None else next(sent) for a in host]

    def variable(name, value, arrange=None):
        # every input that requires grad, asked for now or not: the gradients returned
        # may later be differentiated with respect to any of them
        if not node.inputs[position[name]].requires_grad:
            return _constant(value)
        return _input_variable(node, position[name], value, dtype, arrange)

    to_cn = functools.partial(_cn_variable, layout)
    X = variable('x', xc, to_cn)                                     # (C, n): x - c
    GY = to_cn(F.cast(gy, dtype))
    if spec.train:
        nu_hat = _constant(resp / colsum[None, :])
        mean = F.matmul(X, nu_hat)                                   # (C, K): mu - c
        var_raw = F.matmul(X * X, nu_hat) - mean * mean
        var = F.relu(var_raw)
    else:
        mean = variable('means', mean0, F.transpose)                 # (C, M): means - c
        var = variable('variances', var0, F.transpose)
    gamma = beta = None
    if spec.has_gamma:
        gamma = variable('gamma', gamma0.T if component else gamma0,
                         F.transpose if component else None)
    if spec.has_beta:
        beta = variable('beta', beta0.T if component else beta0,
                        F.transpose if component else None)
    # Eq. 35 and 37: S = 1 / sqrt(var (* gamma_k) + eps), centre = mu (+ beta_k)
    inv_std = 1 / F.sqrt((gamma * var if component and gamma is not None else var)
                         + spec.eps)
    centre = mean + beta if component and beta is not None else mean
    gamma_channel = F.reshape(gamma, (C, 1)) if gamma is not None and not component \
        else None
    slope = inv_std * gamma_channel if gamma_channel is not None else inv_std
    if spec.relu:               # Eq. 40: per component, behind the fast path's mask
        mask = layout.empty(xp, numpy.bool_)
        work = layout.empty(xp, dtype)
        hs, hxs, gx = [], [], None
        for k in range(K):
            xp.greater(_pre_activation(xp, saved.device, xc, k, work), 0, out=mask)
            h_k = GY * _constant(mask * saved.device.resp_t_scaled[k][None, :])
            hs.append(F.sum(h_k, axis=1))
            hxs.append(F.sum(h_k * X, axis=1))
            if 'x' in wanted:
                term = h_k * F.reshape(slope[:, k], (C, 1))
                gx = term if gx is None else gx + term
        h, hx = F.stack(hs, axis=1), F.stack(hxs, axis=1)            # (C, K)
    else:
        w = _constant(resp * scale[None, :])                         # a_k r_ik (n, K)
        h, hx = F.matmul(GY, w), F.matmul(GY * X, w)                 # (C, K)
        gx = GY * F.matmul(slope, w, transb=True) if 'x' in wanted else None
    centred = hx - centre * h                                        # sum h (xc - centre)
    grads = {}
    if spec.mode == _CHANNEL:
        if 'gamma' in wanted:
            grads['gamma'] = F.sum(inv_std * centred, axis=1)
        if 'beta' in wanted:
            grads['beta'] = F.sum(h, axis=1) if spec.relu else F.sum(GY, axis=1)
    inv_std3 = inv_std * inv_std * inv_std
    if component and 'gamma' in wanted:
        grads['gamma'] = F.transpose(-0.5 * centred * var * inv_std3)
    if component and 'beta' in wanted:
        grads['beta'] = F.transpose(-(inv_std * h))
    # dL/dmu and dL/dvar (the fixed node's means and variances; x's through the stats)
    d_mean = -(slope * h)
    d_std = centred * gamma_channel if gamma_channel is not None else centred
    d_var = -0.5 * d_std * inv_std3
    if component and gamma is not None:
        d_var = d_var * gamma
    if not spec.train:
        if 'means' in wanted:
            grads['means'] = F.transpose(d_mean)
        if 'variances' in wanted:
            grads['variances'] = F.transpose(d_var)
    elif 'x' in wanted:
        # through mu = nu_hat^T xc and var = nu_hat^T xc^2 - mu^2, clamped at 0
        d_var = d_var * _constant((var_raw.array > 0).astype(dtype))
        d_mu = d_mean - 2 * mean * d_var
        r, s = _constant(resp), _constant(colsum)
        gx = gx + X * F.matmul(2 * d_var / s, r, transb=True) \
            + F.matmul(d_mu / s, r, transb=True)
    if 'x' in wanted:
        grads['x'] = _x_shaped_variable(layout, gx)
    dtypes = saved.dtypes._asdict()
    return tuple(F.cast(grads[names[i]], dtypes[names[i]]) for i in indexes)


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------

def _prepare(x, gamma, beta, resp, fname, what='K'):
    x_array = _raw(x)
    resp_array = _raw(resp)
    _check_x_resp(x_array, resp_array, fname)
    mode = _affine_mode(_raw(gamma), _raw(beta), x_array.shape[1], resp_array.shape[1], what)
    params = [p for p in (gamma, beta) if p is not None]
    return x_array, resp_array, mode, params


def _train(x, gamma, beta, resp, eps, lambda_scaling, relu, return_stats, fname,
           reducer=None):
    _check_eps(eps)
    x_array, resp_array, mode, params = _prepare(x, gamma, beta, resp, fname)
    node = MixtureNormalizationFunction(resp_array, mode, gamma is not None, beta is not None,
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
        through mu_k and var_k), gamma and beta, and are differentiable in turn
        (without a reducer).  The node keeps the shifted input (C, n) of the
        compute dtype for backward (in one buffer with the output) and
        ``[resp | 1]``.

    Raises ``ValueError`` when the batch moments are not finite (NaN/Inf input,
    or finite input whose squares overflow the compute dtype), saying which: always
    for NumPy arrays and with a reducer; on a GPU without a reducer under
    ``chainer.config.debug`` only (the check would be a synchronization; a NaN input
    then gives NaN output).
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
        means, variances: (M, C) arrays, or Variables to differentiate (as the
            mean and var of ``chainer.functions.fixed_batch_normalization``).
        scale: (M,) per-component factor, e.g. ``1 / sqrt(lambda_m)`` or ones,
            constant.
        eps: added to the (scaled) variances.

    Gradients flow to x, gamma and beta, and to means and variances where they are
    Variables (computed only then; arrays cost nothing extra); resp and scale are
    constants.  The gradients are differentiable (see the module docstring).
    A ValueError is raised if a normalizer ``variances_m (* gamma_m) + eps`` is
    not positive.
    """
    _check_eps(eps)
    fname = 'fixed_mixture_normalization'
    x_array, resp_array, mode, params = _prepare(x, gamma, beta, resp, fname, 'M')
    C, M = x_array.shape[1], resp_array.shape[1]
    scale_array = _raw(scale)
    for name, arr, shape in (('means', _raw(means), (M, C)),
                             ('variances', _raw(variances), (M, C)),
                             ('scale', scale_array, (M,))):
        if tuple(arr.shape) != shape:
            raise ValueError('{}: {} must have shape {} (M = resp.shape[1], C = '
                             'x.shape[1]), got {}'.format(fname, name, shape,
                                                         tuple(arr.shape)))
        if _arrays.get_array_module(arr) is not _arrays.get_array_module(x_array):
            raise ValueError('{}: {} must live on the same device as x'.format(fname, name))
    node = FixedMixtureNormalizationFunction(resp_array, scale_array, mode,
                                             gamma is not None, beta is not None, eps)
    y, = node.apply([x] + params + [means, variances])
    return y


def _non_finite_input_error(x, layout, dtype):
    """The error for an inference input whose log-densities are not finite: NaN/Inf in
    ``x`` (with the counts), or finite values too large for the compute dtype."""
    xp = _arrays.get_array_module(x)
    points = x if layout.rows else xp.moveaxis(x.reshape(layout.N, layout.C, layout.L),
                                               1, 2).reshape(-1, layout.C)
    try:
        _gmm.check_finite(points)
    except ValueError as e:
        return e
    return ValueError(
        'the input is finite but its log-densities under the queue\'s mixture overflow {} '
        '(max |x| = {:g}): rescale the activations or compute in float64'.format(
            numpy.dtype(dtype).name, float(xp.abs(x).max())))


class QueueMixtureNormalizationFunction(function_node.FunctionNode):
    """Mixture normalization with the queue's mixture (inference, Eq. 38-39), the
    posteriors computed on the way: a stacking kernel ``[x - s; (x - s)^2; 1]``, one
    product for the log-densities of every point under the M components, one kernel for
    the posteriors and one for the standardization, mixing and affine, written in x's
    layout.  No copy to the host.

    Inputs: ``x``, then ``gamma`` and ``beta`` where given ((C,), or (K, C) under the
    component affine, component m = t K + k taking gamma_k and beta_k).  The backward
    recomputes through :class:`FixedMixtureNormalizationFunction` with the posteriors of
    this forward held constant (so it is differentiable again)."""

    def __init__(self, mixture, M, K, mode, has_gamma, has_beta, eps):
        self.mixture, self.M, self.K = mixture, M, K
        self.mode, self.has_gamma, self.has_beta = mode, bool(has_gamma), bool(has_beta)
        self.eps = float(eps)
        self.resp = None

    def check_type_forward(self, in_types):
        type_check._argname(in_types, ('x',) + ('gamma',) * self.has_gamma
                            + ('beta',) * self.has_beta)
        x_type = in_types[0]
        type_check.expect(x_type.dtype.kind == 'f', x_type.ndim >= 2)

    def _views(self, C):
        return kernels.mn_queue_views(self.mixture, self.M, C)

    def forward(self, inputs):
        self.retain_inputs(tuple(range(len(inputs))))
        x = inputs[0]
        given = iter(inputs[1:])
        xp = _arrays.get_array_module(x)
        dtype = _compute_dtype(x.dtype)
        gamma = next(given).astype(dtype, copy=False) if self.has_gamma else None
        beta = next(given).astype(dtype, copy=False) if self.has_beta else None
        layout = _Layout(x.shape)
        C, n = layout.C, layout.n
        mix = self._views(C)
        if xp is numpy and layout.L >= _HOST_MIN_L:
            with numpy.errstate(over='ignore', invalid='ignore'):
                y, lse_finite = self._forward_host(x, layout, mix, gamma, beta, dtype)
            if not lse_finite:
                raise _non_finite_input_error(x, layout, dtype)
            return y,
        xd = x if x.dtype == dtype else x.astype(dtype)
        work = xp.empty((2 * C + 1, n), dtype)
        with numpy.errstate(over='ignore', invalid='ignore'):
            kernels.mn_stack(_as3(xd, layout), mix['shift'], None, work)
            logp = xp.matmul(mix['logp_weight'], work)               # (M, n)
            self.resp, lse = kernels.log_softmax_columns(logp)       # (M, n), (n,)
        if _checks_on(xp) and not bool(xp.isfinite(lse).all()):
            raise _non_finite_input_error(x, layout, dtype)
        with numpy.errstate(over='ignore', invalid='ignore'):
            y = work[C:2 * C].reshape(x.shape)                       # the squares are spent
            kernels.mn_queue_normalize(_as3(y, layout), work[:C], self.resp, mix, gamma,
                                       beta, _MODES[self.mode], self.K, self.eps)
        return y.astype(x.dtype, copy=False),

    def _forward_host(self, x, layout, mix, gamma, beta, dtype):
        """:meth:`forward` on NumPy, in x's own layout (N, C, L), with no transposing
        copy: per block of samples (cache-sized) ``x - s`` written into the output and its
        squares, and the log-densities ``W_1 (x - s) + W_2 (x - s)^2`` (two batched products
        with the halves of the log-density weights (M, 2C)); the posteriors of all points
        at once (M x n numbers stay in cache); then per block one batched product of the
        posteriors with the stacked output weights ``[A; B + beta]`` (2C, M) and, in place,
        ``y = (x - s) (A r) + (B + beta) r`` (the posteriors sum to 1).  Returns ``(y,
        whether every log-likelihood is finite)``; the posteriors are kept for the
        backward."""
        N, C, L, M = layout.N, layout.C, layout.L, self.M
        x3 = x.reshape(N, C, L)
        lw = mix['logp_weight']
        W1 = numpy.ascontiguousarray(lw[:, :C])                       # (M, C)
        W2 = numpy.ascontiguousarray(lw[:, C:2 * C])
        shift = _plane(mix['shift'], L)
        b = _sample_block(N, C, L)
        squares = numpy.empty((b, C, L), dtype)
        part = numpy.empty((b, M, L), dtype)
        r = numpy.empty((N, M, L), dtype)
        out = numpy.empty((N, C, L), dtype)
        for a0 in range(0, N, b):
            a1 = min(N, a0 + b)
            xs, sq, p = out[a0:a1], squares[:a1 - a0], part[:a1 - a0]
            numpy.subtract(x3[a0:a1], shift, out=xs)
            numpy.multiply(xs, xs, out=sq)
            numpy.matmul(W1, xs, out=r[a0:a1])                        # log-densities
            numpy.matmul(W2, sq, out=p)
            r[a0:a1] += p
        r += lw[:, 2 * C, None]
        mx = r.max(axis=1, keepdims=True)
        r -= mx
        numpy.exp(r, out=r)
        total = r.sum(axis=1, keepdims=True)
        r /= total                                                    # posteriors
        finite = bool(numpy.isfinite(mx).all() and numpy.isfinite(total).all())
        A, B, channel_beta = kernels.mn_queue_coef_xp(mix, M, gamma, beta, _MODES[self.mode],
                                                      self.K, self.eps)
        if channel_beta is not None:    # the posteriors sum to 1: beta = sum_m r_m beta
            B = B + channel_beta[:, None]
        _combine_blocks(out, numpy.concatenate([A, B]).astype(dtype), r)   # (2C, M)
        self.resp = None
        self._posteriors = r
        return out.reshape(x.shape).astype(x.dtype, copy=False), finite

    def backward(self, indexes, grad_outputs):
        F = chainer.functions
        inputs = list(self.get_retained_inputs())
        x, params = inputs[0], inputs[1:]
        C = x.shape[1]
        mix = self._views(C)
        reps = self.M // self.K
        if self.mode == _COMPONENT:
            params = [F.tile(p, (reps, 1)) for p in params]
        means = (mix['mean'] + mix['shift'][:, None]).T
        if self.resp is None:               # the host forward's posteriors (N, M, L)
            self.resp = self._posteriors.transpose(1, 0, 2).reshape(self.M, -1)
        node = FixedMixtureNormalizationFunction(
            self.resp.T, mix['scale'], self.mode, self.has_gamma, self.has_beta, self.eps)
        node.apply([x] + params + [means, mix['var'].T])
        grads = list(node.backward(tuple(indexes), grad_outputs))
        for j, i in enumerate(indexes):
            if i > 0 and self.mode == _COMPONENT:
                grads[j] = F.sum(F.reshape(grads[j], (reps, self.K, C)), axis=0)
        return tuple(grads)


def queue_mixture_normalization(x, gamma, beta, mixture, n_components, eps=2e-5):
    """Mixture normalization with a queue's inference mixture (Eq. 38-39), posteriors
    included: ``y = sum_m nu_m a_m (x - mu_m) / sqrt(sigma^2_m + eps)`` then the affine,
    with nu the posteriors of x under the mixture with weights w_m.

    Args:
        x: (N, C) or (N, C, *spatial) Variable/array.
        gamma, beta: None, (C,) or (K, C) (the component affine: component m of the
            mixture is component m mod K of its batch).
        mixture: the buffer of :func:`mixnorm.kernels.mn_queue_mixture` (the link's
            cached inference mixture) in the compute dtype of x.
        n_components: K, the components per queued batch.
        eps: added to the variances.

    Raises ``ValueError`` for input whose log-densities are not finite (NaN/Inf, saying
    how many) where reading them costs nothing, on the host; on a device only under
    ``chainer.config.debug`` (it would be a synchronization): there NaN input gives NaN
    output where it is, as BN's inference does.
    """
    x_array = _raw(x)
    C = x_array.shape[1]
    # the buffer holds M (2C+1) + 4 C M + M + C numbers
    M = (mixture.shape[0] - C) // (6 * C + 2)
    mode = _affine_mode(_raw(gamma), _raw(beta), C, n_components)
    params = [p for p in (gamma, beta) if p is not None]
    node = QueueMixtureNormalizationFunction(mixture, M, n_components, mode,
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
    x_array = _raw(x)
    resp_array = _raw(resp)
    _check_x_resp(x_array, resp_array, 'mixture_moments')
    xp = _arrays.get_array_module(x_array)
    dtype = _compute_dtype(x_array.dtype)
    layout = _Layout(x_array.shape)
    _, _, small = _device_moments(xp, layout, x_array, resp_array.astype(dtype, copy=False), dtype)
    moments, colsum, shift = _arrays.fetch(xp, small, dtype)
    if not numpy.isfinite(moments).all():
        raise _non_finite_moments_error(x_array, dtype)
    stats = _host_moments(moments, colsum, layout.n, dtype)
    return BatchStats(*_arrays.send(xp, [stats.weights, (stats.mean + shift[:, None]).T,
                                         stats.var.T], dtype))
