"""CuPy kernels for the hot steps of the GMM fit, each with an xp-generic twin.

Each kernel fuses a few elementwise steps that would otherwise be separate launches
(on the GPU the fit is bound by launch overhead).  They are thread-per-item kernels
whose threads write disjoint outputs and never synchronise, so that their CUDA source
can also run on the CPU: ``tests/test_kernels.py`` compiles every source with g++
behind a shim and checks it against its twin (``tests/cuda_emulation.py``), compiles
it with NVRTC where CuPy is installed, and checks the CuPy kernel against its twin on
a GPU.  The twins are what runs on NumPy.  CuPy is imported lazily.  Matrix products
(distances, log-densities, moments) need no kernel of ours: they go to cuBLAS
through ``@``.
"""
import functools

import numpy

from mixnorm import _arrays
from mixnorm._arrays import get_array_module, is_cupy as _is_cupy

_kernels = {}


def _dispatch(twin, launches=1):
    """A kernel entry point: on a stand-in device (:mod:`mixnorm._arrays`) the twin
    runs there as ``launches`` device operations; otherwise the entry point decides
    between the CUDA kernel and its twin."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            device = _arrays.stand_in_for(args[0])
            if device is not None:
                return device.kernel(twin, launches, args, kwargs)
            return fn(*args, **kwargs)
        return call
    return wrap


def log_softmax_columns_xp(logp):
    """Twin of the fused kernel: ``(exp(logp - lse), lse)`` with ``lse`` (n,) the
    log-sum-exp of each column of ``logp`` (K, n), i.e. posteriors and per-point
    log-likelihoods of a mixture.  Columns that are all ``-inf`` cannot occur in a fit
    (the heaviest component always has positive weight)."""
    xp = get_array_module(logp)
    mx = logp.max(axis=0)
    resp = logp - mx[None, :]
    xp.exp(resp, out=resp)
    s = resp.sum(axis=0)
    resp /= s[None, :]
    lse = xp.log(s)
    lse += mx
    return resp, lse


_LOG_SOFTMAX_SRC = r'''
extern "C" __global__ void log_softmax_columns(const T* logp, T* resp, T* lse,
                                               long long n, int K) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T mx = logp[i];
    for (int k = 1; k < K; ++k) { T v = logp[k * n + i]; mx = v > mx ? v : mx; }
    T s = 0;
    for (int k = 0; k < K; ++k) { T e = exp(logp[k * n + i] - mx); resp[k * n + i] = e; s += e; }
    T inv = (T)1 / s;
    for (int k = 0; k < K; ++k) resp[k * n + i] *= inv;
    lse[i] = log(s) + mx;
}
'''


def kpp_update_xp(dist, pot, closest, labels, k):
    """Twin of the K-means++ update kernel: with ``best = argmin(pot)`` (the trial of
    lowest potential, first on ties), points closer to candidate ``best`` than to their
    nearest seed so far take label ``k`` and that distance (clipped at 0).  ``dist``
    (trials, n), ``pot`` (trials,), ``closest`` (n,), ``labels`` (n,) int64; returns the
    new ``(closest, labels)``."""
    xp = get_array_module(dist)
    d = xp.maximum(dist[xp.argmin(pot)], 0)       # distances from a product: clip at 0
    closer = d < closest
    return xp.where(closer, d, closest), xp.where(closer, k, labels)


_KPP_UPDATE_SRC = r'''
extern "C" __global__ void kpp_update(const T* dist, const double* pot, int trials,
                                      long long n, T* closest, long long* labels,
                                      long long k) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int best = 0;
    double bp = pot[0];
    for (int t = 1; t < trials; ++t) { double p = pot[t]; if (p < bp) { bp = p; best = t; } }
    T d = dist[(long long)best * n + i];
    if (d < 0) d = 0;
    if (d < closest[i]) { closest[i] = d; labels[i] = k; }
}
'''


@_dispatch(kpp_update_xp)
def kpp_update(dist, pot, closest, labels, k):
    """One K-means++ round's update of the nearest-seed distances and labels (see
    :func:`kpp_update_xp`): one kernel on the GPU, updating ``closest`` and ``labels``
    in place (each thread finds ``argmin(pot)`` over the few trials itself), instead of
    argmin, a gather, a comparison and two selections.  Returns ``(closest, labels)``."""
    if not (_is_cupy(dist) and dist.dtype.name in ('float32', 'float64')
            and dist.flags.c_contiguous and closest.flags.c_contiguous
            and closest.dtype == dist.dtype and labels.dtype.name == 'int64'
            and labels.flags.c_contiguous and pot.dtype.name == 'float64'):
        return kpp_update_xp(dist, pot, closest, labels, k)
    import cupy
    trials, n = dist.shape
    threads = 256
    _kernel('kpp_update', dist.dtype)(
        ((n + threads - 1) // threads,), (threads,),
        (dist, cupy.ascontiguousarray(pot), numpy.int32(trials), numpy.int64(n), closest,
         labels, numpy.int64(k)))
    return closest, labels


def _expand_into(xp, W, rT, out):
    """``out = W @ rT`` for (C, K) ``W`` and (K, n) ``rT`` (an outer product for K = 1,
    where BLAS is about 10x slower than a broadcast multiply)."""
    if rT.shape[0] == 1:
        return xp.multiply(W, rT, out=out)
    return xp.matmul(W, rT, out=out)


#: Elements per block of :func:`combine_xp` (cache-resident temporaries on the CPU).
_COMBINE_BLOCK = 1 << 18


def combine_xp(out, u, A, rT, v=None, B=None, Cm=None, beta=None):
    """Twin of the combine kernel: into ``out`` (C, n) write
    ``u * (A rT) + v * (B rT) + Cm rT + beta[:, None]`` with ``u``, ``v`` (C, n),
    ``A``, ``B``, ``Cm`` (C, K), ``rT`` (K, n) and ``beta`` (C,); absent terms are 0.
    ``out`` must not overlap ``u`` or ``v``.  Returns ``out``.

    Works through blocks of channels with two small temporaries (on the CPU they stay
    in cache, and no (C, n) temporary is allocated); beta rides on a ones row of rT.
    """
    xp = get_array_module(out)
    C, n = out.shape
    K = rT.shape[0]
    if beta is not None:
        rT1 = xp.empty((K + 1, n), rT.dtype)
        rT1[:K] = rT
        rT1[K] = 1
        C1 = xp.zeros((C, K + 1), rT.dtype)
        if Cm is not None:
            C1[:, :K] = Cm
        C1[:, K] = beta
        Cm, rT_c = C1, rT1
    else:
        rT_c = rT
    step = max(1, _COMBINE_BLOCK // max(n, 1)) if xp is numpy else C
    s1 = xp.empty((min(step, C), n), out.dtype)
    s2 = xp.empty((min(step, C), n), out.dtype) if (v is not None or Cm is not None) \
        else None
    for c0 in range(0, C, step):
        c1 = min(C, c0 + step)
        t1, t2 = s1[:c1 - c0], (s2[:c1 - c0] if s2 is not None else None)
        _expand_into(xp, A[c0:c1], rT, t1)
        t1 *= u[c0:c1]
        if v is not None:
            _expand_into(xp, B[c0:c1], rT, t2)
            t2 *= v[c0:c1]
            t1 += t2
        if Cm is not None:
            _expand_into(xp, Cm[c0:c1], rT_c, t2)
            t1 += t2
        out[c0:c1] = t1
    return out


_COMBINE_SRC = r'''
extern "C" __global__ void combine(T* out, long long so_c, long long so_i,
                                   const T* u, long long su_c, long long su_i,
                                   const T* v, long long sv_c, long long sv_i, int has_v,
                                   const T* A, const T* B, const T* Cm, int has_c,
                                   const T* beta, int has_beta, const T* rT, int K,
                                   long long C, long long n) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= C * n) return;
    long long c = idx / n, i = idx - c * n;
    T pa = 0, pb = 0, pc = 0;
    for (int k = 0; k < K; ++k) {
        T r = rT[(long long)k * n + i];
        pa += r * A[c * K + k];
        if (has_v) pb += r * B[c * K + k];
        if (has_c) pc += r * Cm[c * K + k];
    }
    T y = u[c * su_c + i * su_i] * pa + pc;
    if (has_v) y += v[c * sv_c + i * sv_i] * pb;
    if (has_beta) y += beta[c];
    out[c * so_c + i * so_i] = y;
}
'''


def _elem_strides(a):
    return tuple(numpy.int64(st // a.itemsize) for st in a.strides)


@_dispatch(combine_xp)
def combine(out, u, A, rT, v=None, B=None, Cm=None, beta=None):
    """``u * (A rT) + v * (B rT) + Cm rT + beta`` into ``out`` (see :func:`combine_xp`):
    the normalizing forward (``xc * (aP) nu^T + (aQ) nu^T + beta``) and the input
    gradient (``gy * (aP) nu^T + xc * (2 dvar / s) nu^T + (dmu / s) nu^T``) of MN as one
    kernel on the GPU instead of up to three products and four elementwise passes.
    The (C, n) arrays may be strided views; returns ``out``."""
    small = [a for a in (A, B, Cm, beta, rT) if a is not None]
    if not (_is_cupy(out) and out.dtype.name in ('float32', 'float64')
            and all(a.dtype == out.dtype for a in [u] + small + ([v] if v is not None else []))
            and all(a.flags.c_contiguous for a in small)):
        return combine_xp(out, u, A, rT, v, B, Cm, beta)
    C, n = out.shape
    threads = 256
    total = C * n
    dummy = A
    _kernel('combine', out.dtype)(
        ((total + threads - 1) // threads,), (threads,),
        (out,) + _elem_strides(out) + (u,) + _elem_strides(u)
        + ((v,) + _elem_strides(v) if v is not None else (u, numpy.int64(0), numpy.int64(0)))
        + (numpy.int32(v is not None), A, B if B is not None else dummy,
           Cm if Cm is not None else dummy, numpy.int32(Cm is not None),
           beta if beta is not None else dummy, numpy.int32(beta is not None), rT,
           numpy.int32(rT.shape[0]), numpy.int64(C), numpy.int64(n)))
    return out


#: Elements per block of :func:`augment_xp` on the CPU (a cache-resident temporary).
_AUGMENT_BLOCK = 1 << 16


def augment_xp(x, shift, inv, za):
    """Twin of the augment kernel: fill ``za`` (n, 2d+2) with ``[z^2 | z | |z|^2 | 1]``
    for ``z = (x - shift) * inv`` (``x`` (n, d) of any real dtype; ``shift`` (d,) and
    ``inv`` in the dtype of ``za``).  Through a contiguous temporary in row blocks that
    stay in cache on the CPU (about twice as fast as whole-array passes there), one
    block elsewhere.  Returns ``za``."""
    xp = get_array_module(za)
    n, d = x.shape
    rows = n if xp is not numpy else max(1, _AUGMENT_BLOCK // d)
    tmp = xp.empty((min(rows, n), d), dtype=za.dtype)
    ones = xp.ones((d,), dtype=za.dtype)
    for i in range(0, n, rows):
        j = min(n, i + rows)
        z = tmp[:j - i]
        xp.subtract(x[i:j], shift, out=z)           # promotes f16/int to za's dtype
        z *= inv
        za[i:j, d:2 * d] = z
        z *= z
        za[i:j, :d] = z
        xp.matmul(z, ones, out=za[i:j, 2 * d])
    za[:, 2 * d + 1] = 1
    return za


_AUGMENT_SRC = r'''
extern "C" __global__ void augment(const T* x, long long sx_i, long long sx_c,
                                   const T* shift, T inv, long long n, long long d, T* za) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * d) return;
    long long i = idx / d, c = idx - i * d;
    long long W = 2 * d + 2;
    T z = (x[i * sx_i + c * sx_c] - shift[c]) * inv;
    za[i * W + d + c] = z;
    za[i * W + c] = z * z;
    if (c == 0) za[i * W + 2 * d + 1] = 1;
}
'''


@_dispatch(augment_xp, launches=2)
def augment(x, shift, inv, za):
    """``za = [z^2 | z | |z|^2 | 1]`` for ``z = (x - shift) * inv`` (see
    :func:`augment_xp`): on the GPU one kernel (``x`` may be a strided view of the
    dtype of ``za``) and a row sum into the ``|z|^2`` column."""
    if not (_is_cupy(za) and za.dtype.name in ('float32', 'float64') and x.dtype == za.dtype
            and shift.dtype == za.dtype and shift.flags.c_contiguous
            and za.flags.c_contiguous):
        return augment_xp(x, shift, inv, za)
    n, d = x.shape
    threads = 256
    _kernel('augment', za.dtype)(
        ((n * d + threads - 1) // threads,), (threads,),
        (x,) + _elem_strides(x) + (shift, za.dtype.type(inv), numpy.int64(n), numpy.int64(d),
                                   za))
    za[:, :d].sum(axis=1, out=za[:, 2 * d])
    return za


_templates = {}


def _dist_template(xp, d, dtype):
    """Column map and factors turning rows of ``za`` into distance coefficients
    (cached per device, width and dtype): ``[c^2 | c | |c|^2 | 1]`` ->
    ``[0 | -2c | 1 | |c|^2]``."""
    dev = xp.cuda.Device().id if xp.__name__ == 'cupy' else -1
    key = (xp.__name__, dev, d, numpy.dtype(dtype).str)
    if key not in _templates:
        perm = numpy.concatenate([numpy.arange(2 * d), [2 * d + 1, 2 * d]])
        mult = numpy.concatenate([numpy.zeros(d), numpy.full(d, -2.0), [1.0, 1.0]])
        _templates[key] = (xp.asarray(perm), xp.asarray(mult, dtype=dtype))
    return _templates[key]


def centre_coef_xp(za, rows):
    """Twin of the centre-coefficient kernel: for the points ``za[rows]`` (rows
    ``[c^2 | c | |c|^2 | 1]`` of the augmented frame, ``rows`` int64 indices) the
    distance coefficients ``[0 | -2c | 1 | |c|^2]`` (m, 2d+2)."""
    xp = get_array_module(za)
    perm, mult = _dist_template(xp, (za.shape[1] - 2) // 2, za.dtype)
    return za[rows][:, perm] * mult


_CENTRE_COEF_SRC = r'''
extern "C" __global__ void centre_coef(const T* za, const long long* rows, long long m,
                                       long long d, T* out) {
    long long W = 2 * d + 2;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= m * W) return;
    long long j = idx / W, col = idx - j * W;
    const T* src = za + rows[j] * W;
    T val;
    if (col < d) val = 0;
    else if (col < 2 * d) val = -2 * src[col];
    else if (col == 2 * d) val = 1;
    else val = src[2 * d];
    out[idx] = val;
}
'''


@_dispatch(centre_coef_xp)
def centre_coef(za, rows):
    """Distance coefficients of the points ``za[rows]`` (see :func:`centre_coef_xp`):
    one kernel on the GPU instead of two gathers and a product."""
    if not (_is_cupy(za) and za.dtype.name in ('float32', 'float64') and
            za.flags.c_contiguous and rows.dtype.name == 'int64'):
        return centre_coef_xp(za, rows)
    import cupy
    rows = cupy.ascontiguousarray(rows)
    m, W = rows.shape[0], za.shape[1]
    out = cupy.empty((m, W), za.dtype)
    threads = 256
    _kernel('centre_coef', za.dtype)(
        ((m * W + threads - 1) // threads,), (threads,),
        (za, rows, numpy.int64(m), numpy.int64((W - 2) // 2), out))
    return out


def sample_candidates_xp(cum, u):
    """Twin of the candidate-sampling kernel: the K-means++ candidates (int64) drawn
    with probability proportional to the increments of ``cum`` (n,), the running sum of
    squared distances, for uniform draws ``u`` (trials,) in [0, 1): the first index
    whose running sum exceeds ``u * cum[-1]``, clipped to n - 1."""
    xp = get_array_module(cum)
    return xp.minimum(xp.searchsorted(cum, u * cum[-1], side='right'), cum.shape[0] - 1)


_SAMPLE_CANDIDATES_SRC = r'''
extern "C" __global__ void sample_candidates(const double* cum, const double* u,
                                             int trials, long long n, long long* cand) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= trials) return;
    double target = u[t] * cum[n - 1];
    long long lo = 0, hi = n;              // first index with cum > target
    while (lo < hi) {
        long long mid = lo + (hi - lo) / 2;
        if (cum[mid] <= target) lo = mid + 1; else hi = mid;
    }
    cand[t] = lo < n - 1 ? lo : n - 1;
}
'''


@_dispatch(sample_candidates_xp)
def sample_candidates(cum, u):
    """K-means++ candidates by inverse-CDF sampling (see :func:`sample_candidates_xp`):
    one kernel on the GPU (a binary search per trial) instead of three operations."""
    if not (_is_cupy(cum) and cum.dtype.name == 'float64' and u.dtype.name == 'float64'
            and cum.flags.c_contiguous and u.flags.c_contiguous):
        return sample_candidates_xp(cum, u)
    import cupy
    cand = cupy.empty(u.shape, numpy.int64)
    _kernel('sample_candidates', numpy.float64)(
        (1,), (max(32, u.shape[0]),),
        (cum, u, numpy.int32(u.shape[0]), numpy.int64(cum.shape[0]), cand))
    return cand


def one_hot_xp(labels, n_components, dtype):
    """Twin of the one-hot kernel: hard responsibilities (K, n) of ``dtype`` for the
    partition ``labels`` (n,) int64."""
    xp = get_array_module(labels)
    return (labels[None, :] == xp.arange(n_components)[:, None]).astype(dtype)


_ONE_HOT_SRC = r'''
extern "C" __global__ void one_hot(const long long* labels, long long n, long long K,
                                   T* out) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * K) return;
    long long k = idx / n, i = idx - k * n;
    out[idx] = labels[i] == k ? (T)1 : (T)0;
}
'''


@_dispatch(one_hot_xp)
def one_hot(labels, n_components, dtype):
    """Hard responsibilities (K, n) of a partition (see :func:`one_hot_xp`): one kernel
    on the GPU instead of three operations."""
    dtype = numpy.dtype(dtype)
    if not (_is_cupy(labels) and labels.dtype.name == 'int64' and labels.flags.c_contiguous
            and dtype.name in ('float32', 'float64')):
        return one_hot_xp(labels, n_components, dtype)
    import cupy
    n = labels.shape[0]
    out = cupy.empty((n_components, n), dtype)
    threads = 256
    _kernel('one_hot', dtype)(((n * n_components + threads - 1) // threads,), (threads,),
                              (labels, numpy.int64(n), numpy.int64(n_components), out))
    return out


def running_update_xp(weights, means, variances, avg_mean, avg_var, decay, adjust):
    """Twin of the running-average kernel: BN's update of ``avg_mean`` and ``avg_var``
    (D,), in place, from the mixture of a batch (``weights`` (K,) summing to 1, ``means``
    and ``variances`` (K, D)): its mean m = sum_k w_k mu_k and total variance
    v = sum_k w_k (sigma^2_k + (mu_k - m)^2), ``avg_mean = avg_mean * decay + m *
    (1 - decay)`` and ``avg_var = avg_var * decay + v * (1 - decay) * adjust``."""
    xp = get_array_module(means)
    w = weights.astype(means.dtype, copy=False)
    mean = xp.matmul(w, means)
    dev = means - mean
    var = xp.matmul(w, variances + dev * dev)
    avg_mean *= decay
    avg_mean += (mean * (1 - decay)).astype(avg_mean.dtype, copy=False)
    avg_var *= decay
    avg_var += (var * ((1 - decay) * adjust)).astype(avg_var.dtype, copy=False)


#: BN's running averages of feature ``d`` from K components (a device function, shared by
#: the kernels that update them).
_RUNNING_AVERAGES_FN = r'''
__device__ void running_averages(const T* w, const T* mu, const T* var, int K, long long D,
                                 long long d, T* avg_mean, T* avg_var, double decay,
                                 double adjust) {
    T m = 0;
    for (int k = 0; k < K; ++k) m += w[k] * mu[k * D + d];
    T v = 0;
    for (int k = 0; k < K; ++k) {
        T dev = mu[k * D + d] - m;
        v += w[k] * (var[k * D + d] + dev * dev);
    }
    avg_mean[d] = avg_mean[d] * (T)decay + m * (T)(1 - decay);
    avg_var[d] = avg_var[d] * (T)decay + v * (T)((1 - decay) * adjust);
}
'''

_RUNNING_UPDATE_SRC = _RUNNING_AVERAGES_FN + r'''
extern "C" __global__ void running_update(const T* w, const T* mu, const T* var,
                                          T* avg_mean, T* avg_var, int K, long long D,
                                          double decay, double adjust) {
    long long d = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    running_averages(w, mu, var, K, D, d, avg_mean, avg_var, decay, adjust);
}
'''


@_dispatch(running_update_xp)
def running_update(weights, means, variances, avg_mean, avg_var, decay, adjust):
    """BN's running averages updated in place from a batch's mixture (see
    :func:`running_update_xp`): one kernel on the GPU, a thread per feature, instead of
    the pooled moments' products and four updates."""
    dtype = means.dtype
    if not (_is_cupy(means) and dtype.name in ('float32', 'float64') and all(
            a.dtype == dtype and a.flags.c_contiguous
            for a in (weights, means, variances, avg_mean, avg_var))):
        return running_update_xp(weights, means, variances, avg_mean, avg_var, decay,
                                 adjust)
    K, D = means.shape
    threads = 256
    _kernel('running_update', dtype)(
        ((D + threads - 1) // threads,), (threads,),
        (weights, means, variances, avg_mean, avg_var, numpy.int32(K), numpy.int64(D),
         numpy.float64(decay), numpy.float64(adjust)))


#: name -> CUDA source (with ``T`` the element type) of every RawKernel here.
SOURCES = {'log_softmax_columns': _LOG_SOFTMAX_SRC, 'kpp_update': _KPP_UPDATE_SRC,
           'combine': _COMBINE_SRC, 'augment': _AUGMENT_SRC, 'centre_coef': _CENTRE_COEF_SRC,
           'sample_candidates': _SAMPLE_CANDIDATES_SRC, 'one_hot': _ONE_HOT_SRC,
           'running_update': _RUNNING_UPDATE_SRC}


def kernel_source(name, dtype):
    """The complete CUDA source of kernel ``name`` for ``dtype`` (float32/float64)."""
    ctype = {'float32': 'float', 'float64': 'double'}[numpy.dtype(dtype).name]
    return 'typedef %s T;\n%s' % (ctype, SOURCES[name])


def _kernel(name, dtype):
    """The compiled ``cupy.RawKernel`` ``name`` for ``dtype`` (cached)."""
    import cupy
    key = (name, numpy.dtype(dtype).name)
    if key not in _kernels:
        _kernels[key] = cupy.RawKernel(kernel_source(*key), name)
    return _kernels[key]


@_dispatch(log_softmax_columns_xp)
def log_softmax_columns(logp):
    """Posteriors (K, n) and log-normalisers (n,) of the columns of ``logp`` (K, n): one
    fused pass on the GPU (a thread per point; coalesced over n),
    :func:`log_softmax_columns_xp` elsewhere."""
    if not _is_cupy(logp) or logp.dtype.name not in ('float32', 'float64'):
        return log_softmax_columns_xp(logp)
    import cupy
    logp = cupy.ascontiguousarray(logp)
    K, n = logp.shape
    resp = cupy.empty_like(logp)
    lse = cupy.empty((n,), dtype=logp.dtype)
    threads = 256
    _kernel('log_softmax_columns', logp.dtype)(((n + threads - 1) // threads,), (threads,),
                                    (logp, resp, lse, numpy.int64(n), numpy.int32(K)))
    return resp, lse


# ---------------------------------------------------------------------------
# Mixture normalization's passes (mixnorm.functions and mixnorm.links)
#
# x enters as a 3-D view (N, C, L) of any strides (L = 1 for (N, C) input) and the
# outputs are written in that layout; the (C, n) arrays are C-contiguous, n = N * L,
# point i = a * L + l.  Each kernel has a ``*_args`` function giving its launch size
# and arguments, shared by the CuPy call and the CPU emulation in the tests.
# ---------------------------------------------------------------------------

_MN_CONST = r'''
#define MN_FIN(v) ((v) - (v) == 0)
'''


def _mn_launch(name, dtype, items, args):
    threads = 256
    _kernel(name, dtype)(((max(items, 1) + threads - 1) // threads,), (threads,), args)


def _strides3(a):
    return tuple(numpy.int64(s // a.itemsize) for s in a.strides)


def mn_shift_steps(N, L, rows):
    """Strides of the subsample :func:`mn_shift` averages: about 256 points of (N, C)
    input, about 16 x 16 of (N, C, L) input (the shift only needs to be within a few
    standard deviations of the mean for the moments not to cancel)."""
    return (max(1, N // 256), 1) if rows else (max(1, N // 16), max(1, L // 16))


def mn_shift_xp(x3, steps):
    """Twin of the shift kernel: the per-channel mean (C,) of the strided subsample
    ``x3[::steps[0], :, ::steps[1]]`` of ``x3`` (N, C, L), in x's dtype: a shift close to
    the batch mean, taken out before moments so that they do not cancel."""
    sub = x3[::steps[0], :, ::steps[1]]
    return sub.astype(numpy.float64).mean(axis=(0, 2)).astype(x3.dtype)


_MN_SHIFT_SRC = r'''
extern "C" __global__ void mn_shift(const T* x, long long sN, long long sC, long long sL,
                                    long long N, long long C, long long L,
                                    long long stepN, long long stepL, T* shift) {
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    long long na = (N + stepN - 1) / stepN, nl = (L + stepL - 1) / stepL, P = na * nl;
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};     // eight loads in flight per thread
    for (long long p = 0; p < P; p += 8) {
        for (int u = 0; u < 8; ++u) {
            long long q = p + u;
            if (q < P) {
                long long a = (q / nl) * stepN, l = (q - (q / nl) * nl) * stepL;
                acc[u] += (double)x[a * sN + c * sC + l * sL];
            }
        }
    }
    double s = 0;
    for (int u = 0; u < 8; ++u) s += acc[u];
    shift[c] = (T)(s / (double)P);
}
'''


def mn_shift_args(x3, steps, shift):
    N, C, L = x3.shape
    return C, (x3,) + _strides3(x3) + (numpy.int64(N), numpy.int64(C), numpy.int64(L),
                                       numpy.int64(steps[0]), numpy.int64(steps[1]), shift)


@_dispatch(mn_shift_xp)
def mn_shift(x3, steps):
    """Per-channel shift (see :func:`mn_shift_xp`): one kernel, a thread per channel."""
    if not (_is_cupy(x3) and x3.dtype.name in ('float32', 'float64')):
        return mn_shift_xp(x3, steps)
    import cupy
    shift = cupy.empty((x3.shape[1],), x3.dtype)
    _mn_launch('mn_shift', x3.dtype, *mn_shift_args(x3, steps, shift))
    return shift


def mn_stack_xp(x3, shift, resp, work, resp1=None):
    """Twin of the stacking kernel: ``work`` (2C+1, n) = ``[x - shift; (x - shift)^2; 1]``
    in the (C, n) layout, and, unless ``resp1`` is None, ``resp1`` (n, K+1) = ``[resp | 1]``
    (``resp`` (n, K); None stands for one column of ones).  Returns ``(work, resp1)``."""
    xp = get_array_module(work)
    N, C, L = x3.shape
    xc = work[:C].reshape(C, N, L)
    xp.subtract(x3.transpose(1, 0, 2), shift[:, None, None], out=xc)
    xp.multiply(work[:C], work[:C], out=work[C:2 * C])
    work[2 * C] = 1
    if resp1 is not None:
        K = resp1.shape[1] - 1
        resp1[:, :K] = 1 if resp is None else resp
        resp1[:, K] = 1
    return work, resp1


_MN_STACK_SRC = r'''
extern "C" __global__ void mn_stack(const T* x, long long sN, long long sC, long long sL,
                                    long long N, long long C, long long L, const T* shift,
                                    const T* resp, long long sr_i, long long sr_k,
                                    int has_resp, int K, T* work, T* resp1) {
    long long n = N * L;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (C + 1) * n) return;
    long long c = idx / n, i = idx - c * n;
    if (c < C) {
        long long a = i / L, l = i - a * L;
        T v = x[a * sN + c * sC + l * sL] - shift[c];
        work[c * n + i] = v;
        work[(C + c) * n + i] = v * v;
        return;
    }
    work[2 * C * n + i] = 1;
    if (K > 0) {
        for (int k = 0; k < K; ++k)
            resp1[i * (K + 1) + k] = has_resp ? resp[i * sr_i + k * sr_k] : (T)1;
        resp1[i * (K + 1) + K] = 1;
    }
}
'''


def mn_stack_args(x3, shift, resp, work, resp1):
    N, C, L = x3.shape
    K = 0 if resp1 is None else resp1.shape[1] - 1
    rs = _strides3(resp) if resp is not None else (numpy.int64(0), numpy.int64(0))
    return (C + 1) * N * L, (x3,) + _strides3(x3) + (
        numpy.int64(N), numpy.int64(C), numpy.int64(L), shift,
        resp if resp is not None else shift) + rs + (
        numpy.int32(resp is not None), numpy.int32(K), work,
        resp1 if resp1 is not None else work)


@_dispatch(mn_stack_xp)
def mn_stack(x3, shift, resp, work, resp1=None):
    """``[x - shift; (x - shift)^2; 1]`` and ``[resp | 1]`` (see :func:`mn_stack_xp`): one
    kernel instead of a transposing copy, a product, two fills and two copies."""
    arrays = [x3, shift, work] + [a for a in (resp, resp1) if a is not None]
    if not (_is_cupy(work) and work.dtype.name in ('float32', 'float64')
            and all(a.dtype == work.dtype for a in arrays) and work.flags.c_contiguous
            and shift.flags.c_contiguous and (resp1 is None or resp1.flags.c_contiguous)):
        return mn_stack_xp(x3, shift, resp, work, resp1)
    _mn_launch('mn_stack', work.dtype, *mn_stack_args(x3, shift, resp, work, resp1))
    return work, resp1


#: Layout of the buffer of :func:`mn_coef`: (C, K) blocks, then (K, C) blocks, then (K,).
MN_COEF_CK = ('x_weight', 'offset_weight', 'inv_std', 'centre', 'mean', 'var',
              'var_positive', 'status')
MN_COEF_KC = ('mu', 'var_t')
MN_COEF_K = ('weights', 'colsum', 'scale')

#: Modes of the affine: none, channel (C,), component (K, C).
MN_NONE, MN_CHANNEL, MN_COMPONENT = 0, 1, 2


def mn_coef_views(buf, C, K):
    """The named views of an :func:`mn_coef` buffer (a dict)."""
    out, i = {}, 0
    for name in MN_COEF_CK:
        out[name] = buf[i:i + C * K].reshape(C, K)
        i += C * K
    for name in MN_COEF_KC:
        out[name] = buf[i:i + C * K].reshape(K, C)
        i += C * K
    for name in MN_COEF_K:
        out[name] = buf[i:i + K]
        i += K
    return out


def mn_coef_xp(M, n, shift, gamma, beta, mode, eps, lambda_scaling):
    """Twin of the coefficient kernel: Eq. 35-37 from the moments ``M`` (2C+1, K+1) =
    ``[xc; xc^2; 1] [resp | 1]`` of ``n`` points shifted by ``shift`` (C,), in float64,
    into one buffer of M's dtype with the views of :func:`mn_coef_views`: lambda
    (``weights``), the floored column sums, a = 1/sqrt(lambda) (``scale``, or 1), and
    per (c, k) S = 1/sqrt(var (* gamma_k) + eps), the centre mu - c (+ beta_k), the
    output's weights a S (* gamma) of xc and a (-centre S (* gamma)) of 1, mean, var,
    var_positive and ``status`` (0 fine, 1 a non-positive normalizer under the component
    affine, 2 moments that are not finite), and mu, var as (K, C)."""
    xp = get_array_module(M)
    dtype = M.dtype
    C, K = (M.shape[0] - 1) // 2, M.shape[1] - 1
    m = M.astype(numpy.float64)
    tiny = numpy.finfo(dtype).tiny
    s0 = m[2 * C, :K]
    finite = (m[:2 * C, :K] - m[:2 * C, :K] == 0)
    finite = finite[:C] & finite[C:] & (s0 - s0 == 0)[None, :]
    colsum = xp.where(s0 > tiny, s0, tiny)
    w = colsum / n
    w = xp.where(w > tiny, w, tiny)
    mean = m[:C, :K] / colsum
    var_raw = m[C:2 * C, :K] / colsum - mean * mean
    var = xp.where(var_raw > 0, var_raw, 0.0)
    scale = 1 / xp.sqrt(w) if lambda_scaling else xp.ones_like(w)
    centre = mean
    if mode == MN_COMPONENT:
        g = gamma.T.astype(numpy.float64) if gamma is not None else 1.0
        denom = g * var + eps
        if beta is not None:
            centre = mean + beta.T.astype(numpy.float64)
        status = xp.where(denom > 0, 0.0, 1.0)
    else:
        denom = var + eps
        status = xp.zeros_like(var)
    status = xp.where(finite, status, 2.0)
    inv_std = 1 / xp.sqrt(denom)
    slope = inv_std * gamma.astype(numpy.float64)[:, None] \
        if mode == MN_CHANNEL and gamma is not None else inv_std
    offset = -centre * slope
    parts = [scale * slope, scale * offset, inv_std, centre, mean, var,
             (var_raw > 0).astype(numpy.float64), status,
             (mean + shift.astype(numpy.float64)[:, None]).T, var.T, w, colsum, scale]
    return xp.concatenate([xp.ravel(p) for p in parts]).astype(dtype)


_MN_COEF_SRC = _MN_CONST + r'''
extern "C" __global__ void mn_coef(const T* M, long long C, int K, double n, double tiny,
                                   const T* shift, const T* gamma, const T* beta, int mode,
                                   int has_gamma, int has_beta, double eps, int lscale,
                                   T* out) {
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    long long CK = C * K;
    int K1 = K + 1;
    for (int k = 0; k < K; ++k) {
        double s0 = (double)M[2 * C * K1 + k];
        double m1 = (double)M[c * K1 + k], m2 = (double)M[(C + c) * K1 + k];
        int finite = MN_FIN(m1) && MN_FIN(m2) && MN_FIN(s0);
        double cs = s0 > tiny ? s0 : tiny;
        double w = cs / n;
        w = w > tiny ? w : tiny;
        double mean = m1 / cs;
        double vr = m2 / cs - mean * mean;
        double var = vr > 0 ? vr : 0.0;
        double a = lscale ? 1.0 / sqrt(w) : 1.0;
        double centre = mean, denom, status = 0;
        if (mode == 2) {
            double g = has_gamma ? (double)gamma[(long long)k * C + c] : 1.0;
            denom = g * var + eps;
            if (has_beta) centre = mean + (double)beta[(long long)k * C + c];
            status = denom > 0 ? 0.0 : 1.0;
        } else {
            denom = var + eps;
        }
        if (!finite) status = 2;
        double is = 1.0 / sqrt(denom);
        double slope = (mode == 1 && has_gamma) ? is * (double)gamma[c] : is;
        double off = -centre * slope;
        long long j = c * K + k;
        out[j] = (T)(a * slope);
        out[CK + j] = (T)(a * off);
        out[2 * CK + j] = (T)is;
        out[3 * CK + j] = (T)centre;
        out[4 * CK + j] = (T)mean;
        out[5 * CK + j] = (T)var;
        out[6 * CK + j] = (T)(vr > 0 ? 1.0 : 0.0);
        out[7 * CK + j] = (T)status;
        out[8 * CK + (long long)k * C + c] = (T)(mean + (double)shift[c]);
        out[9 * CK + (long long)k * C + c] = (T)var;
        if (c == 0) {
            out[10 * CK + k] = (T)w;
            out[10 * CK + K + k] = (T)cs;
            out[10 * CK + 2 * K + k] = (T)a;
        }
    }
}
'''


def mn_coef_args(M, n, shift, gamma, beta, mode, eps, lambda_scaling, out):
    C, K = (M.shape[0] - 1) // 2, M.shape[1] - 1
    return C, (M, numpy.int64(C), numpy.int32(K), numpy.float64(n),
               numpy.float64(numpy.finfo(M.dtype).tiny), shift,
               gamma if gamma is not None else shift, beta if beta is not None else shift,
               numpy.int32(mode), numpy.int32(gamma is not None),
               numpy.int32(beta is not None), numpy.float64(eps),
               numpy.int32(bool(lambda_scaling)), out)


@_dispatch(mn_coef_xp)
def mn_coef(M, n, shift, gamma, beta, mode, eps, lambda_scaling):
    """Eq. 35-37's (C, K) arithmetic on the device (see :func:`mn_coef_xp`): one kernel,
    a thread per channel computing in float64, in place of a copy to the host and back."""
    small = [a for a in (M, shift, gamma, beta) if a is not None]
    if not (_is_cupy(M) and M.dtype.name in ('float32', 'float64')
            and all(a.dtype == M.dtype and a.flags.c_contiguous for a in small)):
        return mn_coef_xp(M, n, shift, gamma, beta, mode, eps, lambda_scaling)
    import cupy
    C, K = (M.shape[0] - 1) // 2, M.shape[1] - 1
    out = cupy.empty((10 * C * K + 3 * K,), M.dtype)
    _mn_launch('mn_coef', M.dtype,
               *mn_coef_args(M, n, shift, gamma, beta, mode, eps, lambda_scaling, out))
    return out


#: Channels per block of :func:`mn_combine_xp` on the CPU (cache-resident temporaries).
_MN_BLOCK = 1 << 15


def mn_combine_xp(out3, u, A, resp1, v=None, B=None, Cm=None, beta=None):
    """Twin of the combining kernel: into ``out3`` (N, C, L) write, in the layout of x,
    ``u * (A r^T) + v * (B r^T) + Cm r^T + beta`` with ``u``, ``v`` (C, n) (``u`` also a
    (C, N, L) view of an x-shaped array), ``A``, ``B``,
    ``Cm`` (C, K), ``r`` the first K columns of ``resp1`` (n, K+1) and ``beta`` (C,);
    absent terms are 0.  Returns ``out3``."""
    xp = get_array_module(out3)
    N, C, L = out3.shape
    n = N * L
    K = A.shape[1]
    rT = resp1[:, :K].T
    if xp is numpy:
        rT = numpy.ascontiguousarray(rT)        # once, not per block of channels
    step = max(1, _MN_BLOCK // max(n, 1)) if xp is numpy else C
    for c0 in range(0, C, step):
        c1 = min(C, c0 + step)
        t = _expand_into(xp, A[c0:c1], rT, xp.empty((c1 - c0, n), out3.dtype))
        if u.ndim == 3:         # a (C, N, L) view of an x-shaped array
            t3 = t.reshape(c1 - c0, N, L)
            t3 *= u[c0:c1]
        else:
            t *= u[c0:c1]
        if v is not None:
            t2 = _expand_into(xp, B[c0:c1], rT, xp.empty((c1 - c0, n), out3.dtype))
            t2 *= v[c0:c1]
            t += t2
        if Cm is not None:
            t += _expand_into(xp, Cm[c0:c1], rT, xp.empty((c1 - c0, n), out3.dtype))
        if beta is not None:
            t += beta[c0:c1, None]
        out3[:, c0:c1, :] = t.reshape(c1 - c0, N, L).transpose(1, 0, 2)
    return out3


_MN_COMBINE_SRC = r'''
extern "C" __global__ void mn_combine(T* out, long long soN, long long soC, long long soL,
                                      long long N, long long C, long long L,
                                      const T* u, const T* v, int has_v,
                                      const T* A, const T* B, const T* Cm, int has_c,
                                      const T* beta, int has_beta, const T* r, int K) {
    long long n = N * L;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= C * n) return;
    long long c = idx / n, i = idx - c * n;
    long long a = i / L, l = i - a * L;
    T pa = 0, pb = 0, pc = 0;
    for (int k = 0; k < K; ++k) {
        T rr = r[i * (K + 1) + k];
        pa += rr * A[c * K + k];
        if (has_v) pb += rr * B[c * K + k];
        if (has_c) pc += rr * Cm[c * K + k];
    }
    T y = u[c * n + i] * pa + pc;
    if (has_v) y += v[c * n + i] * pb;
    if (has_beta) y += beta[c];
    out[a * soN + c * soC + l * soL] = y;
}
'''


def mn_combine_args(out3, u, A, resp1, v=None, B=None, Cm=None, beta=None):
    N, C, L = out3.shape
    return C * N * L, (out3,) + _strides3(out3) + (
        numpy.int64(N), numpy.int64(C), numpy.int64(L), u, v if v is not None else u,
        numpy.int32(v is not None), A, B if B is not None else A,
        Cm if Cm is not None else A, numpy.int32(Cm is not None),
        beta if beta is not None else A, numpy.int32(beta is not None), resp1,
        numpy.int32(A.shape[1]))


@_dispatch(mn_combine_xp)
def mn_combine(out3, u, A, resp1, v=None, B=None, Cm=None, beta=None):
    """``u * (A r^T) + v * (B r^T) + Cm r^T + beta`` written in x's layout (see
    :func:`mn_combine_xp`): MN's output ``xc * (aP) r^T + (aQ) r^T + beta`` and its input
    gradient ``gy * (aP) r^T + xc * (2 dvar / s) r^T + (dmu / s) r^T``, one kernel each."""
    small = [a for a in (A, B, Cm, beta) if a is not None]
    if not (_is_cupy(out3) and out3.dtype.name in ('float32', 'float64')
            and all(a.dtype == out3.dtype and a.flags.c_contiguous
                    for a in small + [u, resp1] + ([v] if v is not None else []))):
        return mn_combine_xp(out3, u, A, resp1, v, B, Cm, beta)
    _mn_launch('mn_combine', out3.dtype,
               *mn_combine_args(out3, u, A, resp1, v, B, Cm, beta))
    return out3


def mn_grad_stack_xp(gy3, xc, work):
    """Twin of the gradient-stacking kernel: ``work`` (2C, n) = ``[gy; gy * xc]`` in the
    (C, n) layout, ``gy3`` (N, C, L) in x's layout.  Returns ``work``."""
    xp = get_array_module(work)
    N, C, L = gy3.shape
    work[:C].reshape(C, N, L)[...] = gy3.transpose(1, 0, 2)
    xp.multiply(work[:C], xc, out=work[C:])
    return work


_MN_GRAD_STACK_SRC = r'''
extern "C" __global__ void mn_grad_stack(const T* gy, long long sN, long long sC,
                                         long long sL, long long N, long long C,
                                         long long L, const T* xc, T* work) {
    long long n = N * L;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= C * n) return;
    long long c = idx / n, i = idx - c * n;
    long long a = i / L, l = i - a * L;
    T g = gy[a * sN + c * sC + l * sL];
    work[idx] = g;
    work[C * n + idx] = g * xc[idx];
}
'''


def mn_grad_stack_args(gy3, xc, work):
    N, C, L = gy3.shape
    return C * N * L, (gy3,) + _strides3(gy3) + (numpy.int64(N), numpy.int64(C),
                                                 numpy.int64(L), xc, work)


@_dispatch(mn_grad_stack_xp)
def mn_grad_stack(gy3, xc, work):
    """``[gy; gy * xc]`` (see :func:`mn_grad_stack_xp`): one kernel."""
    if not (_is_cupy(work) and work.dtype.name in ('float32', 'float64')
            and gy3.dtype == work.dtype and xc.dtype == work.dtype
            and xc.flags.c_contiguous and work.flags.c_contiguous):
        return mn_grad_stack_xp(gy3, xc, work)
    _mn_launch('mn_grad_stack', work.dtype, *mn_grad_stack_args(gy3, xc, work))
    return work


def mn_grad_coef_views(buf, C, K):
    """``x_var``, ``x_mean`` (C, K) and the parameters' gradients ``gamma``, ``beta`` ((K, C)
    under the component affine, the first C entries of those blocks otherwise) of an
    :func:`mn_grad_coef` buffer."""
    CK = C * K
    return dict(x_var=buf[:CK].reshape(C, K), x_mean=buf[CK:2 * CK].reshape(C, K),
                gamma=buf[2 * CK:3 * CK], beta=buf[3 * CK:4 * CK])


def mn_grad_coef_xp(S, coef, gamma, mode, has_gamma, has_beta):
    """Twin of the gradient-coefficient kernel: the chain rule of Eq. 34-37 in float64
    from the sums ``S`` (2C, K+1) = ``[gy; gy xc] [resp | 1]`` and the forward's
    :func:`mn_coef` buffer ``coef``: with h = a (gy^T r), hx = a ((gy xc)^T r) and
    centred = hx - centre h, the parameters' gradients and the coefficients
    ``x_var`` = 2 dL/dvar / s and ``x_mean`` = dL/dmu / s of x's gradient through the
    statistics, in one buffer (:func:`mn_grad_coef_views`)."""
    xp = get_array_module(S)
    C, K = S.shape[0] // 2, S.shape[1] - 1
    f = {k: v.astype(numpy.float64) for k, v in mn_coef_views(coef, C, K).items()}
    s = S.astype(numpy.float64)
    h = s[:C, :K] * f['scale']
    hx = s[C:, :K] * f['scale']
    inv_std = f['inv_std']
    inv_std3 = inv_std * inv_std * inv_std
    centred = hx - f['centre'] * h
    out = xp.zeros((4, C * K), numpy.float64)
    gc = gamma.astype(numpy.float64)[:, None] if mode == MN_CHANNEL and has_gamma else 1.0
    if mode == MN_CHANNEL:
        if has_gamma:
            out[2, :C] = (inv_std * centred).sum(axis=1)
        if has_beta:
            out[3, :C] = s[:C, K]
    if mode == MN_COMPONENT:
        if has_gamma:
            out[2] = (-0.5 * centred * f['var'] * inv_std3).T.ravel()
        if has_beta:
            out[3] = (-(inv_std * h)).T.ravel()
    d_mean = -(inv_std * h) * gc
    d_var = -0.5 * (centred * gc) * inv_std3
    if mode == MN_COMPONENT and has_gamma:
        d_var = d_var * gamma.T.astype(numpy.float64)
    d_var = d_var * f['var_positive']
    d_mu = d_mean - 2 * f['mean'] * d_var
    out[0] = (2 * d_var / f['colsum']).ravel()
    out[1] = (d_mu / f['colsum']).ravel()
    return out.ravel().astype(S.dtype)


_MN_GRAD_COEF_SRC = r'''
extern "C" __global__ void mn_grad_coef(const T* S, long long C, int K, const T* coef,
                                        const T* gamma, int mode, int has_gamma,
                                        int has_beta, T* out) {
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    long long CK = C * K;
    int K1 = K + 1;
    double gg = 0;
    double gc = (mode == 1 && has_gamma) ? (double)gamma[c] : 1.0;
    for (int k = 0; k < K; ++k) {
        long long j = c * K + k;
        double a = (double)coef[10 * CK + 2 * K + k];
        double h = (double)S[c * K1 + k] * a, hx = (double)S[(C + c) * K1 + k] * a;
        double is = (double)coef[2 * CK + j], centre = (double)coef[3 * CK + j];
        double mean = (double)coef[4 * CK + j], var = (double)coef[5 * CK + j];
        double vp = (double)coef[6 * CK + j], cs = (double)coef[10 * CK + K + k];
        double centred = hx - centre * h, is3 = is * is * is;
        if (mode == 1 && has_gamma) gg += is * centred;
        if (mode == 2) {
            if (has_gamma) out[2 * CK + (long long)k * C + c] = (T)(-0.5 * centred * var * is3);
            if (has_beta) out[3 * CK + (long long)k * C + c] = (T)(-(is * h));
        }
        double d_mean = -(is * h) * gc;
        double d_var = -0.5 * (centred * gc) * is3;
        if (mode == 2 && has_gamma) d_var *= (double)gamma[(long long)k * C + c];
        d_var *= vp;
        double d_mu = d_mean - 2 * mean * d_var;
        out[j] = (T)(2 * d_var / cs);
        out[CK + j] = (T)(d_mu / cs);
    }
    if (mode == 1) {
        if (has_gamma) out[2 * CK + c] = (T)gg;
        if (has_beta) out[3 * CK + c] = S[c * K1 + K];
    }
}
'''


def mn_grad_coef_args(S, coef, gamma, mode, has_gamma, has_beta, out):
    C, K = S.shape[0] // 2, S.shape[1] - 1
    return C, (S, numpy.int64(C), numpy.int32(K), coef,
               gamma if gamma is not None else coef, numpy.int32(mode),
               numpy.int32(bool(has_gamma)), numpy.int32(bool(has_beta)), out)


@_dispatch(mn_grad_coef_xp)
def mn_grad_coef(S, coef, gamma, mode, has_gamma, has_beta):
    """The backward's (C, K) chain rule on the device (see :func:`mn_grad_coef_xp`): one
    kernel, a thread per channel computing in float64."""
    small = [a for a in (S, coef, gamma) if a is not None]
    if not (_is_cupy(S) and S.dtype.name in ('float32', 'float64')
            and all(a.dtype == S.dtype and a.flags.c_contiguous for a in small)):
        return mn_grad_coef_xp(S, coef, gamma, mode, has_gamma, has_beta)
    import cupy
    C, K = S.shape[0] // 2, S.shape[1] - 1
    out = cupy.empty((4 * C * K,), S.dtype)       # what the mode does not use stays unset
    _mn_launch('mn_grad_coef', S.dtype,
               *mn_grad_coef_args(S, coef, gamma, mode, has_gamma, has_beta, out))
    return out


def mn_push_xp(weights, means, variances, queue_weights, queue_means, queue_vars, slot):
    """Twin of the queue-push kernel: slot ``slot`` of the float64 queue (T, K[, D]) takes
    a batch's K' <= K components (``weights`` (K',), ``means``, ``variances`` (K', D));
    the other K - K' get weight 0, mean 0 and variance 1."""
    k = weights.shape[0]
    queue_weights[slot, k:] = 0
    queue_means[slot, k:] = 0
    queue_vars[slot, k:] = 1
    queue_weights[slot, :k] = weights
    queue_means[slot, :k] = means
    queue_vars[slot, :k] = variances


#: Feature ``d`` of a batch's K' components into slot ``slot`` of the queue (a device
#: function, shared by the kernels that push).
_QUEUE_SLOT_FN = r'''
__device__ void queue_slot(const T* w, const T* mu, const T* var, double* qw, double* qm,
                           double* qv, long long slot, int Kp, int K, long long D,
                           long long d) {
    for (int k = 0; k < K; ++k) {
        long long j = (slot * K + k) * D + d;
        qm[j] = k < Kp ? (double)mu[(long long)k * D + d] : 0.0;
        qv[j] = k < Kp ? (double)var[(long long)k * D + d] : 1.0;
        if (d == 0) qw[slot * K + k] = k < Kp ? (double)w[k] : 0.0;
    }
}
'''

_MN_PUSH_SRC = _QUEUE_SLOT_FN + r'''
extern "C" __global__ void mn_push(const T* w, const T* mu, const T* var, double* qw,
                                   double* qm, double* qv, long long slot, int Kp, int K,
                                   long long D) {
    long long d = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    queue_slot(w, mu, var, qw, qm, qv, slot, Kp, K, D, d);
}
'''


def mn_push_args(weights, means, variances, queue_weights, queue_means, queue_vars, slot):
    T, K, D = queue_means.shape
    return D, (weights, means, variances, queue_weights, queue_means, queue_vars,
               numpy.int64(slot), numpy.int32(weights.shape[0]), numpy.int32(K),
               numpy.int64(D))


@_dispatch(mn_push_xp)
def mn_push(weights, means, variances, queue_weights, queue_means, queue_vars, slot):
    """A batch's mixture into slot ``slot`` of the queue, in place (see
    :func:`mn_push_xp`): one kernel, a thread per feature, instead of three to six
    assignments."""
    dtype = means.dtype
    if not (_is_cupy(means) and dtype.name in ('float32', 'float64')
            and all(a.dtype == dtype and a.flags.c_contiguous
                    for a in (weights, means, variances))
            and all(q.dtype.name == 'float64' and q.flags.c_contiguous
                    for q in (queue_weights, queue_means, queue_vars))):
        return mn_push_xp(weights, means, variances, queue_weights, queue_means, queue_vars,
                          slot)
    _mn_launch('mn_push', dtype, *mn_push_args(weights, means, variances, queue_weights,
                                               queue_means, queue_vars, slot))


def mn_record_xp(weights, means, variances, queue_weights, queue_means, queue_vars, slot,
                 avg_mean, avg_var, decay, adjust):
    """Twin of the recording kernel: :func:`mn_push_xp` and :func:`running_update_xp` of
    one batch's mixture (the queue slot and BN's running averages), in place."""
    mn_push_xp(weights, means, variances, queue_weights, queue_means, queue_vars, slot)
    running_update_xp(weights, means, variances, avg_mean, avg_var, decay, adjust)


_MN_RECORD_SRC = _QUEUE_SLOT_FN + _RUNNING_AVERAGES_FN + r'''
extern "C" __global__ void mn_record(const T* w, const T* mu, const T* var, double* qw,
                                     double* qm, double* qv, long long slot, int Kp, int K,
                                     long long D, T* avg_mean, T* avg_var, double decay,
                                     double adjust) {
    long long d = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    queue_slot(w, mu, var, qw, qm, qv, slot, Kp, K, D, d);
    running_averages(w, mu, var, Kp, D, d, avg_mean, avg_var, decay, adjust);
}
'''


def mn_record_args(weights, means, variances, queue_weights, queue_means, queue_vars, slot,
                   avg_mean, avg_var, decay, adjust):
    D, args = mn_push_args(weights, means, variances, queue_weights, queue_means,
                           queue_vars, slot)
    return D, args + (avg_mean, avg_var, numpy.float64(decay), numpy.float64(adjust))


@_dispatch(mn_record_xp)
def mn_record(weights, means, variances, queue_weights, queue_means, queue_vars, slot,
              avg_mean, avg_var, decay, adjust):
    """A training step's bookkeeping in one kernel, a thread per feature: the batch's
    mixture into slot ``slot`` of the queue and BN's running averages updated from it, as
    :func:`mn_push` and :func:`running_update` do them (see :func:`mn_record_xp`)."""
    dtype = means.dtype
    if not (_is_cupy(means) and dtype.name in ('float32', 'float64')
            and all(a.dtype == dtype and a.flags.c_contiguous
                    for a in (weights, means, variances, avg_mean, avg_var))
            and all(q.dtype.name == 'float64' and q.flags.c_contiguous
                    for q in (queue_weights, queue_means, queue_vars))):
        return mn_record_xp(weights, means, variances, queue_weights, queue_means,
                            queue_vars, slot, avg_mean, avg_var, decay, adjust)
    _mn_launch('mn_record', dtype, *mn_record_args(
        weights, means, variances, queue_weights, queue_means, queue_vars, slot, avg_mean,
        avg_var, decay, adjust))


#: The (D, M) blocks of :func:`mn_queue_mixture`'s buffer, after its (2D+1, M) block.
MN_QUEUE_DM = ('x_weight', 'offset_weight', 'mean', 'var')


def mn_queue_size(M, D):
    """The length of an :func:`mn_queue_mixture` buffer of M components in R^D."""
    return (2 * D + 1) * M + 4 * D * M + M + D


def mn_queue_views(buf, M, D):
    """The named views of an :func:`mn_queue_mixture` buffer (a dict): ``logp_weight``
    (M, 2D+1) (an F-ordered view: its transpose is stored, so that the constants' column
    is contiguous), the (D, M) blocks of :data:`MN_QUEUE_DM`, ``scale`` (M,) and ``shift``
    (D,)."""
    W = 2 * D + 1
    out = {'logp_weight': buf[:W * M].reshape(W, M).T}
    i = W * M
    for name in MN_QUEUE_DM:
        out[name] = buf[i:i + D * M].reshape(D, M)
        i += D * M
    out['scale'] = buf[i:i + M]
    out['shift'] = buf[i + M:i + M + D]
    return out


def mn_queue_mixture_xp(queue_weights, queue_means, queue_vars, n_fits, decay, eps,
                        lambda_scale, dtype):
    """Twin of the queue-mixture kernel: the inference mixture of
    Eq. 38-39 over the m = min(n_fits, T) queued batches (oldest first; M = m K
    components, weights w = tau_t lambda_k^t) as one buffer of ``dtype``
    (:func:`mn_queue_views`), computed in float64 about the shift s (D,), the newest
    batch's mean sum_k lambda_k mu_k / sum_k lambda_k: the log-density weights
    ``logp_weight`` (M, 2D+1) = ``[(mu - s) / v | -1 / (2 v) | log w - sum (log(2 pi v) +
    (mu - s)^2 / v) / 2]`` with v = sigma^2 + eps (a product with ``[x - s; (x - s)^2;
    1]`` gives log w_m N(x | mu_m, v_m)); per (d, m) ``x_weight`` a / sqrt(v),
    ``offset_weight`` -(mu - s) a / sqrt(v), ``mean`` mu - s, ``var`` sigma^2; ``scale`` a
    (1/sqrt(lambda) with ``lambda_scale``, 0 for weightless components, else 1)."""
    xp = get_array_module(queue_means)
    T, K, D = queue_means.shape
    m = min(int(n_fits), T)
    M = m * K
    slots = [(int(n_fits) - m + t) % T for t in range(m)]
    tau = decay ** numpy.arange(m - 1, -1, -1, dtype=numpy.float64)
    tau *= (1 - decay) / (1 - decay ** m)
    lam = queue_weights[slots].reshape(-1)
    w = (xp.asarray(tau)[:, None] * queue_weights[slots]).reshape(-1)
    mu = queue_means[slots].reshape(-1, D)
    sig = queue_vars[slots].reshape(-1, D)
    newest = (int(n_fits) - 1) % T
    lw = queue_weights[newest]
    total = lw.sum()
    s = xp.matmul(lw, queue_means[newest]) / xp.where(total > 0, total, 1.0) * (total > 0)
    v = sig + eps
    dev = mu - s
    terms = -0.5 * (xp.log(2 * numpy.pi * v) + dev * dev / v)
    with numpy.errstate(divide='ignore'):
        terms[:, 0] += xp.log(w)
    if lambda_scale:
        a = xp.where(lam > 0, 1 / xp.sqrt(xp.maximum(lam, 1e-300)), 0.0)
    else:
        a = xp.ones_like(lam)
    inv = 1 / xp.sqrt(v)
    W = xp.concatenate([dev / v, -0.5 / v, terms.sum(axis=1)[:, None]], axis=1)
    parts = [W.T, (a[:, None] * inv).T, (-a[:, None] * dev * inv).T, dev.T, sig.T, a, s]
    out = xp.concatenate([xp.ravel(p) for p in parts]).astype(dtype)
    assert out.shape[0] == mn_queue_size(M, D)
    return out


_MN_QUEUE_MIXTURE_SRC = r'''
extern "C" __global__ void mn_queue_mixture(const double* qw, const double* qm,
                                            const double* qv, long long n_fits, int Tq,
                                            int K, long long D, double decay, double eps,
                                            int lscale, T* out) {
    int mslots = n_fits < Tq ? (int)n_fits : Tq;
    long long M = (long long)mslots * K;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= M * D) return;
    long long j = idx / D, d = idx - j * D;
    const double two_pi = 6.283185307179586;
    int t = (int)(j / K), k = (int)(j - (long long)t * K);
    long long slot = (n_fits - mslots + t) % Tq;
    long long newest = (n_fits - 1) % Tq;
    double lw = 0, s = 0;
    for (int q = 0; q < K; ++q) {
        double l = qw[newest * K + q];
        lw += l;
        s += l * qm[(newest * K + q) * D + d];
    }
    s = lw > 0 ? s / lw : 0.0;
    double lam = qw[slot * K + k];
    double mu = qm[(slot * K + k) * D + d], sig = qv[(slot * K + k) * D + d];
    double v = sig + eps, dev = mu - s, inv = 1.0 / sqrt(v);
    double a = lscale ? (lam > 0 ? 1.0 / sqrt(lam > 1e-300 ? lam : 1e-300) : 0.0) : 1.0;
    long long W = 2 * D + 1, DM = D * M, base = W * M;
    out[d * M + j] = (T)(dev / v);
    out[(D + d) * M + j] = (T)(-0.5 / v);
    out[base + d * M + j] = (T)(a * inv);
    out[base + DM + d * M + j] = (T)(-a * dev * inv);
    out[base + 2 * DM + d * M + j] = (T)dev;
    out[base + 3 * DM + d * M + j] = (T)sig;
    if (d == 0) {              // this component's constant: a sum over the features
        double tau = pow(decay, (double)(mslots - 1 - t)) * (1 - decay)
                     / (1 - pow(decay, (double)mslots));
        double c = log(tau * lam);
        for (long long e = 0; e < D; ++e) {
            double lw2 = 0, s2 = 0;
            for (int q = 0; q < K; ++q) {
                double l = qw[newest * K + q];
                lw2 += l;
                s2 += l * qm[(newest * K + q) * D + e];
            }
            s2 = lw2 > 0 ? s2 / lw2 : 0.0;
            double v2 = qv[(slot * K + k) * D + e] + eps;
            double dev2 = qm[(slot * K + k) * D + e] - s2;
            // the log in T: float's where T is float (a double log per feature would
            // make this thread the kernel's tail)
            c -= 0.5 * ((double)log((T)(two_pi * v2)) + dev2 * dev2 / v2);
        }
        out[2 * D * M + j] = (T)c;
        out[base + 4 * DM + j] = (T)a;
    }
    if (j == 0) out[base + 4 * DM + M + d] = (T)s;
}
'''


def mn_queue_mixture_args(queue_weights, queue_means, queue_vars, n_fits, decay, eps,
                          lambda_scale, out):
    T, K, D = queue_means.shape
    return min(int(n_fits), T) * K * D, (
        queue_weights, queue_means, queue_vars, numpy.int64(n_fits), numpy.int32(T),
        numpy.int32(K), numpy.int64(D), numpy.float64(decay), numpy.float64(eps),
        numpy.int32(bool(lambda_scale)), out)


@_dispatch(mn_queue_mixture_xp)
def mn_queue_mixture(queue_weights, queue_means, queue_vars, n_fits, decay, eps,
                     lambda_scale, dtype):
    """The queue's inference mixture, ready for :func:`mn_queue_normalize` (see
    :func:`mn_queue_mixture_xp`): one kernel, a thread per component and feature (the
    first of each component also sums its constant over the features), instead of a
    few dozen small operations; built once per change of the queue."""
    dtype = numpy.dtype(dtype)
    if not (_is_cupy(queue_means) and dtype.name in ('float32', 'float64')
            and all(q.dtype.name == 'float64' and q.flags.c_contiguous
                    for q in (queue_weights, queue_means, queue_vars))):
        return mn_queue_mixture_xp(queue_weights, queue_means, queue_vars, n_fits, decay,
                                   eps, lambda_scale, dtype)
    import cupy
    T, K, D = queue_means.shape
    M = min(int(n_fits), T) * K
    out = cupy.empty((mn_queue_size(M, D),), dtype)
    _mn_launch('mn_queue_mixture', dtype, *mn_queue_mixture_args(
        queue_weights, queue_means, queue_vars, n_fits, decay, eps, lambda_scale, out))
    return out


def mn_queue_normalize_xp(out3, xs, resp, mix, gamma, beta, mode, K, eps):
    """Twin of the queue-normalizing kernel (Eq. 38 with the affine): into ``out3``
    (N, C, L) write ``sum_m resp_m a_m (x - mu_m) / sqrt(v_m)``, then ``* gamma + beta``
    (channel), from ``xs`` = x - s (C, n), the posteriors ``resp`` (M, n) and ``mix`` the
    views of :func:`mn_queue_views`; under the component affine (``gamma``, ``beta``
    (K, C), component m = t K + k) ``v_m = gamma_k sigma^2_m + eps`` and the centre
    moves by beta_k.  Returns ``out3``."""
    xp = get_array_module(out3)
    A, B, beta = mn_queue_coef_xp(mix, resp.shape[0], gamma, beta, mode, K, eps)
    resp1 = xp.concatenate([resp, xp.ones((1, resp.shape[1]), resp.dtype)]).T
    return mn_combine_xp(out3, xs, A.astype(out3.dtype), resp1, Cm=B.astype(out3.dtype),
                         beta=beta)


def mn_queue_coef_xp(mix, M, gamma, beta, mode, K, eps):
    """The (D, M) weights of :func:`mn_queue_normalize_xp`'s output ``xs * (A r) + B r +
    beta``: ``A``, ``B`` with the affine folded in, and the channel ``beta`` (D,) or
    None."""
    xp = get_array_module(mix['var'])
    if mode == MN_COMPONENT:
        reps = M // K
        g = xp.tile(gamma.T, (1, reps)) if gamma is not None else 1.0
        b = xp.tile(beta.T, (1, reps)) if beta is not None else 0.0
        A = mix['scale'][None, :] / xp.sqrt(g * mix['var'] + eps)
        return A, -A * (mix['mean'] + b), None
    A, B = mix['x_weight'], mix['offset_weight']
    if mode == MN_CHANNEL and gamma is not None:
        A, B = A * gamma[:, None], B * gamma[:, None]
    return A, B, beta if mode == MN_CHANNEL else None


_MN_QUEUE_NORMALIZE_SRC = r'''
extern "C" __global__ void mn_queue_normalize(
        T* out, long long soN, long long soC, long long soL, long long N, long long C,
        long long L, const T* xs, const T* resp, int M, const T* A, const T* B,
        const T* mean, const T* var, const T* scale, const T* gamma, const T* beta,
        int mode, int has_gamma, int has_beta, int K, double eps) {
    long long n = N * L;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= C * n) return;
    long long c = idx / n, i = idx - c * n;
    long long a = i / L, l = i - a * L;
    T pa = 0, pb = 0;
    for (int m = 0; m < M; ++m) {
        T r = resp[(long long)m * n + i];
        long long j = c * M + m;
        if (mode == 2) {
            int k = m % K;
            T g = has_gamma ? gamma[(long long)k * C + c] : (T)1;
            T b = has_beta ? beta[(long long)k * C + c] : (T)0;
            T s = scale[m] / sqrt(g * var[j] + (T)eps);
            pa += r * s;
            pb -= r * s * (mean[j] + b);
        } else {
            pa += r * A[j];
            pb += r * B[j];
        }
    }
    T y = xs[c * n + i] * pa + pb;
    if (mode == 1) {
        if (has_gamma) y *= gamma[c];
        if (has_beta) y += beta[c];
    }
    out[a * soN + c * soC + l * soL] = y;
}
'''


def mn_queue_normalize_args(out3, xs, resp, mix, gamma, beta, mode, K, eps):
    N, C, L = out3.shape
    A = mix['x_weight']
    return C * N * L, (out3,) + _strides3(out3) + (
        numpy.int64(N), numpy.int64(C), numpy.int64(L), xs, resp,
        numpy.int32(resp.shape[0]), A, mix['offset_weight'], mix['mean'], mix['var'],
        mix['scale'], gamma if gamma is not None else A, beta if beta is not None else A,
        numpy.int32(mode), numpy.int32(gamma is not None), numpy.int32(beta is not None),
        numpy.int32(K), numpy.float64(eps))


@_dispatch(mn_queue_normalize_xp)
def mn_queue_normalize(out3, xs, resp, mix, gamma, beta, mode, K, eps):
    """Eq. 38's standardization, mixing and affine in one kernel (see
    :func:`mn_queue_normalize_xp`), written in x's layout."""
    small = [a for a in (gamma, beta) if a is not None]
    if not (_is_cupy(out3) and out3.dtype.name in ('float32', 'float64')
            and all(a.dtype == out3.dtype and a.flags.c_contiguous
                    for a in small + [xs, resp]
                    + [mix[k] for k in MN_QUEUE_DM + ('scale',)])):
        return mn_queue_normalize_xp(out3, xs, resp, mix, gamma, beta, mode, K, eps)
    _mn_launch('mn_queue_normalize', out3.dtype,
               *mn_queue_normalize_args(out3, xs, resp, mix, gamma, beta, mode, K, eps))
    return out3


SOURCES.update({'mn_shift': _MN_SHIFT_SRC, 'mn_stack': _MN_STACK_SRC,
                'mn_coef': _MN_COEF_SRC, 'mn_combine': _MN_COMBINE_SRC,
                'mn_grad_stack': _MN_GRAD_STACK_SRC, 'mn_grad_coef': _MN_GRAD_COEF_SRC,
                'mn_push': _MN_PUSH_SRC, 'mn_queue_mixture': _MN_QUEUE_MIXTURE_SRC,
                'mn_queue_normalize': _MN_QUEUE_NORMALIZE_SRC, 'mn_record': _MN_RECORD_SRC})
# ---- end of mixture normalization's passes ----


# ============================================================================
# The GMM fit on the device (mixnorm.gmm's device path, one process).
#
# A fit of K components to n points in R^d, with no host synchronisation until it
# ends: the fitting frame (fit_frame_stats, fit_augment), the K-means++ rounds
# (kpp_round, with a scan per round for the sampling; the last one also writes the
# partition each of its candidates would give), the M-step and the density or
# distance coefficients of the next pass (fit_coef, completed by lane sums in
# fit_log_softmax or argmin_onehot: the nearest-centre partition of a Lloyd step),
# and the last M-step with the count rule, sorting, data units and status
# (fit_finish).
# Matrix products (moments, log-densities) go to cuBLAS.  Every kernel is thread-per-
# item without synchronisation; its twin is what runs elsewhere.
# ============================================================================

def _launch(name, dtype, items, args, threads=256):
    _kernel(name, dtype)(((items + threads - 1) // threads,), (threads,), args)


def _fit_ok(*arrays):
    """The CUDA kernels take C-contiguous float32/float64 arrays of one dtype (``x``
    may be strided)."""
    dtype = arrays[0].dtype
    return (_is_cupy(arrays[0]) and dtype.name in ('float32', 'float64')
            and all(a.dtype == dtype and a.flags.c_contiguous for a in arrays[1:]))


def fit_frame_stats_xp(x, step):
    """Twin of the frame-statistics kernel: for the row subsample ``x[::step]`` of the
    (n, d) points, float64 ``[mean (d) | sum of squared deviations from it (d)]``, from
    one pass of sums shifted by the subsample's first row (the mean's deviations, not
    the raw squares: no cancellation for data far from the origin)."""
    xp = get_array_module(x)
    sub = x[::step]
    dev = sub.astype(xp.float64) - sub[0].astype(xp.float64)
    n_sub = sub.shape[0]
    s1 = dev.sum(axis=0)
    m2 = xp.maximum(xp.square(dev).sum(axis=0) - s1 * s1 / n_sub, 0)
    return xp.concatenate([sub[0].astype(xp.float64) + s1 / n_sub, m2])


_FIT_FRAME_STATS_SRC = r'''
extern "C" __global__ void fit_frame_stats(const T* x, long long sx_i, long long sx_c,
                                           long long step, long long n_sub, long long d,
                                           double* stats) {
    long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    const T* col = x + c * sx_c;
    long long stride = step * sx_i;
    double x0 = (double)col[0];
    double a1[8], a2[8];            // eight rows in flight per thread
    for (int j = 0; j < 8; ++j) { a1[j] = 0; a2[j] = 0; }
    long long r = 0;
    for (; r + 8 <= n_sub; r += 8) {
        double v[8];
        for (int j = 0; j < 8; ++j) v[j] = (double)col[(r + j) * stride] - x0;
        for (int j = 0; j < 8; ++j) { a1[j] += v[j]; a2[j] += v[j] * v[j]; }
    }
    for (; r < n_sub; ++r) {
        double v = (double)col[r * stride] - x0;
        a1[0] += v;
        a2[0] += v * v;
    }
    double s1 = 0, s2 = 0;
    for (int j = 0; j < 8; ++j) { s1 += a1[j]; s2 += a2[j]; }
    double m2 = s2 - s1 * s1 / (double)n_sub;
    stats[c] = x0 + s1 / (double)n_sub;
    stats[d + c] = m2 < 0 ? 0 : m2;
}
'''


@_dispatch(fit_frame_stats_xp)
def fit_frame_stats(x, step):
    """Mean and squared deviations per feature of the row subsample ``x[::step]`` (see
    :func:`fit_frame_stats_xp`): one kernel, a thread per feature (one pass, eight
    rows' loads in flight)."""
    if not (_is_cupy(x) and x.dtype.name in ('float32', 'float64')):
        return fit_frame_stats_xp(x, step)
    import cupy
    n, d = x.shape
    stats = cupy.empty((2 * d,), numpy.float64)
    _launch('fit_frame_stats', x.dtype, d,
            (x,) + _elem_strides(x) + (numpy.int64(step), numpy.int64((n + step - 1) // step),
                                       numpy.int64(d), stats))
    return stats


#: Threads per point of :func:`fit_augment` (a warp: its stores to a row coalesce).
LANES = 32


def fit_augment_xp(x, stats, n_sub, min_scale, first, za, part, rows=None):
    """Twin of the frame kernel: from ``stats`` (:func:`fit_frame_stats`, ``n_sub`` rows)
    the frame's scale ``max(sqrt(sum M2 / (n_sub d)), min_scale)`` (1 where that is not
    finite), into ``za`` the rows ``[z^2 | z | 0 | 1]`` for ``z = (x - mean) / scale``
    (the ``|z|^2`` column is left 0: the device fit's distance coefficients weight the
    ``z^2`` block instead) and, for ``first >= 0``, into ``part`` (n, LANES) the squared
    distance of every point to point ``first`` split by feature ``c`` into the sums over
    ``c % LANES`` (their row sums are the distances).  With ``rows`` (m,) (float64
    indices of points of ``x``) ``za`` and ``part`` have m + n rows: first those of the
    points ``rows`` (K-means++'s subsample), then every point's; ``first`` is a row of
    ``x``.  Returns ``(za, part, scale (1,) float64)``."""
    xp = get_array_module(za)
    d = x.shape[1]
    m = 0
    if rows is not None:
        m = rows.shape[0]
        x = xp.concatenate([x[rows.astype(xp.int64)], x])
    spread = stats[d:].sum() / (float(n_sub) * d)
    with numpy.errstate(invalid='ignore', over='ignore'):
        scale = xp.maximum(xp.where(xp.isfinite(spread), xp.sqrt(xp.abs(spread)), 1.0),
                           min_scale)
        inv = (1.0 / scale).astype(za.dtype)
        augment_xp(x, stats[:d].astype(za.dtype), inv, za)
        za[:, 2 * d] = 0
        if first >= 0:
            sq = xp.zeros((za.shape[0], -(-d // LANES) * LANES), dtype=za.dtype)
            sq[:, :d] = xp.square(za[:, d:2 * d] - za[m + first, d:2 * d])
            part[...] = sq.reshape(za.shape[0], -1, LANES).sum(axis=1)
    return za, part, xp.reshape(scale, (1,))


_FIT_AUGMENT_SRC = r'''
extern "C" __global__ void fit_augment(const T* x, long long sx_i, long long sx_c,
                                       const double* stats, long long n, long long d,
                                       double n_sub, double min_scale, long long first,
                                       T* za, T* part, double* scale_out,
                                       const double* rows, long long m) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n * 32) return;
    long long i = idx / 32;
    long long lane = idx - i * 32;
    double m2 = 0;
    for (long long c = 0; c < d; ++c) m2 += stats[d + c];
    double spread = m2 / (n_sub * (double)d);
    double scale = (spread - spread == 0) ? sqrt(spread) : 1.0;
    if (min_scale > scale) scale = min_scale;
    T inv = (T)(1.0 / scale);
    T* row = za + i * (2 * d + 2);
    long long src = i < m ? (long long)rows[i] : i - m;     // the subsample, then all
    T dd = 0;
    for (long long c = lane; c < d; c += 32) {
        T sh = (T)stats[c];
        T z = (x[src * sx_i + c * sx_c] - sh) * inv;
        row[c] = z * z;
        row[d + c] = z;
        if (first >= 0) {
            T df = z - (x[first * sx_i + c * sx_c] - sh) * inv;
            dd += df * df;
        }
    }
    if (lane == 0) { row[2 * d] = 0; row[2 * d + 1] = 1; }
    if (first >= 0) part[idx] = dd;
    if (idx == 0) scale_out[0] = scale;
}
'''


@_dispatch(fit_augment_xp)
def fit_augment(x, stats, n_sub, min_scale, first, za, part, rows=None):
    """The fitting frame and the first seed's distances (see :func:`fit_augment_xp`):
    one kernel, a warp per point (``x`` may be a strided view of ``za``'s dtype)."""
    if not (_is_cupy(za) and za.dtype.name in ('float32', 'float64') and x.dtype == za.dtype
            and za.flags.c_contiguous and (first < 0 or (part.dtype == za.dtype
                                                         and part.flags.c_contiguous))
            and (rows is None or (rows.dtype.name == 'float64'
                                  and rows.flags.c_contiguous))):
        return fit_augment_xp(x, stats, n_sub, min_scale, first, za, part, rows)
    import cupy
    n, d = za.shape[0], x.shape[1]
    scale = cupy.empty((1,), numpy.float64)
    _launch('fit_augment', za.dtype, n * LANES,
            (x,) + _elem_strides(x) + (stats, numpy.int64(n), numpy.int64(d),
                                       numpy.float64(n_sub), numpy.float64(min_scale),
                                       numpy.int64(first), za, za if first < 0 else part,
                                       scale, stats if rows is None else rows,
                                       numpy.int64(0 if rows is None else rows.shape[0])))
    return za, part, scale


def _closest_xp(xp, mins, lanes):
    """Nearest-seed distances (n,) from a row of ``mins`` (n * lanes): the sums of
    ``lanes`` partial sums per point (:func:`fit_augment`'s) or the row itself."""
    return mins if lanes == 1 else mins.reshape(-1, lanes).sum(axis=1)


def kpp_round_xp(za, mins_prev, cum_prev, u, mins, best, lanes=1, chain=None):
    """Twin of the K-means++ round kernel.  The previous round left its trials'
    nearest-seed distances ``mins_prev`` (r, n * lanes) (``lanes`` partial sums per
    point after the first seed: :func:`fit_augment`) and their running sums
    ``cum_prev`` (r, n * lanes) float64; its winner is the trial of lowest potential
    (``cum_prev[:, -1]``, first on ties), recorded in ``best`` (1,) int64.  For the
    uniform draws ``u`` (trials,) the candidates are drawn from the winner's potential
    (inverse CDF over the points, as :func:`sample_candidates_xp`), and ``mins``
    (trials, n) receives each point's distance to its nearest seed if that candidate
    were kept.

    The last round (``chain = (first, lanes0, mins_all, best_all, k, out)``) also
    writes into ``out`` (trials K, n) the hard responsibilities of the seeds' partition
    that keeping each candidate gives (rows ``j K`` to ``j K + K - 1`` for candidate
    ``j``), from ``first`` (the first seed's distances,
    ``lanes0`` partial sums per point), the rounds' ``mins_all`` ((K-1) trials, n) and
    their winners ``best_all`` (this round is ``k``): a point takes label k when the
    candidate is strictly closer than the seeds before it.

    The draws and potentials may run over the leading points only: ``cum_prev`` then
    covers the first n' < n points (r, n' * lanes), and ``out`` (trials K, n - s) the
    partitions of the points after the first s (``za`` as :func:`fit_augment` writes
    it with a subsample: its m rows, then all points)."""
    xp = get_array_module(za)
    n = za.shape[0]
    d = (za.shape[1] - 2) // 2
    b = xp.argmin(cum_prev[:, -1])
    cum = cum_prev[b][lanes - 1::lanes]
    cand = xp.minimum(xp.searchsorted(cum, u * cum[-1], side='right'), cum.shape[0] - 1)
    z = za[:, d:2 * d]
    coef = xp.concatenate([-2 * z[cand], xp.square(z[cand]).sum(axis=1)[:, None]], axis=1)
    dist = coef[:, :d] @ z.T + xp.square(z).sum(axis=1)[None, :] + coef[:, d:]
    xp.maximum(dist, 0, out=dist)
    prev = _closest_xp(xp, mins_prev[b], lanes)
    xp.minimum(dist, prev[None, :], out=mins)
    best[...] = b
    if chain is not None:
        first, lanes0, mins_all, best_all, k, out = chain
        trials = mins.shape[0]
        K = out.shape[0] // trials
        label = xp.zeros((n,), dtype=xp.int64)
        closest = _closest_xp(xp, first, lanes0)
        for r in range(1, k):
            row = mins_all[(r - 1) * trials + (b if r == k - 1 else best_all[r])]
            label[row < closest] = r
            closest = row
        skip = n - out.shape[1]
        for j in range(trials):
            lab = xp.where(mins[j] < prev, k, label)
            out[j * K:(j + 1) * K] = lab[None, skip:] == xp.arange(K)[:, None]
    return mins, best


_KPP_ROUND_SRC = r'''
extern "C" __global__ void kpp_round(const T* za, long long n, long long d,
                                     const T* mins_prev, const double* cum_prev,
                                     int rows_prev, int lanes, const double* u, int trials,
                                     T* mins, long long* best_out, const T* first,
                                     int lanes0, const T* mins_all,
                                     const long long* best_all, int k, int K, T* out,
                                     long long clen, long long skip) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)trials * n) return;
    long long t = idx / n, i = idx - t * n;
    long long len = n * lanes;
    long long best = 0;
    double bp = cum_prev[clen - 1];        // the draws run over the first clen / lanes
    for (long long r = 1; r < rows_prev; ++r) {
        double p = cum_prev[r * clen + clen - 1];
        if (p < bp) { bp = p; best = r; }
    }
    const double* cum = cum_prev + best * clen + (lanes - 1);  // point j: cum[j * lanes]
    double target = u[t] * bp;
    long long nd = clen / lanes;
    long long lo = 0, hi = nd;             // the first point with cum > target
    while (lo < hi) {
        long long mid = lo + (hi - lo) / 2;
        if (cum[mid * lanes] <= target) lo = mid + 1; else hi = mid;
    }
    long long c = lo < nd - 1 ? lo : nd - 1;
    long long W = 2 * d + 2;
    const T* zi = za + i * W + d;
    const T* zc = za + c * W + d;
    T dist = 0;
    for (long long f = 0; f < d; ++f) { T df = zi[f] - zc[f]; dist += df * df; }
    const T* mp = mins_prev + best * len + i * lanes;
    T prev = 0;
    for (int l = 0; l < lanes; ++l) prev += mp[l];
    T m = dist < prev ? dist : prev;
    mins[t * n + i] = m;
    if (idx == 0) best_out[0] = best;
    if (K > 0) {       // the last round: the partition each candidate would give
        T closest = 0;
        for (int l = 0; l < lanes0; ++l) closest += first[i * lanes0 + l];
        int label = 0;
        for (int r = 1; r < k; ++r) {
            long long b = r == k - 1 ? best : best_all[r];
            T cur = mins_all[((long long)(r - 1) * trials + b) * n + i];
            if (cur < closest) label = r;
            closest = cur;
        }
        if (m < prev) label = k;
        if (i >= skip)
            for (int c = 0; c < K; ++c)
                out[(t * K + c) * (n - skip) + i - skip] = c == label ? (T)1 : (T)0;
    }
}
'''


@_dispatch(kpp_round_xp)
def kpp_round(za, mins_prev, cum_prev, u, mins, best, lanes=1, chain=None):
    """One greedy K-means++ round (see :func:`kpp_round_xp`): one kernel, a thread per
    (trial, point) that finds the previous winner, samples its trial's candidate by
    binary search and measures the distance to it (in the last round also the
    partition each candidate would give).  Returns ``(mins, best)``."""
    if not (_fit_ok(za, mins_prev, mins) and cum_prev.dtype.name == 'float64'
            and cum_prev.flags.c_contiguous and u.dtype.name == 'float64'
            and u.flags.c_contiguous and best.dtype.name == 'int64'
            and (chain is None or (_fit_ok(za, chain[0], chain[2], chain[5])
                                   and chain[3].dtype.name == 'int64'))):
        return kpp_round_xp(za, mins_prev, cum_prev, u, mins, best, lanes, chain)
    n, W = za.shape
    trials = mins.shape[0]
    first, lanes0, mins_all, best_all, k, out = chain if chain is not None else \
        (mins, 1, mins, best, 0, mins)
    _launch('kpp_round', za.dtype, trials * n,
            (za, numpy.int64(n), numpy.int64((W - 2) // 2), mins_prev, cum_prev,
             numpy.int32(cum_prev.shape[0]), numpy.int32(lanes), u, numpy.int32(trials),
             mins, best, first, numpy.int32(lanes0), mins_all, best_all, numpy.int32(k),
             numpy.int32(0 if chain is None else out.shape[0] // trials), out,
             numpy.int64(cum_prev.shape[1]), numpy.int64(n - out.shape[1])))
    return mins, best


def _mstep_xp(xp, mom, n, eps_z, tiny):
    """The M-step (float64) of moments ``[sum r z^2 | sum r z | . | sum r]`` (K, 2d+2):
    weights, means, variances (+ ``eps_z``), and whether each row is finite."""
    d = (mom.shape[1] - 2) // 2
    mom = mom.astype(xp.float64)
    nk = mom[:, 2 * d + 1]
    inv = 1.0 / xp.maximum(nk, tiny)
    means = mom[:, d:2 * d] * inv[:, None]
    var = xp.maximum(mom[:, :d] * inv[:, None] - means * means, 0) + eps_z
    return nk / n, means, var


def _by_lane(xp, a, fill, reduce):
    """``a`` (K, d) reduced over the features of each lane (feature c in lane
    ``c % LANES``): (K, LANES)."""
    K, d = a.shape
    padded = xp.full((K, -(-d // LANES) * LANES), fill, dtype=a.dtype)
    padded[:, :d] = a
    return reduce(padded.reshape(K, -1, LANES), axis=1)


def _density_parts_xp(xp, w, means, var, log2pi):
    """The weighted log-density coefficients ``[-1/(2v) | m/v | 0 | log w - d log(2pi)
    / 2]`` (K, 2d+2) and the rest of the normaliser, ``-(m^2/v + log v) / 2`` summed
    by lane (K, LANES) (float64; log-weight -1e30 for weight 0)."""
    K, d = means.shape
    prec = 1.0 / var
    logw = xp.where(w > 0, xp.log(xp.where(w > 0, w, 1.0)), -1e30)
    coef = xp.concatenate([-0.5 * prec, means * prec, xp.zeros((K, 1)),
                           (logw - 0.5 * d * log2pi)[:, None]], axis=1)
    return coef, _by_lane(xp, -0.5 * (means * means * prec + xp.log(var)), 0.0, xp.sum)


def _lane_flags(xp, mom, cols):
    """1.0 where a lane of a row of ``mom`` holds a non-finite value among the columns
    ``cols`` of each lane's features (or the row's count), else 0.0: (K, LANES)."""
    d = (mom.shape[1] - 2) // 2
    bad = ~xp.isfinite(mom.astype(xp.float64))
    per_c = bad[:, :d] | bad[:, d:2 * d]
    flags = _by_lane(xp, per_c, False, xp.any) | bad[:, 2 * d + 1][:, None]
    if cols == 'all':               # also the |z|^2 column, in lane 0
        flags[:, 0] |= bad[:, 2 * d]
    return flags.astype(xp.float64)


def _selected_xp(mom, select, K):
    """The (K, 2d+2) moments of the winning candidate among the hypotheses stacked in
    ``mom`` (trials K, 2d+2) (the last K-means++ round's; ``select`` (trials, n) its
    running sums: lowest total, first on ties), or ``mom`` itself (``select`` None)."""
    if select is None:
        return mom
    j = get_array_module(mom).argmin(select[:, -1])
    return mom[j * K:(j + 1) * K]


def fit_coef_xp(mom, n, scale, eps, tiny, log2pi, mode, coef, part, bad, reset,
                select=None):
    """Twin of the M-step kernel: from the moments ``mom`` (K, 2d+2) of a pass over
    ``n`` points, with variance floor ``eps / scale^2`` (``scale`` (1,) float64), write
    into ``coef`` (K, 2d+2) the coefficients of the next pass and into ``part``
    (K, LANES) the rest of their constant column, summed by lane (its consumer,
    :func:`fit_log_softmax` or :func:`argmin_onehot`, adds the row sums): ``mode`` 0
    the weighted log-densities (:func:`_density_parts_xp`), 1 the squared distances to
    the means ``[1 | -2m | 0 | 0]`` plus ``|m|^2`` (through the ``z^2`` block: the
    device frame leaves the ``|z|^2`` column 0).  ``bad`` (K, LANES) float64 flags
    non-finite moments by lane (overwritten when ``reset``, else accumulated).
    ``select``: see :func:`_selected_xp`.  Returns ``(coef, part, bad)``."""
    xp = get_array_module(mom)
    K = coef.shape[0]
    mom = _selected_xp(mom, select, K)
    with numpy.errstate(invalid='ignore', over='ignore', divide='ignore'):
        w, means, var = _mstep_xp(xp, mom, n, eps / (scale[0] * scale[0]), tiny)
        if mode == 0:
            c, p = _density_parts_xp(xp, w, means, var, log2pi)
        else:
            c = xp.concatenate([xp.ones_like(means), -2.0 * means, xp.zeros((K, 2))], axis=1)
            p = _by_lane(xp, means * means, 0.0, xp.sum)
    coef[...] = c
    part[...] = p
    flags = _lane_flags(xp, mom, 'fit')
    bad[...] = flags if reset else xp.maximum(bad, flags)
    return coef, part, bad


_FIT_COEF_SRC = r'''
extern "C" __global__ void fit_coef(const T* mom, long long d, int K, double n,
                                    const double* scale, double eps, double tiny,
                                    double log2pi, int mode, T* coef, double* part,
                                    double* bad, int reset, const double* select,
                                    int hyp, long long sel_len) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)K * 32) return;
    long long k = idx / 32, lane = idx - k * 32;
    long long W = 2 * d + 2;
    if (hyp > 1) {     // the winning candidate's moments among the stacked ones
        int bj = 0;
        double bp = select[sel_len - 1];
        for (int j = 1; j < hyp; ++j) {
            double p = select[(long long)j * sel_len + sel_len - 1];
            if (p < bp) { bp = p; bj = j; }
        }
        mom += (long long)bj * K * W;
    }
    const T* m = mom + k * W;
    T* out = coef + k * W;
    double eps_z = eps / (scale[0] * scale[0]);
    double nk = (double)m[2 * d + 1];
    int ok = nk - nk == 0;
    double inv = 1.0 / (nk > tiny ? nk : tiny);
    double acc = 0;
    for (long long c = lane; c < d; c += 32) {
        double s1 = (double)m[d + c], s2 = (double)m[c];
        if (!(s1 - s1 == 0 && s2 - s2 == 0)) ok = 0;
        double mu = s1 * inv;
        double v = s2 * inv - mu * mu;
        v = (v > 0 ? v : 0) + eps_z;
        if (mode == 0) {
            double p = 1.0 / v;
            out[c] = (T)(-0.5 * p);
            out[d + c] = (T)(mu * p);
            acc += -0.5 * (mu * mu * p + log(v));
        } else {
            out[c] = 1;
            out[d + c] = (T)(-2.0 * mu);
            acc += mu * mu;
        }
    }
    if (lane == 0) {
        double w = nk / n;
        double logw = w > 0 ? log(w) : -1e30;
        out[2 * d] = 0;
        out[2 * d + 1] = mode == 0 ? (T)(logw - 0.5 * (double)d * log2pi) : (T)0;
    }
    part[idx] = acc;
    double flag = ok ? 0.0 : 1.0;
    bad[idx] = reset ? flag : (bad[idx] > flag ? bad[idx] : flag);
}
'''


@_dispatch(fit_coef_xp)
def fit_coef(mom, n, scale, eps, tiny, log2pi, mode, coef, part, bad, reset,
             select=None):
    """The M-step and the next pass's coefficients (see :func:`fit_coef_xp`): one
    kernel, a warp per component (a lane per 32nd feature)."""
    if not (_fit_ok(mom, coef) and scale.dtype.name == 'float64'
            and all(a.dtype.name == 'float64' and a.flags.c_contiguous for a in (part, bad))
            and (select is None or (select.dtype.name == 'float64'
                                    and select.flags.c_contiguous))):
        return fit_coef_xp(mom, n, scale, eps, tiny, log2pi, mode, coef, part, bad, reset,
                           select)
    K, W = coef.shape
    _launch('fit_coef', mom.dtype, K * LANES,
            (mom, numpy.int64((W - 2) // 2), numpy.int32(K), numpy.float64(n), scale,
             numpy.float64(eps), numpy.float64(tiny), numpy.float64(log2pi),
             numpy.int32(mode), coef, part, bad, numpy.int32(bool(reset)))
            + _select_args(select, scale))
    return coef, part, bad


def _select_args(select, dummy):
    """The kernel arguments of ``select`` (:func:`_selected_xp`)."""
    if select is None:
        return (dummy, numpy.int32(1), numpy.int64(1))
    return (select, numpy.int32(select.shape[0]), numpy.int64(select.shape[1]))


def _completed_xp(a, part):
    """Per-point quantities ``a`` (K, n) whose constants are completed by the row sums
    of ``part`` (K, LANES) (the rest of each component's constant, :func:`fit_coef`)."""
    return a + part.sum(axis=1).astype(a.dtype)[:, None]


#: Component k of per-point quantities at point i, completed by the lane sums of
#: ``part`` (a device function, as :func:`_completed_xp`).
_COMPLETED_FN = r'''
__device__ T completed(const T* a, const double* part, long long n, int k, long long i) {
    double c = 0;
    for (int l = 0; l < 32; ++l) c += part[k * 32 + l];
    return a[(long long)k * n + i] + (T)c;
}
'''


def _per_point(name, twin, a, part, out):
    """Launch the per-point kernel ``name`` (a thread per point) on ``a`` (K, n) and
    ``part`` into ``out`` (K, n), or run its ``twin``."""
    if not (_fit_ok(a, out) and part.dtype.name == 'float64' and part.flags.c_contiguous):
        return twin(a, part, out)
    K, n = a.shape
    _launch(name, a.dtype, n, (a, part, numpy.int64(n), numpy.int32(K), out))
    return out


def fit_log_softmax_xp(lp, part, out):
    """Twin of the posterior kernel: the column log-softmax (into ``out`` (K, n)) of the
    log-densities ``lp`` (K, n) completed by ``part`` (:func:`_completed_xp`).  Returns
    ``out``."""
    out[...] = log_softmax_columns_xp(_completed_xp(lp, part))[0]
    return out


_FIT_LOG_SOFTMAX_SRC = _COMPLETED_FN + r'''
extern "C" __global__ void fit_log_softmax(const T* lp, const double* part, long long n,
                                           int K, T* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T mx = 0;
    for (int k = 0; k < K; ++k) {
        T v = completed(lp, part, n, k, i);
        out[(long long)k * n + i] = v;
        if (k == 0 || v > mx) mx = v;
    }
    T s = 0;
    for (int k = 0; k < K; ++k) {
        T e = exp(out[(long long)k * n + i] - mx);
        out[(long long)k * n + i] = e;
        s += e;
    }
    T inv = (T)1 / s;
    for (int k = 0; k < K; ++k) out[(long long)k * n + i] *= inv;
}
'''


@_dispatch(fit_log_softmax_xp)
def fit_log_softmax(lp, part, out):
    """Posteriors (K, n) of log-densities whose constants are completed by lane sums
    (see :func:`fit_log_softmax_xp`): one kernel, a thread per point."""
    return _per_point('fit_log_softmax', fit_log_softmax_xp, lp, part, out)


def argmin_onehot_xp(dist, part, out):
    """Twin of the nearest-centre kernel: the one-hot (K, n) (into ``out``) of the row
    of least ``dist`` (K, n) completed by ``part`` (:func:`_completed_xp`) in each
    column (first on ties)."""
    xp = get_array_module(dist)
    K = dist.shape[0]
    out[...] = _completed_xp(dist, part).argmin(axis=0)[None, :] == xp.arange(K)[:, None]
    return out


_ARGMIN_ONEHOT_SRC = _COMPLETED_FN + r'''
extern "C" __global__ void argmin_onehot(const T* dist, const double* part, long long n,
                                         int K, T* out) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int best = 0;
    T b = 0;
    for (int k = 0; k < K; ++k) {
        T v = completed(dist, part, n, k, i);
        if (k == 0 || v < b) { b = v; best = k; }
    }
    for (int k = 0; k < K; ++k) out[(long long)k * n + i] = k == best ? (T)1 : (T)0;
}
'''


@_dispatch(argmin_onehot_xp)
def argmin_onehot(dist, part, out):
    """The nearest-centre partition of a Lloyd step as hard responsibilities (see
    :func:`argmin_onehot_xp`): one kernel, a thread per point."""
    return _per_point('argmin_onehot', argmin_onehot_xp, dist, part, out)


def fit_finish_xp(mom, n, scale, stats, eps, tiny, log2pi, min_weight, min_count,
                  coef, part, weights, means, variances, status, reset, select=None,
                  merge=False):
    """Twin of the last M-step kernel.  From the moments ``mom`` (K, 2d+2) of the last
    pass: the M-step (as :func:`fit_coef_xp`), the count rule (component k passes when
    its weight ``w >= min_weight`` and ``w * n >= min_count``; the heaviest is always
    kept), and, sorted by decreasing weight (stable) with the kept weights renormalised
    (a dropped component keeps its slot, after the kept ones, with weight 0), the
    mixture in data units (``mean + m * scale``, ``v * scale^2``, ``stats[:d]`` the
    frame's mean) into ``weights`` (K,), ``means`` and ``variances`` (K, d), and its
    log-density coefficients into ``coef`` (K, 2d+2) and ``part`` (K, LANES) (as
    :func:`fit_coef_xp`; log-weight -inf for a dropped slot, so an E-step under them
    merges the dropped components' points into the kept ones).  ``status``
    (2 K LANES + 2 K,) float64: the non-finite flags of each row of moments by lane
    (accumulated into those of the earlier passes unless ``reset``), the largest
    magnitude of each kept output component by lane (float64, before the cast), then
    which slots the count rule keeps, then (``merge``) the merging round's verdict.

    ``merge``: the merging round of the count rule (Sec. 5.3), from the moments of an
    E-step under the first round's mixture.  If the first round kept every component
    it changes nothing; else the slots the first round kept are re-estimated (M-step),
    sorted and renormalised as above (the dropped slots stay last with weight 0), and
    ``status[2 K LANES + K:]`` says per slot whether it passes the count rule again (1
    for a dropped slot, and for all when one component is left); a 0 there means that
    one more round is needed.  ``select``: see :func:`_selected_xp`."""
    xp = get_array_module(mom)
    K, W = coef.shape
    d = (W - 2) // 2
    s = scale[0]
    KL = K * LANES
    if merge:
        alive = status[2 * KL:2 * KL + K] != 0
        if bool(alive.all()):
            return coef, part, weights, means, variances, status
    else:
        mom = _selected_xp(mom, select, K)
        alive = xp.ones(K, bool)
    with numpy.errstate(invalid='ignore', over='ignore', divide='ignore'):
        w, m, v = _mstep_xp(xp, mom, n, eps / (s * s), tiny)
        passes = (w >= min_weight) & (w * n >= min_count)
        order = xp.argsort(xp.where(alive, -w, xp.inf), kind='stable')
        w, m, v, passes = w[order], m[order], v[order], passes[order]
        if merge:
            live = alive[order]
            keep = ~live | passes | (int(alive.sum()) == 1)
        else:
            live = keep = passes | (xp.arange(K) == 0)
        w = xp.where(live, w / xp.where(live, w, 0.0).sum(), 0.0)
        c, p = _density_parts_xp(xp, w, m, v, log2pi)
        c[:, -1] = xp.where(live, c[:, -1], -xp.inf)    # no posterior, however far
        mean_x = stats[:d] + m * s
        var_x = v * (s * s)
        big = xp.maximum(_by_lane(xp, xp.maximum(xp.abs(mean_x), xp.abs(var_x)), 0.0,
                                  xp.max), xp.abs(w)[:, None])
        big = xp.where(live[:, None], big, 0.0)
    coef[...] = c
    part[...] = p
    weights[...] = w
    means[...] = mean_x
    variances[...] = var_x
    flags = _lane_flags(xp, mom, 'all').reshape(-1)
    status[:KL] = flags if reset else xp.maximum(status[:KL], flags)
    status[KL:2 * KL] = big.reshape(-1)
    status[2 * KL + (K if merge else 0):2 * KL + (2 * K if merge else K)] = keep
    return coef, part, weights, means, variances, status


_FIT_FINISH_SRC = r'''
extern "C" __global__ void fit_finish(const T* mom, long long d, int K, double n,
                                      const double* scale, const double* stats,
                                      double eps, double tiny, double log2pi,
                                      double min_weight, double min_count, T* coef,
                                      double* part, T* weights, T* means, T* variances,
                                      double* status, int reset, const double* select,
                                      int hyp, long long sel_len, int merge) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)K * 32) return;
    int s = (int)(idx / 32);
    long long lane = idx - (long long)s * 32;
    long long W = 2 * d + 2;
    long long KL = (long long)K * 32;
    const double* alive = status + 2 * KL;     // the first round's kept slots
    if (merge) {       // the merging round changes nothing if the first kept them all
        int all = 1;
        for (int k = 0; k < K; ++k) if (alive[k] == 0) all = 0;
        if (all) return;
    }
    if (hyp > 1) {     // the winning candidate's moments among the stacked ones
        int bj = 0;
        double bp = select[sel_len - 1];
        for (int j = 1; j < hyp; ++j) {
            double p = select[(long long)j * sel_len + sel_len - 1];
            if (p < bp) { bp = p; bj = j; }
        }
        mom += (long long)bj * K * W;
    }
    double sc = scale[0];
    double eps_z = eps / (sc * sc);
    // the component of rank s (the live ones first, each by decreasing weight, stable),
    // whether it is live (kept by the count rule; in the merging round, kept by the
    // first) and passes, and the live weights' sum
    int comp = 0, live_c = 0, pass_c = 0, n_alive = 0;
    double total = 0;
    for (int k = 0; k < K; ++k) {
        double wk = (double)mom[k * W + 2 * d + 1] / n;
        int ak = merge ? alive[k] != 0 : 1;
        int rank = 0;
        for (int j = 0; j < K; ++j) {
            double wj = (double)mom[j * W + 2 * d + 1] / n;
            int aj = merge ? alive[j] != 0 : 1;
            if (aj > ak || (aj == ak && (wj > wk || (wj == wk && j < k)))) ++rank;
        }
        int pk = wk >= min_weight && wk * n >= min_count;
        int lk = merge ? ak : (pk || rank == 0);
        n_alive += ak;
        if (lk) total += wk;
        if (rank == s) { comp = k; live_c = lk; pass_c = pk; }
    }
    int keep = merge ? (!live_c || pass_c || n_alive == 1) : live_c;
    // row s: finite moments (this lane's features, the |z|^2 column in lane 0, the
    // count)
    const T* own = mom + s * W;
    double cnt = (double)own[2 * d + 1];
    int ok = cnt - cnt == 0;
    for (long long c = lane; c < d; c += 32) {
        double a = (double)own[c], b = (double)own[d + c];
        if (!(a - a == 0 && b - b == 0)) ok = 0;
    }
    if (lane == 0) { double a = (double)own[2 * d]; if (!(a - a == 0)) ok = 0; }
    // slot s: component comp, renormalised, in data units; its density coefficients
    const T* m = mom + comp * W;
    double nk = (double)m[2 * d + 1];
    double inv = 1.0 / (nk > tiny ? nk : tiny);
    double w = live_c ? (nk / n) / total : 0.0;
    double acc = 0, big = w > 0 ? w : -w;
    T* out = coef + s * W;
    for (long long c = lane; c < d; c += 32) {
        double mu = (double)m[d + c] * inv;
        double v = (double)m[c] * inv - mu * mu;
        v = (v > 0 ? v : 0) + eps_z;
        double p = 1.0 / v;
        out[c] = (T)(-0.5 * p);
        out[d + c] = (T)(mu * p);
        acc += -0.5 * (mu * mu * p + log(v));
        double mx = stats[c] + mu * sc, vx = v * (sc * sc);
        means[s * d + c] = (T)mx;
        variances[s * d + c] = (T)vx;
        double a = mx > 0 ? mx : -mx;
        if (!(a <= big)) big = a;
        if (!(vx <= big)) big = vx;
    }
    part[idx] = acc;
    if (lane == 0) {     // a dropped slot: log-weight -inf (log 0), no posterior at all
        double logw = w > 0 ? log(w) : (live_c ? -1e30 : log(0.0));
        out[2 * d] = 0;
        out[2 * d + 1] = (T)(logw - 0.5 * (double)d * log2pi);
        weights[s] = (T)w;
        status[2 * KL + (merge ? K : 0) + s] = keep ? 1.0 : 0.0;
    }
    double flag = ok ? 0.0 : 1.0;
    status[idx] = reset ? flag : (status[idx] > flag ? status[idx] : flag);
    status[KL + idx] = live_c ? big : 0.0;
}
'''


@_dispatch(fit_finish_xp)
def fit_finish(mom, n, scale, stats, eps, tiny, log2pi, min_weight, min_count,
               coef, part, weights, means, variances, status, reset, select=None,
               merge=False):
    """The last M-step, count rule, sorting and data units of a fit, and the status
    the host reads once, or the count rule's merging round (see
    :func:`fit_finish_xp`): one kernel, a warp per component."""
    if not (_fit_ok(mom, coef, weights, means, variances) and scale.dtype.name == 'float64'
            and stats.dtype.name == 'float64'
            and all(a.dtype.name == 'float64' and a.flags.c_contiguous
                    for a in (part, status))
            and (select is None or (select.dtype.name == 'float64'
                                    and select.flags.c_contiguous))):
        return fit_finish_xp(mom, n, scale, stats, eps, tiny, log2pi, min_weight,
                             min_count, coef, part, weights, means, variances, status,
                             reset, select, merge)
    K, W = coef.shape
    _launch('fit_finish', mom.dtype, K * LANES,
            (mom, numpy.int64((W - 2) // 2), numpy.int32(K), numpy.float64(n), scale,
             stats, numpy.float64(eps), numpy.float64(tiny), numpy.float64(log2pi),
             numpy.float64(min_weight), numpy.float64(min_count), coef, part, weights,
             means, variances, status, numpy.int32(bool(reset)))
            + _select_args(select, scale) + (numpy.int32(bool(merge)),))
    return coef, part, weights, means, variances, status


SOURCES.update({'fit_frame_stats': _FIT_FRAME_STATS_SRC, 'fit_augment': _FIT_AUGMENT_SRC,
                'kpp_round': _KPP_ROUND_SRC, 'fit_coef': _FIT_COEF_SRC,
                'argmin_onehot': _ARGMIN_ONEHOT_SRC, 'fit_log_softmax': _FIT_LOG_SOFTMAX_SRC,
                'fit_finish': _FIT_FINISH_SRC})
# ======================================================= end of the device GMM fit
