"""Arrays on the host and on the device, without importing Chainer or CuPy eagerly.

``get_array_module`` picks NumPy or CuPy for an array; ``fetch`` and ``send`` move
several small arrays between device and host in one copy each (one synchronisation
for ``fetch``), which is how the fit and the normalizing transform hand their (K, d)
and (C, K) arithmetic to the host.  Every module of mixnorm asks this module for the
array module, and the kernels of :mod:`mixnorm.kernels` dispatch through
:func:`stand_in_for`, so a stand-in device (``stand_in``: an object with
``owns(a)``, ``xp``, ``to_host(a)`` and ``kernel(twin, launches, args, kwargs)``,
such as :mod:`mixnorm.testing.opcount`'s counter) can take the GPU's code paths on
the CPU without patching anything.
"""
import numpy

#: The stand-in device in use, or None (see the module docstring).
stand_in = None


def stand_in_for(a):
    """The stand-in device that owns ``a``, or None."""
    return stand_in if stand_in is not None and stand_in.owns(a) else None


def is_cupy(a):
    return type(a).__module__.startswith('cupy')


def get_array_module(a):
    """``cupy`` for CuPy arrays (the stand-in's module for its arrays), else ``numpy``."""
    if stand_in is not None and stand_in.owns(a):
        return stand_in.xp
    if is_cupy(a):
        import cupy
        return cupy
    return numpy


def to_host(a):
    """A NumPy array of ``a``: one device-to-host copy for CuPy arrays."""
    if stand_in is not None and stand_in.owns(a):
        return stand_in.to_host(a)
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
