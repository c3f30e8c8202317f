"""CuPy kernels against their xp twins (GPU only), the twins on the CPU, and the
kernels' CUDA sources through NVRTC where CuPy is installed (no GPU needed)."""
import numpy as np
import pytest

from mixnorm import kernels


def test_log_softmax_columns_twin_on_cpu():
    rng = np.random.default_rng(0)
    logp = rng.normal(0, 30, size=(4, 1000))
    logp[2, :10] = -np.inf                      # an empty component
    resp, lse = kernels.log_softmax_columns(logp)
    ref = np.log(np.exp(logp - logp.max(0)).sum(0)) + logp.max(0)
    np.testing.assert_allclose(lse, ref, rtol=1e-12)
    np.testing.assert_allclose(resp, np.exp(logp - ref), rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(resp.sum(0), 1.0)
    assert (resp[2, :10] == 0).all()


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_log_softmax_columns_kernel_matches_twin(dtype):
    import cupy
    rng = np.random.default_rng(1)
    logp = cupy.asarray(rng.normal(0, 30, size=(5, 100003)).astype(dtype))
    r1, l1 = kernels.log_softmax_columns(logp)
    r2, l2 = kernels.log_softmax_columns_xp(logp)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    cupy.testing.assert_allclose(r1, r2, rtol=tol, atol=tol)
    cupy.testing.assert_allclose(l1, l2, rtol=tol)


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception:
        return None


@pytest.mark.skipif(_nvrtc() is None, reason='needs CuPy with NVRTC (a GPU is not needed)')
@pytest.mark.parametrize('name', sorted(kernels.SOURCES))
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_kernel_sources_compile(name, dtype):
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(kernels.kernel_source(name, dtype), name + '.cu', [], [])
    try:
        nvrtc.compileProgram(prog, ['-arch=compute_70'])
    except Exception as e:
        raise AssertionError(nvrtc.getProgramLog(prog)) from e
    assert b'.entry ' + name.encode() in nvrtc.getPTX(prog)
