"""experiments/fid.py and experiments/models/fid_inception.py: the Fréchet distance, the
FID Inception-V3 in Chainer, its weights files (validation, clear errors, the PyTorch converter's name mapping), the real-image
statistics cache.  CPU, random-weights networks at 75 px: no download, no torch."""
import os
import sys

import numpy as np
import pytest

from experiments import fid
from experiments.models import fid_inception


# ------------------------------------------------------------------ Fréchet distance

def test_diagonal_gaussians_closed_form():
    rs = np.random.RandomState(0)
    d = 7
    mu1, mu2 = rs.randn(d), rs.randn(d)
    a, b = rs.uniform(0.2, 3, d), rs.uniform(0.2, 3, d)
    expected = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == \
        pytest.approx(expected, rel=1e-9, abs=1e-9)


def _sqrt_psd(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_matches_direct_computation_on_random_matrices():
    rs = np.random.RandomState(1)
    for d in (3, 10, 25):
        a, b = rs.randn(d, d), rs.randn(d, d)
        s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rs.randn(d), rs.randn(d)
        r = _sqrt_psd(s1)
        # Tr sqrtm(S1 S2) = Tr sqrtm(S1^1/2 S2 S1^1/2) (similar matrices)
        direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) \
            - 2 * np.trace(_sqrt_psd(r @ s2 @ r))
        assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-8)


def test_identical_statistics_give_zero():
    rs = np.random.RandomState(2)
    feats = np.abs(rs.randn(300, 32)) @ rs.randn(32, 32)
    mu, sigma = fid.statistics(feats)
    assert mu.dtype == np.float64 and sigma.shape == (32, 32)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_sqrtm_fallback_adds_eps_when_not_finite(monkeypatch):
    rs = np.random.RandomState(3)
    a, b = rs.randn(8, 8), rs.randn(8, 8)
    s1, s2 = a @ a.T + np.eye(8), b @ b.T + np.eye(8)
    mu1, mu2 = rs.randn(8), rs.randn(8)
    exact = fid.frechet_distance(mu1, s1, mu2, s2)
    real_sqrtm, calls = fid._sqrtm, []

    def flaky(m):
        calls.append(m.copy())
        return np.full_like(m, np.nan) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(fid, '_sqrtm', flaky)
    with pytest.warns(RuntimeWarning, match='not finite'):
        value = fid.frechet_distance(mu1, s1, mu2, s2, eps=1e-6)
    assert len(calls) == 2
    off = np.eye(8) * 1e-6
    np.testing.assert_allclose(calls[1], (s1 + off) @ (s2 + off))
    assert value == pytest.approx(exact, rel=1e-5)
    monkeypatch.setattr(fid, '_sqrtm', lambda m: np.full_like(m, np.inf))
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match='not finite'):
        fid.frechet_distance(mu1, s1, mu2, s2)


def test_imaginary_part_dropped_when_small_rejected_when_large(monkeypatch):
    s = np.eye(4)
    mu = np.zeros(4)
    monkeypatch.setattr(fid, '_sqrtm', lambda m: m.astype(complex) + 1e-9j)
    assert fid.frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-9)
    monkeypatch.setattr(fid, '_sqrtm', lambda m: m.astype(complex) + 0.5j * np.eye(4))
    with pytest.raises(ValueError, match='imaginary component'):
        fid.frechet_distance(mu, s, mu, s)


def test_statistics_and_shape_errors():
    with pytest.raises(ValueError, match='N >= 2'):
        fid.statistics(np.zeros((1, 5)))
    with pytest.raises(ValueError, match='mismatched'):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ------------------------------------------------------------------------- resizing

def _torch_bilinear_1d(x, out_size):
    """PyTorch's align_corners=False source-index rule, one output at a time."""
    n = len(x)
    y = []
    for o in range(out_size):
        src = max((o + 0.5) * n / out_size - 0.5, 0.0)
        i0 = int(src)
        i1 = i0 + 1 if i0 < n - 1 else i0
        lam = src - i0
        y.append((1 - lam) * x[i0] + lam * x[i1])
    return np.array(y)


