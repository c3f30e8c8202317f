"""Count what MN code would dispatch to a GPU, by running it on the CPU.

On the GPU a MixtureNormalization layer is bound by launch overhead (each CuPy
operation costs a few microseconds of host time, whatever its size), so the number
of device operations is what the GPU speed targets depend on.  :func:`counting`
runs mixnorm's xp-generic code on NumPy with a counting stand-in for the array
module: arrays that would live on the device are a marked ``ndarray`` subclass,
and every operation on them is tallied as

* ``launch``: an elementwise/reduction/matmul/indexing operation or allocation
  that fills memory (one CuPy kernel launch, approximately: CuPy may use two
  kernels for a few, e.g. ``mean``), plus the copies CuPy makes of a matrix
  product's operands that are neither C- nor F-contiguous (and of an output that
  is not C-contiguous);
* ``h2d``: a host-to-device copy (``xp.asarray`` of a host array);
* ``d2h``: a device-to-host copy, which also synchronises the host with the device.

Views (basic slicing, ``reshape`` of contiguous data, ``.T``), allocations without
fill (``empty``) and host NumPy arithmetic on host arrays count nothing.  Each fused
kernel of :mod:`mixnorm.kernels` counts as one launch, as on the GPU.
This is an estimate of a GPU's work made without one, not a measurement of time.
"""
import collections
import contextlib
import types

import numpy

import mixnorm  # noqa: F401  (NumPy-2 shim before chainer)
from mixnorm import _arrays
from mixnorm import functions as _functions
from mixnorm import gmm as _gmm
from mixnorm import kernels as _kernels
from mixnorm import links as _links

counts = collections.Counter()

_FREE = {'empty', 'empty_like', 'dtype', 'finfo', 'iinfo', 'float16', 'float32', 'float64',
         'int32', 'int64', 'bool_', 'ndarray', 'errstate', 'moveaxis', 'transpose',
         'newaxis', 'pi', 'inf', 'nan', 'result_type', 'shape', 'ndim', 'size'}


def _base(o):
    if isinstance(o, Dev):
        return o.view(numpy.ndarray)
    if isinstance(o, (list, tuple)):
        return type(o)(_base(i) for i in o)
    if isinstance(o, dict):
        return {k: _base(v) for k, v in o.items()}
    return o


def _dev(r):
    if isinstance(r, numpy.generic):            # CuPy returns 0-d device arrays
        return numpy.asarray(r).view(Dev)
    if isinstance(r, numpy.ndarray) and not isinstance(r, Dev):
        return r.view(Dev)
    if isinstance(r, tuple):
        return tuple(_dev(i) for i in r)
    if isinstance(r, list):
        return [_dev(i) for i in r]
    return r


def _has_device(o):
    if isinstance(o, Dev):
        return True
    if isinstance(o, (list, tuple)):
        return any(_has_device(i) for i in o)
    return False


def _advanced(key):
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (numpy.ndarray, list)) for k in keys)


