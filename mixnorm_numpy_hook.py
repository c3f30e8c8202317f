"""Start-up hook: make ``import chainer`` work on NumPy 2 even before ``import mixnorm``.

Installed with the package as ``mixnorm_numpy_compat.pth`` in site-packages, which
runs :func:`install` at interpreter start-up.  :func:`install` only appends a
meta-path finder (no NumPy import, so start-up stays fast); the first time
anything asks for the top-level ``chainer`` module, the finder applies
:func:`patch_numpy` and steps aside so the normal import proceeds.
``mixnorm/_compat.py`` calls the same :func:`patch_numpy`.
"""
import sys


def patch_numpy():
    """Restore ``numpy.sctypes`` (removed in NumPy 2.0, read by Chainer 7.8.1); idempotent."""
    import numpy
    if 'sctypes' in numpy.__dict__:
        return
    numpy.sctypes = {
        'int': [numpy.int8, numpy.int16, numpy.int32, numpy.int64],
        'uint': [numpy.uint8, numpy.uint16, numpy.uint32, numpy.uint64],
        'float': [numpy.float16, numpy.float32, numpy.float64],
        'complex': [numpy.complex64, numpy.complex128],
        'others': [bool, object, bytes, str, numpy.void],
    }


class _ChainerImportHook:
    """Meta-path finder that patches NumPy right before Chainer is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == 'chainer':
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            patch_numpy()
        return None  # let the regular finders import the module


def install():
    if 'chainer' in sys.modules:
        return
    if not any(isinstance(f, _ChainerImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _ChainerImportHook())