@pytest.mark.parametrize('n_in,n_out', [(32, 299), (32, 75), (5, 3), (4, 4), (2, 4)])
def test_resize_matrix_is_pytorch_bilinear(n_in, n_out):
    m = fid.resize_matrix(n_in, n_out)
    x = np.random.RandomState(n_in).randn(n_in)
    np.testing.assert_allclose(m @ x, _torch_bilinear_1d(x, n_out), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.sum(axis=1), 1, atol=1e-6)
    if n_in == 2:   # torch.nn.functional.interpolate([a, b], 4): a, .75a+.25b, .25a+.75b, b
        np.testing.assert_allclose(m, [[1, 0], [.75, .25], [.25, .75], [0, 1]])


def test_resize_bilinear_is_separable():
    x = np.random.RandomState(0).rand(2, 3, 32, 32).astype(np.float32)
    y = fid.resize_bilinear(x, 75)
    m = fid.resize_matrix(32, 75)
    np.testing.assert_allclose(y, np.einsum('oh,bchw,pw->bcop', m, x, m), rtol=1e-5,
                               atol=1e-6)
    assert fid.resize_bilinear(x, 32) is x


# -------------------------------------------------------------------------- network

IMAGES = np.random.RandomState(2018).randint(0, 256, (2, 3, 32, 32)).astype(np.uint8)


@pytest.fixture(scope='module')
def random_extractor():
    return fid.load_extractor(random_weights=True, image_size=75)


def test_random_weights_extractor_gives_2048_features(random_extractor):
    ex = random_extractor
    feats = ex(IMAGES)
    assert feats.shape == (2, 2048) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.std() > 0
    assert ex.random_weights and not ex.standard
    assert 'RANDOM-WEIGHTS' in ex.label and 'NOT an FID' in ex.label
    assert ex.describe()['weights_id'] == 'random-seed0'
    small = fid.load_extractor(random_weights=True, image_size=75, dims=64)(IMAGES)
    assert small.shape == (2, 64)
    with pytest.raises(ValueError, match='image_size'):
        fid.load_extractor(random_weights=True, image_size=64)
    with pytest.raises(ValueError, match='dims'):
        fid.load_extractor(random_weights=True, dims=100)
    with pytest.raises(ValueError, match='uint8'):
        ex(IMAGES.astype(np.float32))


# Reference: pytorch-fid's FID Inception (torchvision Inception3 + FIDInceptionA/C/E_1/E_2)
# in PyTorch 2.13 with the weights of fid.randomize(net, 0) (converted by
# fid.chainer_to_torch), input F.interpolate(x / 255, (75, 75), bilinear,
# align_corners=False) * 2 - 1, adaptive average pool; the two IMAGES above.
TORCH_INDEX = [0, 194, 392, 624, 848, 1063, 1714, 2044]
TORCH_VALUES = [[0.0961460993, 0.2799440622, 0.1282678396, 0.0618326776,
                 0.1964459121, 0.0959629938, 0.081382893, 0.3090577722],
                [0.0923475549, 0.2837703526, 0.1185593903, 0.0526633449,
                 0.1951676607, 0.0902797058, 0.0765898302, 0.2890854478]]
TORCH_SUM = [114.6060318504, 112.0351714757]
TORCH_SUMSQ = [27.1671767634, 26.0793357642]


