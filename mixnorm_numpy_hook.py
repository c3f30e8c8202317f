"""Start-up hook: make ``import chainer`` work on NumPy 2 and Python 3.12+ even before
``import mixnorm``.

Installed with the package as ``mixnorm_numpy_compat.pth`` in site-packages, which
runs :func:`install` at interpreter start-up.  :func:`install` only appends a
meta-path finder (no NumPy import, so start-up stays fast); the first time
anything asks for the top-level ``chainer`` module, the finder applies
:func:`prepare_chainer` and steps aside so the normal import proceeds.
``mixnorm/_compat.py`` calls the same :func:`prepare_chainer`.
"""
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings

STUB_ORIGIN = 'stub from mixnorm_numpy_hook'


def prepare_chainer():
    """Everything Chainer 7.8.1 needs before its first import; idempotent.

    :func:`patch_numpy`, :func:`stub_numpy_distutils`,
    :func:`quiet_cudnn_warning_without_cudnn` and :func:`quiet_nccl_warning`.
    """
    patch_numpy()
    stub_numpy_distutils()
    quiet_cudnn_warning_without_cudnn()
    quiet_nccl_warning()


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


def _numpy_distutils_missing():
    try:
        return importlib.util.find_spec('numpy.distutils') is None
    except ImportError:
        return True


def _no_build_info(name, notfound_action=0):
    """``get_info`` of the stub: no library information, as NumPy's own returns ``{}``
    for a library it does not find (Chainer then skips its macOS Accelerate warning)."""
    return {}


def _stub_module(name, doc, is_package=False):
    module = types.ModuleType(name, doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=STUB_ORIGIN,
                                                     is_package=is_package)

    def __getattr__(attr):
        if attr.startswith('__'):
            raise AttributeError(attr)
        raise AttributeError(
            '{} has no {!r}: it is the stub that mixnorm_numpy_hook installs for Chainer '
            '7.8.1 (only system_info.get_info), as this NumPy ships no numpy.distutils; '
            'code that needs the real one must run on Python < 3.12'.format(name, attr))

    module.__getattr__ = __getattr__
    return module


def stub_numpy_distutils():
    """Install ``numpy.distutils.system_info`` with only ``get_info`` (returning ``{}``)
    when NumPy has no ``numpy.distutils``; idempotent, and a no-op where it exists.

    Chainer 7.8.1 imports it on every ``import chainer`` but calls it only on macOS,
    to warn about the Accelerate BLAS.  Returns the stub package, or ``None`` when the
    real module is present.
    """
    import numpy
    existing = sys.modules.get('numpy.distutils')
    if existing is not None:
        return existing if getattr(existing.__spec__, 'origin', None) == STUB_ORIGIN \
            else None
    if not _numpy_distutils_missing():
        return None
    doc = 'Stand-in for numpy.distutils (absent on Python >= 3.12) for Chainer 7.8.1.'
    package = _stub_module('numpy.distutils', doc, is_package=True)
    package.__path__ = []
    system_info = _stub_module('numpy.distutils.system_info', doc)
    system_info.get_info = _no_build_info
    package.system_info = system_info
    sys.modules['numpy.distutils'] = package
    sys.modules['numpy.distutils.system_info'] = system_info
    numpy.distutils = package
    return package


CUDNN_WARNING = r'cuDNN is not enabled\.\nPlease reinstall CuPy after you install cudnn'


def _cupy_has_no_cudnn_module():
    """True when CuPy is installed without ``cupy.cuda.cudnn`` (CuPy 14 dropped it);
    looks at CuPy's files only, without importing it."""
    import glob
    try:
        spec = importlib.util.find_spec('cupy')
    except (ImportError, ValueError):
        return False
    locations = list(spec.submodule_search_locations or []) if spec else []
    return bool(locations) and not any(
        glob.glob(os.path.join(location, 'cuda', 'cudnn*')) for location in locations)


def quiet_cudnn_warning_without_cudnn():
    """Ignore Chainer's "cuDNN is not enabled" warning when CuPy has no cuDNN module;
    idempotent.  Where CuPy has one (CuPy <= 13) the warning stays on."""
    if _cupy_has_no_cudnn_module():
        # Noise: every `import chainer` says it, and "reinstall CuPy" cannot bring cuDNN back.
        warnings.filterwarnings('ignore', message=CUDNN_WARNING, category=UserWarning,
                                module=r'chainer\.backends\.cuda')


NCCL_WARNING = r'\nnccl library could not be loaded\.'


def quiet_nccl_warning():
    """Ignore CuPy's multi-line "nccl library could not be loaded" warning; idempotent.

    CuPy says it whenever ``cupy.cuda.nccl`` is imported without NCCL, and Chainer
    imports that module with ``chainer.training`` (for a multi-GPU updater this kit does
    not use), so every CPU run and every single-GPU run on such a machine said it.  The
    one path that needs NCCL, a ``pure_nccl`` communicator, reports its absence as an
    ``error:`` line (``experiments/parallel.py``).
    """
    warnings.filterwarnings('ignore', message=NCCL_WARNING, category=UserWarning,
                            module=r'cupy\._environment')


class _ChainerImportHook:
    """Meta-path finder that runs :func:`prepare_chainer` right before Chainer is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == 'chainer':
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            prepare_chainer()
        return None  # let the regular finders import the module


def install():
    """Add the finder (once; not at all if Chainer is already imported)."""
    if 'chainer' in sys.modules:
        return
    if not any(isinstance(f, _ChainerImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _ChainerImportHook())
