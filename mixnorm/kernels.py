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


_RUNNING_UPDATE_SRC = r'''
extern "C" __global__ void running_update(const T* w, const T* mu, const T* var,
                                          T* avg_mean, T* avg_var, int K, long long D,
                                          double decay, double adjust) {
    long long d = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
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