def test_network_matches_pytorch_fid_reference(random_extractor):
    f = random_extractor(IMAGES).astype(np.float64)
    np.testing.assert_allclose(f[:, TORCH_INDEX], TORCH_VALUES, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(f.sum(axis=1), TORCH_SUM, rtol=1e-5)
    np.testing.assert_allclose((f ** 2).sum(axis=1), TORCH_SUMSQ, rtol=1e-5)


def test_layout_is_the_fid_inception():
    exp = fid.expected_arrays()
    assert len(exp) == 470 and sum(int(np.prod(s)) for s in exp.values()) == 21820000
    assert exp['Conv2d_1a_3x3/conv/W'] == (32, 3, 3, 3)
    assert exp['Mixed_7c/branch_pool/conv/W'] == (192, 2048, 1, 1)
    assert exp['Mixed_6e/branch7x7dbl_5/conv/W'] == (192, 192, 1, 7)
    assert exp['Mixed_5b/branch_pool/bn/avg_var'] == (32,)


# ------------------------------------------------------------- weights and converter

def _network_arrays(seed=0):
    net = fid_inception.FIDInceptionV3(3)
    fid.randomize(net, seed)
    out = {p.lstrip('/'): v.array for p, v in net.namedparams()}
    for p, link in net.namedlinks():
        if p.endswith('/bn'):
            out[p.lstrip('/') + '/avg_mean'] = link.avg_mean
            out[p.lstrip('/') + '/avg_var'] = link.avg_var
    return out


def test_torch_name_mapping():
    sd = {
        'Conv2d_1a_3x3.conv.weight': np.ones((32, 3, 3, 3)),
        'Conv2d_1a_3x3.bn.weight': np.ones(32),
        'Conv2d_1a_3x3.bn.bias': np.zeros(32),
        'Conv2d_1a_3x3.bn.running_mean': np.zeros(32),
        'Conv2d_1a_3x3.bn.running_var': np.ones(32),
        'Conv2d_1a_3x3.bn.num_batches_tracked': np.array(0),
        'Mixed_7b.branch3x3dbl_3a.conv.weight': np.ones((384, 384, 1, 3)),
        'fc.weight': np.ones((1008, 2048)), 'fc.bias': np.ones(1008),
    }
    arrays, dropped = fid.torch_to_chainer(sd)
    assert sorted(arrays) == ['Conv2d_1a_3x3/bn/avg_mean', 'Conv2d_1a_3x3/bn/avg_var',
                              'Conv2d_1a_3x3/bn/beta', 'Conv2d_1a_3x3/bn/gamma',
                              'Conv2d_1a_3x3/conv/W', 'Mixed_7b/branch3x3dbl_3a/conv/W']
    assert dropped == ['Conv2d_1a_3x3.bn.num_batches_tracked', 'fc.bias', 'fc.weight']
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert set(fid.chainer_to_torch(arrays)) == set(sd) - set(dropped)
    with pytest.raises(fid.FIDWeightsError, match='unknown entries'):
        fid.torch_to_chainer({'features.0.weight': np.ones(3)})


def test_full_name_mapping_round_trips():
    arrays = _network_arrays()
    torch_sd = fid.chainer_to_torch(arrays)
    assert 'Mixed_6b.branch7x7_2.conv.weight' in torch_sd
    assert 'Mixed_5d.branch_pool.bn.running_var' in torch_sd
    back, dropped = fid.torch_to_chainer(torch_sd)
    assert dropped == [] and set(back) == set(arrays) == set(fid.expected_arrays())
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])


@pytest.fixture(scope='module')
def converted_npz(tmp_path_factory):
    """scripts/convert_fid_weights.convert on a full state dict in PyTorch naming (the
    .pth reading alone needs torch), plus the fc / num_batches_tracked entries."""
    from scripts import convert_fid_weights
    folder = tmp_path_factory.mktemp('fidw')
    sd = fid.chainer_to_torch(_network_arrays())
    sd.update({k.replace('conv.weight', 'bn.num_batches_tracked'): np.array(7)
               for k in list(sd) if k.endswith('conv.weight')})
    sd['fc.weight'], sd['fc.bias'] = np.zeros((1008, 2048), np.float32), np.zeros(1008)
    src = folder / 'fake_inception.pth'
    src.write_bytes(b'not the real weights')
    lines = []
    out = convert_fid_weights.convert(str(src), str(folder / 'fid.npz'), state_dict=sd,
                                      log=lines.append)
    return out, lines


def test_converter_writes_loadable_npz(converted_npz, random_extractor):
    path, lines = converted_npz
    assert any('NOT comparable' in line for line in lines)     # not the standard file
    assert any('dropped 96 entries' in line for line in lines)
    ex = fid.load_extractor(path, image_size=75)
    assert not ex.random_weights and not ex.standard
    assert 'NOT the standard FID file' in ex.label and ex.weights_id.startswith('w')
    assert ex.weights_meta['source_name'] == 'fake_inception.pth'
    np.testing.assert_allclose(ex(IMAGES), random_extractor(IMAGES), rtol=1e-6, atol=1e-7)


