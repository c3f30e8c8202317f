"""What a GPU run meets first, checked without one: no usable device is one ``error:``
line (not a CUDARuntimeError traceback), and the crop/flip gather index is built on the
array's device in int32 (not uploaded from the host as int64 every step)."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from experiments import config as C, data, pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BN2 = os.path.join(C.CONFIG_ROOT, 'table2', 'cifar10', 'BN-2.yaml')

pytestmark = pytest.mark.gpu_stack   # also in scripts/gpu_check.py's pytest step


def _cupy_without_device():
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
        return False                    # a device: the GPU tests cover it
    except ImportError:
        return False
    except Exception:
        return True


def test_no_usable_device_is_a_config_error(monkeypatch):
    """CuPy imports but its first CUDA call fails (no driver, no device)."""
    def no_driver():
        raise RuntimeError('cudaErrorInsufficientDriver: CUDA driver version is '
                           'insufficient for CUDA runtime version')
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=no_driver)))
    fake_device = types.SimpleNamespace(xp=fake_cupy, device=types.SimpleNamespace(id=0))
    monkeypatch.setitem(sys.modules, 'cupy', fake_cupy)
    monkeypatch.setattr(pipeline.chainer, 'get_device', lambda spec: fake_device)
    with pytest.raises(C.ConfigError) as e:
        pipeline.resolve_device('0')
    assert 'cannot use device' in str(e.value) and 'insufficient' in str(e.value)
    assert '--device cpu' in str(e.value)


def test_a_device_id_past_the_count_is_a_config_error(monkeypatch):
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)))
    monkeypatch.setitem(sys.modules, 'cupy', fake_cupy)
    monkeypatch.setattr(pipeline.chainer, 'get_device', lambda spec: types.SimpleNamespace(
        xp=fake_cupy, device=types.SimpleNamespace(id=3)))
    with pytest.raises(C.ConfigError, match='CuPy sees 1 CUDA device'):
        pipeline.resolve_device('3')


@pytest.mark.skipif(not _cupy_without_device(),
                    reason='needs CuPy without a usable CUDA device (the GPU rehearsal)')
def test_device_0_without_a_usable_device_is_one_error_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONWARNINGS',
                                                            'PYTHONDEVMODE')}
    r = subprocess.run([sys.executable, '-m', 'experiments.train', BN2, '--preset', 'smoke',
                        '--synthetic', '--device', '0', '--out', str(tmp_path / 'run')],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 1, r.stderr
    assert 'Traceback' not in r.stderr + r.stdout, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith('error: ')]
    assert len(errors) == 1 and "cannot use device '@cupy:0'" in errors[0], r.stderr


def _reference_crop_flip(x, oy, ox, flip, pad):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    h, w = x.shape[2:]
    out = np.empty_like(x)
    for b in range(len(x)):
        crop = xp[b, :, oy[b]:oy[b] + h, ox[b]:ox[b] + w]
        out[b] = crop[:, :, ::-1] if flip[b] else crop
    return out


def test_crop_flip_index_is_built_on_the_device_in_int32(monkeypatch):
    rng = np.random.RandomState(0)
    x = rng.standard_normal((5, 3, 6, 7)).astype(np.float32)
    oy, ox, flip = data.draw_crop_flip(rng, 5, 2)
    seen = {}
    real_take, real_asarray = np.take, np.asarray

    def take(a, idx, *args, **kw):
        seen['idx'] = idx
        return real_take(a, idx, *args, **kw)
    uploads = []

    def asarray(a, *args, **kw):           # xp.asarray: what goes to the device
        out = real_asarray(a, *args, **kw)
        if out.dtype.kind in 'iu':
            uploads.append(out.size)
        return out
    monkeypatch.setattr(np, 'take', take)
    got = data.apply_crop_flip(x, oy, ox, flip, 2)
    np.testing.assert_array_equal(got, _reference_crop_flip(x, oy, ox, flip, 2))
    assert seen['idx'].dtype == np.int32 and seen['idx'].shape == x.shape
    monkeypatch.setattr(np, 'asarray', asarray)
    data.apply_crop_flip(x, oy, ox, flip, 2)
    assert uploads and max(uploads) < x.size   # per-sample draws, never the index
