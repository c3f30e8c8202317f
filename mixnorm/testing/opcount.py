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
kernel of :mod:`mixnorm.kernels` counts as the launches it costs on the GPU.
This is an estimate of a GPU's work made without one, not a measurement of time.

Nothing is patched: :func:`counting` installs the counter as mixnorm's stand-in
device (:data:`mixnorm._arrays.stand_in`), which every array-module lookup and kernel
dispatch of the package consults.  ``bench/bench_ops.py`` reports these counts and
``tests/test_device_paths.py`` checks them.
"""
import collections
import contextlib
import types

import numpy

from mixnorm import _arrays

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


class _CountingDevice:
    """The stand-in device handed to :mod:`mixnorm._arrays`: it owns the
    :class:`Dev` arrays, answers ``xp`` for them, counts the copies to the host and
    runs each kernel of :mod:`mixnorm.kernels` as its twin, counted as the launches
    the kernel costs on the GPU."""
    xp = XP

    @staticmethod
    def owns(a):
        return isinstance(a, Dev) or isinstance(getattr(a, 'array', None), Dev)

    @staticmethod
    def to_host(a):
        return a.get()

    @staticmethod
    def kernel(twin, launches, args, kwargs):
        counts['launch'] += launches
        return _dev(twin(*_base(args), **_base(kwargs)))


def to_device(a):
    """A host array as a counted device array (no count)."""
    return numpy.array(a).view(Dev)


@contextlib.contextmanager
def counting():
    """Make the counting stand-in mixnorm's device (:data:`mixnorm._arrays.stand_in`)."""
    saved, _arrays.stand_in = _arrays.stand_in, _CountingDevice()
    try:
        yield counts
    finally:
        _arrays.stand_in = saved


def tally(fn):
    """``dict(launch=, h2d=, d2h=)`` dispatched by ``fn()`` under :func:`counting`."""
    counts.clear()
    fn()
    return {k: counts.get(k, 0) for k in ('launch', 'h2d', 'd2h')}


def layer_on_device(link):
    """Move ``link``'s parameters and queue onto the stand-in device (in place)."""
    for name in ('queue_weights', 'queue_means', 'queue_vars'):
        if getattr(link, name) is not None:
            setattr(link, name, to_device(getattr(link, name)))
    for p in link.params():
        if p.array is not None:
            p.array = to_device(p.array)
    return link


def count_layer(shape, K, em_iters=2):
    """Device operations of one MN layer at ``shape`` with K components: the fit, the
    rest of a training forward, the backward and an inference forward (a dict)."""
    import chainer
    from mixnorm import gmm as _gmm
    from mixnorm.links import MixtureNormalization
    rng = numpy.random.default_rng(0)
    x = to_device(numpy.maximum(rng.standard_normal(shape), 0).astype(numpy.float32))
    gy = to_device(rng.standard_normal(shape).astype(numpy.float32))
    mn = layer_on_device(MixtureNormalization(shape[1], n_components=K, em_iters=em_iters,
                                              seed=0))
    out = {'shape': 'x'.join(map(str, shape)), 'K': K}
    with counting():
        warm = mn(chainer.Variable(x))          # one-time work (cached constants) aside
        warm.grad = gy
        warm.backward()
        if K > 1:
            pts = mn._points(x)
            fit = tally(lambda: _gmm.fit_gmm(
                pts, K, mn.kmeans_iters, mn.gmm_em_iters, min_weight=mn.min_weight,
                min_count=mn.min_count, eps=mn.eps, seed=0, return_responsibilities=True))
        else:
            fit = {'launch': 0, 'h2d': 0, 'd2h': 0}
        state = {}
        mn.cleargrads()                         # as a training loop does before each step

        def forward():
            state['y'] = mn(chainer.Variable(x))
        fwd = tally(forward)

        def backward():
            state['y'].grad = gy
            state['y'].backward()
        bwd = tally(backward)
        with chainer.using_config('train', False):
            test = tally(lambda: mn(chainer.Variable(x)))
    out.update(fit_launch=fit['launch'], fit_copies=fit['h2d'] + fit['d2h'],
               fit_syncs=fit['d2h'],
               fwd_launch=fwd['launch'] - fit['launch'],
               bwd_launch=bwd['launch'],
               train_launch=fwd['launch'] + bwd['launch'],
               train_copies=fwd['h2d'] + fwd['d2h'] + bwd['h2d'] + bwd['d2h'],
               train_syncs=fwd['d2h'] + bwd['d2h'],
               test_launch=test['launch'], test_copies=test['h2d'] + test['d2h'])
    return out
