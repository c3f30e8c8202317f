"""Shared test helpers: the GPU marker skips cleanly without CuPy or a CUDA device."""
import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)

import pytest


def _gpu_available():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU_AVAILABLE = _gpu_available()


def pytest_collection_modifyitems(config, items):
    if GPU_AVAILABLE:
        return
    skip = pytest.mark.skip(reason='needs CuPy and a CUDA device')
    for item in items:
        if item.get_closest_marker('gpu') is not None:   # (not item.keywords: those
            #                          hold the folder names too, e.g. of a checkout "gpu")
            item.add_marker(skip)
