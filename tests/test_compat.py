"""Chainer 7.8.1 works on the installed NumPy, whichever is imported first."""
import subprocess
import sys

import numpy as np
import pytest

import mixnorm._compat  # noqa: F401
import chainer
import chainer.functions as F
import chainer.links as L


def test_numpy_sctypes_restored():
    assert set(np.sctypes) >= {'int', 'uint', 'float', 'complex'}
    assert np.float32 in np.sctypes['float']


def test_chainer_trains_a_tiny_model():
    rng = np.random.RandomState(0)
    x = rng.randn(64, 4).astype(np.float32)
    t = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    model = chainer.Sequential(L.Linear(4, 16), L.BatchNormalization(16), F.relu,
                               L.Linear(16, 2))
    opt = chainer.optimizers.MomentumSGD(lr=0.1)
    opt.setup(model)
    losses = []
    for _ in range(30):
        loss = F.softmax_cross_entropy(model(x), t)
        model.cleargrads()
        loss.backward()
        opt.update()
        losses.append(float(loss.array))
    assert losses[-1] < 0.5 * losses[0]


def _run(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=120)


def test_import_chainer_before_mixnorm_in_a_fresh_interpreter():
    # The start-up hook (mixnorm_numpy_compat.pth) must patch NumPy before Chainer loads.
    r = _run('import chainer, chainer.functions; import mixnorm; '
             'print(chainer.__version__)')
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '7.8.1'


def test_startup_hook_is_lazy():
    # Python start-up must not import NumPy just because the hook is installed.
    r = _run('import sys; print("numpy" in sys.modules)')
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == 'False'


def test_hook_patches_only_when_chainer_is_imported():
    r = _run('import sys, mixnorm_numpy_hook as h; h.install(); '
             'import numpy; print("sctypes" in numpy.__dict__ or numpy.__version__ < "2"); '
             'import chainer; print("sctypes" in numpy.__dict__ or numpy.__version__ < "2")')
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[1] == 'True'


def _cupy_importable():
    try:
        import cupy  # noqa: F401
        from cupy.cuda import cublas  # noqa: F401  (its libraries load; no device needed)
        return True
    except Exception:
        return False


@pytest.mark.skipif(not _cupy_importable(), reason='needs CuPy and its CUDA libraries '
                                                   '(a GPU is not needed)')
def test_chainer_resolves_the_installed_cupy():
    """Chainer 7.8.1's CuPy imports resolve (CuPy 14 dropped cuDNN: Chainer then runs
    its own kernels, cudnn_enabled False); checked without a device."""
    from chainer.backends import cuda
    assert cuda.available, getattr(cuda, '_resolution_error', None)
    import cupy
    if int(cupy.__version__.split('.')[0]) >= 14:
        assert not cuda.cudnn_enabled
