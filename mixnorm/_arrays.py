"""Arrays on the host and on the device, without importing Chainer or CuPy eagerly.

``get_array_module`` picks NumPy or CuPy for an array; ``fetch`` and ``send`` move
several small arrays between device and host in one copy each (one synchronisation
for ``fetch``), which is how the fit and the normalizing transform hand their (K, d)
and (C, K) arithmetic to the host.
"""
import numpy


def is_cupy(a):
    return type(a).__module__.startswith('cupy')


def get_array_module(a):
    """``cupy`` for CuPy arrays, else ``numpy``."""
    if is_cupy(a):
        import cupy
        return cupy
    return numpy


def to_host(a):
    """A NumPy array of ``a``: one device-to-host copy for CuPy arrays."""
    return a.get() if not isinstance(a, numpy.ndarray) and hasattr(a, 'get') \
        else numpy.asarray(a)


def fetch(xp, arrays, dtype):
    """Small device arrays, each cast to ``dtype`` on the device, as float64 NumPy
    arrays, in one device-to-host copy."""
    flat = xp.concatenate([a.ravel().astype(dtype, copy=False) for a in arrays])
    flat = to_host(flat).astype(numpy.float64)
    out, i = [], 0
    for a in arrays:
        out.append(flat[i:i + a.size].reshape(a.shape))
        i += a.size
    return out


def send(xp, arrays, dtype):
    """Host arrays as device arrays of ``dtype`` (views of one buffer: one copy)."""
    if not arrays:
        return []
    flat = xp.asarray(numpy.concatenate([numpy.ravel(a) for a in arrays]).astype(dtype))
    out, i = [], 0
    for a in arrays:
        size = int(numpy.size(a))
        out.append(flat[i:i + size].reshape(numpy.shape(a)))
        i += size
    return out