class Dev(numpy.ndarray):
    """An array that would live on the device."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is numpy.matmul and method == '__call__':
            out = kwargs.pop('out', (None,))[0]
            return _matmul(*inputs, out=out, **kwargs)
        counts['launch'] += 1
        if 'out' in kwargs:
            kwargs['out'] = tuple(_base(o) for o in kwargs['out'])
        return _dev(getattr(ufunc, method)(*_base(inputs), **_base(kwargs)))

    def __array_function__(self, func, types_, args, kwargs):
        counts['launch'] += 1
        return _dev(func(*_base(args), **_base(kwargs)))

    def __getitem__(self, key):
        if _advanced(_base(key)) or _has_device(key if isinstance(key, tuple) else (key,)):
            counts['launch'] += 1
        return _dev(numpy.ndarray.__getitem__(self.view(numpy.ndarray), _base(key)))

    def __setitem__(self, key, value):
        counts['launch'] += 1
        if isinstance(value, numpy.ndarray) and not isinstance(value, Dev) and value.size > 1:
            counts['h2d'] += 1
        numpy.ndarray.__setitem__(self.view(numpy.ndarray), _base(key), _base(value))

    def astype(self, dtype, *args, copy=True, **kwargs):
        if copy or numpy.dtype(dtype) != self.dtype:
            counts['launch'] += 1
        return _dev(self.view(numpy.ndarray).astype(dtype, *args, copy=copy, **kwargs))

    def reshape(self, *shape, **kwargs):
        out = self.view(numpy.ndarray).reshape(*shape, **kwargs)
        if not numpy.shares_memory(out, self.view(numpy.ndarray)):
            counts['launch'] += 1
        return _dev(out)

    def ravel(self, *args):
        if not self.flags.c_contiguous:
            counts['launch'] += 1
        return _dev(self.view(numpy.ndarray).ravel(*args))

    def get(self):
        counts['d2h'] += 1
        return numpy.array(self.view(numpy.ndarray))

    def _sync(self):
        counts['d2h'] += 1
        return self.view(numpy.ndarray)

    def __float__(self):
        return float(self._sync())

    def __int__(self):
        return int(self._sync())

    def __bool__(self):
        return bool(self._sync())

    def __index__(self):
        return int(self._sync())


def _method(name):
    def call(self, *args, **kwargs):
        counts['launch'] += 1
        return _dev(getattr(numpy.ndarray, name)(self.view(numpy.ndarray), *_base(args),
                                                   **_base(kwargs)))
    return call


for _name in ('sum', 'mean', 'max', 'min', 'argmin', 'argmax', 'all', 'any', 'cumsum',
              'copy', 'fill', 'argsort', 'nonzero', 'dot', 'var', 'std', 'prod'):
    setattr(Dev, _name, _method(_name))


class _XP(types.ModuleType):
    """The array-module stand-in handed to mixnorm in place of ``cupy``."""

    def __getattr__(self, name):
        attr = getattr(numpy, name)
        if name in _FREE or not callable(attr) or isinstance(attr, type):
            if callable(attr) and name in ('empty', 'empty_like', 'moveaxis', 'transpose'):
                return lambda *a, **k: _dev(attr(*_base(a), **_base(k)))
            return attr
        if name in ('asarray', 'array', 'ascontiguousarray'):
            return self._convert(name, attr)
        if name == 'matmul':
            return _matmul

        def call(*args, **kwargs):
            counts['launch'] += 1
            return _dev(attr(*_base(args), **_base(kwargs)))
        return call

    @staticmethod
    def _convert(name, attr):
        def call(a, *args, **kwargs):
            if isinstance(a, Dev):
                out = attr(a.view(numpy.ndarray), *args, **kwargs)
                if not numpy.shares_memory(out, a.view(numpy.ndarray)):
                    counts['launch'] += 1
            else:
                counts['h2d'] += 1
                out = numpy.array(attr(a, *args, **kwargs))
            return _dev(out)
        return call


def _contiguous(a):
    return a.flags.c_contiguous or a.flags.f_contiguous


def _matmul(a, b, out=None, **kwargs):
    """cuBLAS needs each 2-D operand C- or F-contiguous: CuPy copies the others
    first, and computes into a temporary then copies when ``out`` is not
    C-contiguous; each such copy is one more launch."""
    counts['launch'] += 1
    for op in (a, b):
        if isinstance(op, Dev) and op.ndim == 2 and not _contiguous(op):
            counts['launch'] += 1
    if out is not None and not out.flags.c_contiguous:
        counts['launch'] += 1
    return _dev(numpy.matmul(_base(a), _base(b), out=_base(out), **kwargs))


XP = _XP('countingxp')


def _get_array_module(*arrays):
    return XP if any(isinstance(a, Dev) or isinstance(getattr(a, 'array', None), Dev)
                     for a in arrays) else numpy


def _to_host(a):
    if isinstance(a, Dev):
        return a.get()
    return numpy.asarray(a)


def _log_softmax_columns(logp):
    counts['launch'] += 1
    resp, lse = _kernels.log_softmax_columns_xp(logp.view(numpy.ndarray))
    return resp.view(Dev), lse.view(Dev)


def _kpp_update(dist, pot, closest, labels, k):
    counts['launch'] += 1
    c, lab = _kernels.kpp_update_xp(*[a.view(numpy.ndarray) for a in
                                      (dist, pot, closest, labels)], k)
    return c.view(Dev), lab.view(Dev)


def _combine(out, u, A, rT, v=None, B=None, Cm=None, beta=None):
    counts['launch'] += 1
    base = [None if a is None else a.view(numpy.ndarray) for a in (out, u, A, rT, v, B, Cm,
                                                                     beta)]
    _kernels.combine_xp(*base)
    return out


def _augment(x, shift, inv, za):
    counts['launch'] += 2                   # the kernel and the row sum
    _kernels.augment_xp(x.view(numpy.ndarray), shift.view(numpy.ndarray), inv,
                        za.view(numpy.ndarray))
    return za


def _centre_coef(za, rows):
    counts['launch'] += 1
    return _kernels.centre_coef_xp(za.view(numpy.ndarray), rows.view(numpy.ndarray)).view(Dev)


def _sample_candidates(cum, u):
    counts['launch'] += 1
    return _kernels.sample_candidates_xp(cum.view(numpy.ndarray), u.view(numpy.ndarray)).view(Dev)


def _one_hot(labels, n_components, dtype):
    counts['launch'] += 1
    return _kernels.one_hot_xp(labels.view(numpy.ndarray), n_components, dtype).view(Dev)


def to_device(a):
    """A host array as a counted device array (no count)."""
    return numpy.array(a).view(Dev)


@contextlib.contextmanager
def counting():
    """Route mixnorm's array-module lookups to the counting stand-in."""
    backend_shim = types.SimpleNamespace(get_array_module=_get_array_module)
    patches = [(_gmm, 'get_array_module', _get_array_module), (_arrays, 'to_host', _to_host),
               (_functions, 'backend', backend_shim),
               (_links, 'backend', backend_shim),
               (_kernels, 'log_softmax_columns', _log_softmax_columns),
               (_kernels, 'kpp_update', _kpp_update), (_kernels, 'combine', _combine),
               (_kernels, 'augment', _augment), (_kernels, 'centre_coef', _centre_coef),
               (_kernels, 'sample_candidates', _sample_candidates),
               (_kernels, 'one_hot', _one_hot)]
    saved = [(mod, name, getattr(mod, name, None)) for mod, name, _ in patches]
    for mod, name, value in patches:
        setattr(mod, name, value)
    try:
        yield counts
    finally:
        for mod, name, value in saved:
            if value is None:
                delattr(mod, name)
            else:
                setattr(mod, name, value)


def tally(fn):
    """``dict(launch=, h2d=, d2h=)`` dispatched by ``fn()`` under :func:`counting`."""
    counts.clear()
    fn()
    return {k: counts.get(k, 0) for k in ('launch', 'h2d', 'd2h')}