def test_converter_asks_for_torch(monkeypatch):
    from scripts import convert_fid_weights
    monkeypatch.setitem(sys.modules, 'torch', None)       # import torch -> ImportError
    with pytest.raises(SystemExit, match='pip install torch'):
        convert_fid_weights.read_state_dict('whatever.pth')


def test_missing_weights_file_says_what_to_get(tmp_path):
    path = str(tmp_path / 'nowhere' / 'fid.npz')
    with pytest.raises(fid.FIDWeightsMissing) as e:
        fid.load_extractor(path)
    msg = str(e.value)
    for part in (path, fid.STANDARD_WEIGHTS_URL, 'pip install torch',
                 'scripts/convert_fid_weights.py', '--inception-weights', '--no-fid'):
        assert part in msg
    assert isinstance(e.value, FileNotFoundError)


def test_bad_weights_files_are_rejected(converted_npz, tmp_path):
    path, _ = converted_npz
    data = open(path, 'rb').read()
    truncated = tmp_path / 'truncated.npz'
    truncated.write_bytes(data[:len(data) // 2])
    garbage = tmp_path / 'garbage.npz'
    garbage.write_bytes(b'\x00' * 1000)
    for bad in (truncated, garbage):
        with pytest.raises(fid.FIDWeightsError, match='cannot read the FID weights npz'):
            fid.load_extractor(str(bad), image_size=75)
    other = tmp_path / 'other.npz'
    np.savez(other, W=np.zeros(3))
    with pytest.raises(fid.FIDWeightsError, match='470 missing arrays.*unexpected'):
        fid.load_extractor(str(other), image_size=75)


def test_validate_arrays_names_the_problem():
    good = {k: np.ones(s, np.float32) for k, s in fid.expected_arrays().items()}
    fid.validate_arrays(good)
    cases = [
        ({k: v for k, v in good.items() if not k.startswith('Mixed_7c/')}, 'missing arrays'),
        (dict(good, **{'Mixed_5b/branch1x1/conv/W': np.ones((64, 192, 3, 3), np.float32)}),
         r'Mixed_5b/branch1x1/conv/W has shape \(64, 192, 3, 3\), expected \(64, 192, 1, 1\)'),
        (dict(good, **{'fc/W': np.ones((1008, 2048), np.float32)}), 'unexpected arrays'),
        (dict(good, **{'Conv2d_1a_3x3/bn/gamma': np.full(32, np.nan, np.float32)}),
         'non-finite'),
        (dict(good, **{'Conv2d_1a_3x3/bn/avg_var': np.zeros(32, np.float32)}),
         'non-positive variances'),
    ]
    for arrays, match in cases:
        with pytest.raises(fid.FIDWeightsError, match=match):
            fid.validate_arrays(arrays, where='x.npz')


# ------------------------------------------------------------------ statistics cache

def test_real_statistics_are_cached_by_weights_and_images(tmp_path):
    ex = fid.load_extractor(random_weights=True, image_size=75, dims=64)
    images = np.random.RandomState(5).randint(0, 256, (40, 3, 32, 32)).astype(np.uint8)
    mu, sigma, info = fid.real_statistics(ex, images, cache_dir=str(tmp_path), log=None)
    assert not info['from_cache'] and os.path.isfile(info['path'])
    assert 'random-seed0' in os.path.basename(info['path'])
    mu2, sigma2, info2 = fid.real_statistics(ex, images, cache_dir=str(tmp_path), log=None)
    assert info2['from_cache'] and info2['path'] == info['path']
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    _, _, info3 = fid.real_statistics(ex, images[:39], cache_dir=str(tmp_path), log=None)
    assert not info3['from_cache'] and info3['path'] != info['path']
    open(info['path'], 'wb').write(b'broken')
    with pytest.warns(UserWarning, match='unreadable'):
        mu4, _, info4 = fid.real_statistics(ex, images, cache_dir=str(tmp_path), log=None)
    assert not info4['from_cache']
    np.testing.assert_allclose(mu4, mu)
    assert fid.fid_of_images(ex, images, mu, sigma) == pytest.approx(0, abs=1e-6)
