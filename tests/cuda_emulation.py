"""Run a thread-per-item CUDA kernel on the CPU, to test its logic without a GPU.

The kernel source is compiled as C++ with g++ behind a small shim (``__global__`` is
dropped, ``blockIdx``/``blockDim``/``threadIdx``/``gridDim`` are globals, ``exp``/``log``
... come from ``<cmath>``) and every (block, thread) of the launch grid is run in turn.
That is exactly the GPU's result for kernels whose threads write disjoint outputs and
never synchronise: no ``__syncthreads``, shared memory, atomics or warp shuffles (the
kernels of :mod:`mixnorm.kernels` are written that way).  It checks the arithmetic and
indexing of the source, not its speed or its memory access pattern.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy

SHIM = r'''
#include <cmath>
#include <cstdint>
struct mixnorm_dim3 { unsigned int x, y, z; };
static mixnorm_dim3 blockIdx, blockDim, threadIdx, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
using std::exp; using std::log; using std::sqrt; using std::fabs; using std::isnan;
using std::fmin; using std::fmax;
extern "C" void mixnorm_set_index(unsigned int gx, unsigned int bx, unsigned int b,
                                  unsigned int t) {
    gridDim.x = gx; gridDim.y = gridDim.z = 1;
    blockDim.x = bx; blockDim.y = blockDim.z = 1;
    blockIdx.x = b; blockIdx.y = blockIdx.z = 0;
    threadIdx.x = t; threadIdx.y = threadIdx.z = 0;
}
'''

_cache = {}


def available():
    return shutil.which('g++') is not None


def compile_source(source):
    """A ``ctypes.CDLL`` of the CUDA ``source`` compiled as C++ for the CPU."""
    key = hashlib.sha1(source.encode()).hexdigest()
    if key not in _cache:
        folder = tempfile.mkdtemp(prefix='mixnorm-emu-')
        try:
            cpp, lib = os.path.join(folder, 'k.cpp'), os.path.join(folder, 'k.so')
            with open(cpp, 'w') as f:
                f.write(SHIM + source)
            subprocess.run(['g++', '-O1', '-std=c++14', '-shared', '-fPIC', '-o', lib, cpp],
                           check=True, capture_output=True, text=True)
            _cache[key] = ctypes.CDLL(lib)
        finally:                    # the loaded library stays mapped; nothing stays in /tmp
            shutil.rmtree(folder, ignore_errors=True)
    return _cache[key]


def _arg(a):
    if isinstance(a, numpy.ndarray):      # the address of a[0, ...]; views keep strides
        return ctypes.c_void_p(a.ctypes.data)
    if isinstance(a, numpy.int64):
        return ctypes.c_longlong(int(a))
    if isinstance(a, numpy.int32):
        return ctypes.c_int(int(a))
    if isinstance(a, numpy.float64):
        return ctypes.c_double(float(a))
    if isinstance(a, numpy.float32):
        return ctypes.c_float(float(a))
    raise TypeError('pass kernel scalars as numpy.int32/int64/float32/float64, got %r'
                    % type(a))


def launch(source, name, grid, block, args):
    """Run kernel ``name`` of ``source`` over a 1-D ``grid`` x ``block`` launch, with
    the arguments typed as for ``cupy.RawKernel`` (arrays, NumPy scalars)."""
    lib = compile_source(source)
    kernel = getattr(lib, name)
    cargs = [_arg(a) for a in args]
    for b in range(grid):
        for t in range(block):
            lib.mixnorm_set_index(grid, block, b, t)
            kernel(*cargs)
