"""Chainer 7.8.1 works on the installed NumPy and Python, whichever is imported first."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mixnorm._compat  # noqa: F401
import chainer
import chainer.functions as F
import chainer.links as L

pytestmark = pytest.mark.gpu_stack   # also in scripts/gpu_check.py's pytest step


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
    # the caller's environment less what changes the warning filters (PYTHONWARNINGS=
    # ignore would hide the warnings that some of these tests count)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONWARNINGS', 'PYTHONDEVMODE')}
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, env=env)


def _numpy_ships_distutils():
    """Looked up on disk, not through the shim: NumPy has no numpy/distutils/ for
    Python >= 3.12."""
    return os.path.isdir(os.path.join(os.path.dirname(np.__file__), 'distutils'))


def test_numpy_distutils_is_stubbed_exactly_where_numpy_lacks_it():
    import mixnorm_numpy_hook
    module = sys.modules['numpy.distutils']  # chainer has imported it, real or stub
    is_stub = module.__spec__.origin == mixnorm_numpy_hook.STUB_ORIGIN
    assert is_stub == (not _numpy_ships_distutils())
    if sys.version_info >= (3, 12):
        assert is_stub
    else:
        assert os.path.dirname(module.__file__) == os.path.join(
            os.path.dirname(np.__file__), 'distutils')


# Makes numpy.distutils unfindable, as on Python >= 3.12, on any interpreter.
_HIDE_NUMPY_DISTUTILS = """
import sys
class HideNumpyDistutils:
    def find_spec(self, name, path=None, target=None):
        if name == 'numpy.distutils' or name.startswith('numpy.distutils.'):
            raise ModuleNotFoundError('No module named ' + repr(name), name=name)
sys.meta_path.insert(0, HideNumpyDistutils())
"""


def test_stub_where_numpy_distutils_is_missing_is_idempotent_and_serves_chainer():
    r = _run(_HIDE_NUMPY_DISTUTILS + textwrap.dedent("""
        import mixnorm_numpy_hook as h
        h.prepare_chainer()
        stub = sys.modules['numpy.distutils']
        info = sys.modules['numpy.distutils.system_info']
        h.prepare_chainer()
        assert h.stub_numpy_distutils() is stub
        assert sys.modules['numpy.distutils'] is stub
        assert sys.modules['numpy.distutils.system_info'] is info
        import numpy
        assert numpy.distutils is stub and stub.system_info is info
        assert stub.__spec__.origin == h.STUB_ORIGIN
        assert info.get_info('blas_opt') == {}
        try:
            info.cpu
        except AttributeError as e:
            assert 'stub' in str(e) and "'cpu'" in str(e), e
        else:
            raise AssertionError('the stub invented an attribute')
        import chainer, chainer.links
        import mixnorm
        assert sys.modules['numpy.distutils'] is stub
        print(chainer.__version__)
    """))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['7.8.1']


def test_no_stub_where_numpy_distutils_exists(tmp_path):
    # A findable numpy.distutils (NumPy's own before Python 3.12, a stand-in after) is
    # left alone and not imported early; Chainer then imports that one.
    fake = tmp_path / 'distutils'
    (fake).mkdir()
    (fake / '__init__.py').write_text('')
    (fake / 'system_info.py').write_text('def get_info(name, notfound_action=0):\n'
                                         '    return {}\n')
    r = _run("""
        import sys, numpy
        numpy.__path__.append({!r})
        import mixnorm_numpy_hook as h
        assert h.stub_numpy_distutils() is None
        h.prepare_chainer()
        assert 'numpy.distutils' not in sys.modules
        import chainer
        print(sys.modules['numpy.distutils'].__spec__.origin != h.STUB_ORIGIN)
    """.format(str(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['True']


def test_start_up_hook_is_installed_once():
    r = _run("""
        import sys, mixnorm_numpy_hook as h
        h.install(); h.install()
        print(sum(isinstance(f, h._ChainerImportHook) for f in sys.meta_path))
        import chainer
        print(sum(isinstance(f, h._ChainerImportHook) for f in sys.meta_path))
        h.install()
        print(sum(isinstance(f, h._ChainerImportHook) for f in sys.meta_path))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['1', '0', '0']


def _startup_hook_installed():
    import site
    dirs = site.getsitepackages() + [site.getusersitepackages()]
    return any(os.path.exists(os.path.join(d, 'mixnorm_numpy_compat.pth')) for d in dirs)


@pytest.mark.skipif(not _startup_hook_installed(),
                    reason='the start-up hook is not installed here (e.g. a --target '
                           'install used through PYTHONPATH, as on the GPU machine)')
def test_import_chainer_before_mixnorm_in_a_fresh_interpreter():
    # The start-up hook (mixnorm_numpy_compat.pth) must patch NumPy before Chainer loads
    # (and, on Python >= 3.12, stub numpy.distutils).
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


def _fake_cupy(root, with_cudnn):
    """A CuPy-shaped package on disk: CuPy <= 13 has cupy/cuda/cudnn.py, CuPy 14 not."""
    cuda_dir = root / 'cupy' / 'cuda'
    cuda_dir.mkdir(parents=True)
    (root / 'cupy' / '__init__.py').write_text('')
    (cuda_dir / '__init__.py').write_text('')
    if with_cudnn:
        (cuda_dir / 'cudnn.py').write_text('')
    return root


@pytest.mark.parametrize('with_cudnn, shown', [(False, 0), (True, 1)])
def test_cudnn_warning_is_quiet_only_where_cupy_has_no_cudnn(tmp_path, with_cudnn, shown):
    # Chainer's own warning, from its own check, as CuPy 14 triggers it at import time.
    root = _fake_cupy(tmp_path, with_cudnn)
    r = _run("""
        import sys, warnings
        sys.path.insert(0, {!r})
        import mixnorm_numpy_hook as h
        h.prepare_chainer(); h.prepare_chainer()
        from chainer.backends import cuda
        cuda.available, cuda.cudnn_enabled, cuda._cudnn_disabled_by_user = True, False, False
        with warnings.catch_warnings(record=True) as caught:
            cuda.check_cuda_available()
        print(sum('cuDNN is not enabled' in str(w.message) for w in caught))
        print(sum(f[1] is not None and f[1].pattern == h.CUDNN_WARNING
                  for f in warnings.filters))
    """.format(str(root)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(shown), str(1 - shown)]


def test_cupy_nccl_warning_is_quiet_and_other_warnings_are_not():
    # CuPy's own call, as `import cupy.cuda.nccl` makes it without NCCL (Chainer imports
    # that module with chainer.training); a warning of another text from the same module
    # still shows
    r = _run("""
        import sys, types, warnings
        import mixnorm_numpy_hook as h
        h.prepare_chainer(); h.prepare_chainer()
        env = types.ModuleType('cupy._environment')
        exec(compile(
            "import warnings\\n"
            "def warn(text):\\n"
            "    warnings.warn(text)\\n", 'cupy/_environment.py', 'exec'), env.__dict__)
        env.__name__ = 'cupy._environment'
        env.warn.__globals__['__name__'] = 'cupy._environment'
        with warnings.catch_warnings(record=True) as caught:
            env.warn('\\nnccl library could not be loaded.\\n\\nReason: ImportError '
                     '(libnccl.so.2: cannot open shared object file)\\n')
            env.warn('\\ncutensor library could not be loaded.\\n')
        print(len(caught), 'cutensor' in str(caught[0].message) if caught else None)
        print(sum(f[1] is not None and f[1].pattern == h.NCCL_WARNING
                  for f in warnings.filters))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['1', 'True', '1']
