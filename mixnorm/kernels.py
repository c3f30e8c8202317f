"""CuPy kernels for the hot steps of the GMM fit, each with an xp-generic twin.

The twins are what the CPU tests run; ``tests/test_kernels.py`` checks every CuPy
kernel against its twin on the GPU (skipped without one).  CuPy is imported lazily.
Matrix products (distances, log-densities, moments) need no kernel of ours: they go
to cuBLAS through ``@``.
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


#: name -> CUDA source (with ``T`` the element type) of every RawKernel here.
SOURCES = {'log_softmax_columns': _LOG_SOFTMAX_SRC}


def kernel_source(name, dtype):
    """The complete CUDA source of kernel ``name`` for ``dtype`` (float32/float64)."""
    ctype = {'float32': 'float', 'float64': 'double'}[numpy.dtype(dtype).name]
    return 'typedef %s T;\n%s' % (ctype, SOURCES[name])


def _log_softmax_kernel(dtype):
    import cupy
    key = ('log_softmax_columns', numpy.dtype(dtype).name)
    if key not in _kernels:
        _kernels[key] = cupy.RawKernel(kernel_source(*key), 'log_softmax_columns')
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
    _log_softmax_kernel(logp.dtype)(((n + threads - 1) // threads,), (threads,),
                                    (logp, resp, lse, numpy.int64(n), numpy.int32(K)))
    return resp, lse
