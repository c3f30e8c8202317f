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
import numpy

_kernels = {}


def _is_cupy(a):
    return type(a).__module__.startswith('cupy')


def log_softmax_columns_xp(logp):
    """Twin of the fused kernel: ``(exp(logp - lse), lse)`` with ``lse`` (n,) the
    log-sum-exp of each column of ``logp`` (K, n), i.e. posteriors and per-point
    log-likelihoods of a mixture.  Columns that are all ``-inf`` cannot occur in a fit
    (the heaviest component always has positive weight)."""
    xp = numpy if not _is_cupy(logp) else __import__('cupy')
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
    nearest seed so far take label ``k`` and that distance.  ``dist`` (trials, n),
    ``pot`` (trials,), ``closest`` (n,), ``labels`` (n,) int64; returns the new
    ``(closest, labels)``."""
    xp = numpy if not _is_cupy(dist) else __import__('cupy')
    d = dist[xp.argmin(pot)]
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
    if (d < closest[i]) { closest[i] = d; labels[i] = k; }
}
'''


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


#: name -> CUDA source (with ``T`` the element type) of every RawKernel here.
SOURCES = {'log_softmax_columns': _LOG_SOFTMAX_SRC, 'kpp_update': _KPP_UPDATE_SRC}


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
