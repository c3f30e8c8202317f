"""experiments/data: CIFAR and Fashion-MNIST readers on tiny files in the real formats
(Python 2 pickled batches, archives, npz caches, IDX files gzipped or not), published
checksums, tampered pickles, normalisation, missing/corrupt data, the synthetic set,
augmentation and resumable epoch orders.

Never touches the network: the ``no_network`` fixture fails any download attempt.
"""
import gzip
import hashlib
import io
import os
import pathlib
import pickle
import struct
import subprocess
import sys
import tarfile
import urllib.request

import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)

import chainer  # noqa: E402
import chainer.dataset.download  # noqa: E402
import numpy  # noqa: E402
import pytest  # noqa: E402

from experiments import data  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PER_BATCH, N_TEST = 4, 6  # tiny CIFAR-10: 5 x 4 train images, 6 test images


# --------------------------------------------------------------------------- fixtures

@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any download attempt (Chainer's or urllib's)."""
    def refuse(*args, **kwargs):
        pytest.fail('attempted a download: %r %r' % (args, kwargs))
    monkeypatch.setattr(chainer.dataset.download, 'cached_download', refuse)
    monkeypatch.setattr(chainer.datasets, 'get_cifar10', refuse)
    monkeypatch.setattr(chainer.datasets, 'get_cifar100', refuse)
    monkeypatch.setattr(chainer.datasets, 'get_fashion_mnist', refuse)
    monkeypatch.setattr(urllib.request, 'urlretrieve', refuse)
    monkeypatch.setattr(urllib.request, 'urlopen', refuse)


@pytest.fixture
def chainer_root(tmp_path, monkeypatch, no_network):
    """A temporary, empty Chainer dataset root (env var and Chainer's import-time copy),
    and an empty folder where the Debian package would be."""
    root = tmp_path / 'chainer_root'
    monkeypatch.setenv('CHAINER_DATASET_ROOT', str(root))
    monkeypatch.setattr(chainer.dataset.download, '_dataset_root', str(root))
    monkeypatch.setattr(data.sources, 'DEBIAN_DIR', str(tmp_path / 'debian_share'))
    return root


def publish(monkeypatch, official, path):
    """Take the file at ``path`` as the published ``official`` file (its MD5 becomes the
    published one): the tests' tiny archives stand for the real ones."""
    md5 = hashlib.md5(pathlib.Path(path).read_bytes()).hexdigest()
    monkeypatch.setitem(data.CHECKSUMS, official, md5)


def _raw_cifar(n_train, n_test, n_classes, seed=0):
    """uint8 rows (N, 3072) and labels; train image 0 is black with a red top-left pixel and
    a blue pixel at (row 1, col 2); test pixels are darker than train (different mean)."""
    rs = numpy.random.RandomState(seed)
    train_x = rs.randint(0, 256, (n_train, 3072)).astype(numpy.uint8)
    train_x[0] = 0
    train_x[0, 0] = 255                      # R, (0, 0)
    train_x[0, 2 * 1024 + 1 * 32 + 2] = 255  # B, (1, 2)
    test_x = rs.randint(0, 128, (n_test, 3072)).astype(numpy.uint8)
    train_y = rs.randint(0, n_classes, n_train)
    test_y = rs.randint(0, n_classes, n_test)
    return train_x, train_y, test_x, test_y


class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote the official batches: its ``str`` (the keys, the
    bytes, NumPy's dtype codes) as BINSTRING, no ``_codecs.encode``."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode('ascii') if isinstance(obj, str) else obj
        n = len(raw)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else
                    pickle.BINSTRING + struct.pack('<i', n)) + raw)
        self.memoize(obj)
    dispatch[bytes] = dispatch[str] = save_py2_str


def py2_pickle(obj):
    """``obj`` pickled as in the official CIFAR python batches (Python 2, protocol 2,
    arrays rebuilt by ``numpy.core.multiarray._reconstruct``)."""
    f = io.BytesIO()
    _Python2Pickler(f, 2).dump(obj)
    out = f.getvalue().replace(b'cnumpy._core.multiarray\n', b'cnumpy.core.multiarray\n')
    assert b'_codecs' not in out and b'numpy._core' not in out
    return out


def _cifar10_files(raw, dumps=py2_pickle):
    """{member name: pickled bytes} as in cifar-10-python.tar.gz."""
    train_x, train_y, test_x, test_y = raw
    files = {'batches.meta': dumps(
        {b'num_cases_per_batch': N_PER_BATCH, b'num_vis': 3072,
         b'label_names': [b'airplane', b'automobile', b'bird', b'cat', b'deer', b'dog',
                          b'frog', b'horse', b'ship', b'truck']})}
    for i in range(5):
        s = slice(i * N_PER_BATCH, (i + 1) * N_PER_BATCH)
        files['data_batch_%d' % (i + 1)] = dumps(
            {b'batch_label': b'training batch %d of 5' % (i + 1),
             b'labels': [int(v) for v in train_y[s]], b'data': train_x[s],
             b'filenames': [b'img_%d.png' % j for j in range(N_PER_BATCH)]})
    files['test_batch'] = dumps(
        {b'batch_label': b'testing batch 1 of 1', b'labels': [int(v) for v in test_y],
         b'data': test_x, b'filenames': [b't_%d.png' % j for j in range(len(test_y))]})
    return files


def _cifar100_files(raw):
    train_x, train_y, test_x, test_y = raw
    files = {'meta': py2_pickle({b'fine_label_names': [b'f%d' % i for i in range(100)],
                                 b'coarse_label_names': [b'c%d' % i for i in range(20)]})}
    for split, x, y in (('train', train_x, train_y), ('test', test_x, test_y)):
        files[split] = py2_pickle(
            {b'filenames': [b'%d.png' % j for j in range(len(y))],
             b'batch_label': b'%s batch 1 of 1' % split.encode(),
             b'fine_labels': [int(v) for v in y], b'coarse_labels': [int(v) // 5 for v in y],
             b'data': x})
    return files


def _write_dir(path, files):
    path.mkdir(parents=True)
    for member, payload in files.items():
        (path / member).write_bytes(payload)
    return path


def _write_tar(path, folder, files):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, 'w:gz') as tar:
        for member, payload in files.items():
            info = tarfile.TarInfo('%s/%s' % (folder, member))
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _expected_images(rows):
    return rows.reshape(-1, 3, 32, 32)


def _unnormalise(x, ds):
    """Back to uint8 (exact: the normalisation is an affine map of x / 255)."""
    return numpy.rint((x * ds.std[:, None, None] + ds.mean[:, None, None]) * 255).astype(int)


def _check_cifar(ds, raw, n_classes):
    train_x, train_y, test_x, test_y = raw
    assert ds.train_x.shape == (len(train_y), 3, 32, 32) and ds.train_x.dtype == numpy.float32
    assert ds.test_x.shape == (len(test_y), 3, 32, 32) and ds.test_x.dtype == numpy.float32
    assert ds.train_y.dtype == numpy.int32 and ds.test_y.dtype == numpy.int32
    numpy.testing.assert_array_equal(ds.train_y, train_y)
    numpy.testing.assert_array_equal(ds.test_y, test_y)
    assert ds.n_classes == n_classes
    # training-set statistics of the [0, 1]-scaled pixels, applied to train and test
    scaled = _expected_images(train_x) / 255.0
    numpy.testing.assert_allclose(ds.mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-6)
    numpy.testing.assert_allclose(ds.std, scaled.std(axis=(0, 2, 3)), rtol=1e-6)
    numpy.testing.assert_allclose(ds.train_x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    numpy.testing.assert_allclose(ds.train_x.std(axis=(0, 2, 3)), 1, atol=1e-4)
    m, s = scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3))
    expected_test = (_expected_images(test_x) / 255.0 - m[:, None, None]) / s[:, None, None]
    numpy.testing.assert_allclose(ds.test_x, expected_test, rtol=1e-5, atol=1e-5)
    assert (ds.test_x.mean(axis=(0, 2, 3)) < -0.5).all()  # test set darker: not re-centred
    # pixel layout: rows are R(1024) G(1024) B(1024), each row-major 32 x 32
    numpy.testing.assert_array_equal(_unnormalise(ds.train_x, ds), _expected_images(train_x))
    img = _unnormalise(ds.train_x[:1], ds)[0]
    assert img[0, 0, 0] == 255 and img[2, 1, 2] == 255 and img.sum() == 2 * 255


# --------------------------------------------------------------------------- CIFAR sources

def test_cifar10_extracted_batches(tmp_path, chainer_root):
    raw = _raw_cifar(5 * N_PER_BATCH, N_TEST, 10)
    folder = _write_dir(tmp_path / 'cifar-10-batches-py', _cifar10_files(raw))
    ds = data.load_dataset('cifar10', tmp_path)
    _check_cifar(ds, raw, 10)
    assert ds.name == 'cifar10' and ds.source == str(folder)
    # data_dir may also be the extracted folder itself
    assert data.load_dataset('cifar10', folder).source == str(folder)
    assert not chainer_root.exists()  # nothing created in Chainer's cache


def test_cifar10_archive_read_in_place(tmp_path, chainer_root, monkeypatch):
    raw = _raw_cifar(5 * N_PER_BATCH, N_TEST, 10)
    archive = _write_tar(tmp_path / 'cifar-10-python.tar.gz', 'cifar-10-batches-py',
                         _cifar10_files(raw))
    publish(monkeypatch, 'cifar-10-python.tar.gz', archive)
    ds = data.load_dataset('cifar10', str(tmp_path))
    _check_cifar(ds, raw, 10)
    assert ds.source == str(archive)
    assert sorted(os.listdir(tmp_path)) == ['cifar-10-python.tar.gz']  # nothing extracted
    assert data.load_dataset('cifar10', archive).source == str(archive)  # the file itself


def test_cifar100_dir_and_archive_use_fine_labels(tmp_path, chainer_root, monkeypatch):
    raw = _raw_cifar(12, N_TEST, 100)
    raw[1][:3] = [99, 57, 23]  # fine labels beyond the 20 coarse classes
    files = _cifar100_files(raw)
    folder = _write_dir(tmp_path / 'd' / 'cifar-100-python', files)
    archive = _write_tar(tmp_path / 'a' / 'cifar-100-python.tar.gz', 'cifar-100-python',
                         files)
    publish(monkeypatch, 'cifar-100-python.tar.gz', archive)
    for where, source in ((tmp_path / 'd', folder), (tmp_path / 'a', archive)):
        ds = data.load_dataset('cifar100', where)
        _check_cifar(ds, raw, 100)
        assert ds.source == str(source)


def test_chainer_cache_npz_path_and_format(chainer_root):
    npz, dl = data.chainer_cache_paths('cifar10')
    # the path Chainer itself computes for get_cifar10's cache
    assert npz == os.path.join(chainer.dataset.get_dataset_directory(
        os.path.join('pfnet', 'chainer', 'cifar'), create_directory=False), 'cifar-10.npz')
    assert npz == str(chainer_root / 'pfnet' / 'chainer' / 'cifar' / 'cifar-10.npz')
    assert data.chainer_cache_paths('cifar100')[0].endswith('cifar-100.npz')
    assert os.path.dirname(dl) == str(chainer_root / '_dl_cache')
    raw = _raw_cifar(10, N_TEST, 10)
    os.makedirs(os.path.dirname(npz))
    # exactly what chainer/datasets/cifar.py writes: uint8 (N, 3072) images, uint8 labels
    numpy.savez_compressed(npz, train_x=raw[0], train_y=raw[1].astype(numpy.uint8),
                           test_x=raw[2], test_y=raw[3].astype(numpy.uint8))
    ds = data.load_dataset('cifar10')
    _check_cifar(ds, raw, 10)
    assert ds.source == npz
    # Chainer's own loader reads the same file (it exists, so no download) identically
    from chainer.datasets import cifar
    train, test = cifar._get_cifar('cifar-10', True, 3, 1.0, None)
    numpy.testing.assert_array_equal(numpy.rint(train._datasets[0] * 255),
                                     _unnormalise(ds.train_x, ds))
    numpy.testing.assert_array_equal(test._datasets[1], ds.test_y)


def test_chainer_download_cache_archive(chainer_root, monkeypatch):
    raw = _raw_cifar(5 * N_PER_BATCH, N_TEST, 10)
    dl = data.chainer_cache_paths('cifar10')[1]
    _write_tar(pathlib.Path(dl), 'cifar-10-batches-py', _cifar10_files(raw))
    publish(monkeypatch, 'cifar-10-python.tar.gz', dl)
    ds = data.load_dataset('cifar10')
    _check_cifar(ds, raw, 10)
    assert ds.source == dl


def test_env_var_sets_chainer_cache_path(tmp_path):
    code = ('import experiments.data as d, chainer; '
            'print(d.chainer_cache_paths("cifar100")[0]); '
            'print(chainer.dataset.get_dataset_root())')
    env = dict(os.environ, CHAINER_DATASET_ROOT=str(tmp_path))
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == [str(tmp_path / 'pfnet' / 'chainer' / 'cifar' / 'cifar-100.npz'),
                   str(tmp_path)]


def test_data_dir_without_data_falls_back_to_cache_with_warning(tmp_path, chainer_root):
    raw = _raw_cifar(10, N_TEST, 10)
    npz = data.chainer_cache_paths('cifar10')[0]
    os.makedirs(os.path.dirname(npz))
    numpy.savez_compressed(npz, train_x=raw[0], train_y=raw[1], test_x=raw[2],
                           test_y=raw[3])
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.warns(UserWarning, match='using Chainer'):
        ds = data.load_dataset('cifar10', empty)
    assert ds.source == npz


# --------------------------------------------------------------------------- missing / corrupt

@pytest.mark.parametrize('name, url', [('cifar10', 'cifar-10-python.tar.gz'),
                                       ('cifar100', 'cifar-100-python.tar.gz')])
def test_missing_data_message(tmp_path, chainer_root, name, url):
    data_dir = tmp_path / 'nothing_here'
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset(name, data_dir)
    msg = str(info.value)
    npz, dl = data.chainer_cache_paths(name)
    for part in (str(data_dir), npz, dl, '--data-dir', '--download',
                 'https://www.cs.toronto.edu/~kriz/' + url, 'does not exist'):
        assert part in msg
    assert '\n' not in msg and msg.startswith('CIFAR-1')   # one line
    with pytest.raises(FileNotFoundError, match='or pass --download to let Chainer'):
        data.load_dataset(name)
    assert not chainer_root.exists()


def test_download_failure_and_success_are_reported(tmp_path, chainer_root, monkeypatch):
    def offline(url):
        raise OSError('network is unreachable')
    monkeypatch.setattr(chainer.dataset.download, 'cached_download', offline)
    with pytest.raises(FileNotFoundError, match='network is unreachable') as info:
        data.load_dataset('cifar10', allow_download=True)
    # the download was asked for (e.g. by `make reproduce`): do not suggest it again, say
    # how to point at local data, also through make
    msg = str(info.value)
    assert 'pass --download' not in msg and 'and its download from %s failed' % (
        data.URLS['cifar10']) in msg
    assert 'make reproduce DATA_DIR=DIR' in msg and '--data-dir DIR' in msg

    raw = _raw_cifar(5 * N_PER_BATCH, N_TEST, 10)
    calls = []

    def fake_download(url):  # what Chainer's downloader leaves behind
        calls.append(url)
        path = data.chainer_cache_paths('cifar10')[1]
        _write_tar(pathlib.Path(path), 'cifar-10-batches-py', _cifar10_files(raw))
        return path
    monkeypatch.setattr(chainer.dataset.download, 'cached_download', fake_download)
    dl = data.chainer_cache_paths('cifar10')[1]
    # the download is checked against the published checksum before it is read
    with pytest.raises(data.CorruptDataError, match='c58f30108f718f92721af3b95e74349a'):
        data.load_dataset('cifar10', allow_download=True)
    assert calls == [data.URLS['cifar10']]
    publish(monkeypatch, 'cifar-10-python.tar.gz', dl)
    ds = data.load_dataset('cifar10')       # now in Chainer's download cache
    _check_cifar(ds, raw, 10)
    os.remove(dl)
    ds = data.load_dataset('cifar10', allow_download=True)
    assert calls == [data.URLS['cifar10']] * 2
    _check_cifar(ds, raw, 10)
    assert ds.source == '%s (downloaded from %s)' % (dl, data.URLS['cifar10'])


def test_truncated_pickle_names_file(tmp_path, chainer_root):
    files = _cifar10_files(_raw_cifar(5 * N_PER_BATCH, N_TEST, 10))
    files['data_batch_3'] = files['data_batch_3'][:200]
    folder = _write_dir(tmp_path / 'cifar-10-batches-py', files)
    with pytest.raises(data.CorruptDataError, match='data_batch_3') as info:
        data.load_dataset('cifar10', tmp_path)
    assert str(folder / 'data_batch_3') in str(info.value)
    assert 'truncated or corrupted' in str(info.value)


def test_incomplete_folder_names_missing_file(tmp_path, chainer_root):
    files = _cifar10_files(_raw_cifar(5 * N_PER_BATCH, N_TEST, 10))
    del files['data_batch_5']
    folder = _write_dir(tmp_path / 'cifar-10-batches-py', files)
    with pytest.raises(FileNotFoundError, match=str(folder / 'data_batch_5')):
        data.load_dataset('cifar10', tmp_path)


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'wrong_members'])
def test_bad_archive_names_file(tmp_path, chainer_root, monkeypatch, damage):
    """An archive taken as the published one (its checksum matches) that still cannot be
    read is an error naming it."""
    archive = tmp_path / 'cifar-10-python.tar.gz'
    files = _cifar10_files(_raw_cifar(5 * N_PER_BATCH, N_TEST, 10))
    if damage == 'garbage':
        archive.write_bytes(b'this is not a gzip file' * 100)
    else:
        _write_tar(archive, 'cifar-10-batches-py' if damage == 'truncated' else 'other',
                   files)
        if damage == 'truncated':
            archive.write_bytes(archive.read_bytes()[:len(archive.read_bytes()) // 2])
    publish(monkeypatch, 'cifar-10-python.tar.gz', archive)
    with pytest.raises(data.CorruptDataError, match=str(archive)) as info:
        data.load_dataset('cifar10', tmp_path)
    assert {'garbage': 'cannot read the archive', 'truncated': 'truncated or corrupted',
            'wrong_members': 'archive lacks'}[damage] in str(info.value)


def test_archive_not_matching_its_published_checksum_is_refused(tmp_path, chainer_root):
    """A well-formed archive that is not the published file is one error line naming it
    and the published MD5, wherever it is; other data present is not used instead."""
    raw = _raw_cifar(5 * N_PER_BATCH, N_TEST, 10)
    archive = _write_tar(tmp_path / 'cifar-10-python.tar.gz', 'cifar-10-batches-py',
                         _cifar10_files(raw))
    npz = data.chainer_cache_paths('cifar10')[0]       # good data that must not be used
    os.makedirs(os.path.dirname(npz))
    numpy.savez_compressed(npz, train_x=raw[0], train_y=raw[1], test_x=raw[2],
                           test_y=raw[3])
    for data_dir in (tmp_path, archive):
        with pytest.raises(data.CorruptDataError) as info:
            data.load_dataset('cifar10', data_dir)
        msg = str(info.value)
        assert msg.startswith(str(archive) + ': MD5 ' + hashlib.md5(
            archive.read_bytes()).hexdigest()) and '\n' not in msg
        assert 'published cifar-10-python.tar.gz has MD5 c58f30108f718f92721af3b95e74349a' \
            in msg
    dl = pathlib.Path(data.chainer_cache_paths('cifar10')[1])   # Chainer's download, too
    _write_tar(dl, 'cifar-10-batches-py', _cifar10_files(raw))
    os.remove(npz)
    with pytest.raises(data.CorruptDataError, match='%s: MD5 .*c58f3' % dl):
        data.load_dataset('cifar10')
    big = tmp_path / 'c100'                            # and CIFAR-100's
    _write_tar(big / 'cifar-100-python.tar.gz', 'cifar-100-python',
               _cifar100_files(_raw_cifar(12, N_TEST, 100)))
    with pytest.raises(data.CorruptDataError, match='eb9058c3a382ffc7106e4002c42a8d85'):
        data.load_dataset('cifar100', big)


class _MakesADirectory:
    """Unpickling this runs ``os.mkdir(path)``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize('where', ['folder', 'archive'])
def test_tampered_pickle_is_refused_and_not_run(tmp_path, chainer_root, monkeypatch, where):
    marker = tmp_path / 'made_by_the_pickle'
    raw = _raw_cifar(5 * N_PER_BATCH, N_TEST, 10)
    files = _cifar10_files(raw)
    batch = pickle.loads(files['data_batch_2'], encoding='bytes')
    batch[b'filenames'] = _MakesADirectory(str(marker))
    files['data_batch_2'] = py2_pickle(batch)
    pickle.loads(files['data_batch_2'], encoding='bytes')   # the payload is live: it runs
    assert marker.is_dir()
    marker.rmdir()
    data_dir = tmp_path / 'data'
    if where == 'folder':
        bad = _write_dir(data_dir / 'cifar-10-batches-py', files) / 'data_batch_2'
    else:
        archive = _write_tar(data_dir / 'cifar-10-python.tar.gz', 'cifar-10-batches-py',
                             files)
        publish(monkeypatch, 'cifar-10-python.tar.gz', archive)
        bad = '%s (member cifar-10-batches-py/data_batch_2)' % archive
    with pytest.raises(data.CorruptDataError) as info:
        data.load_dataset('cifar10', data_dir)
    assert not marker.exists()
    msg = str(info.value)
    assert msg.startswith('%s: refused to unpickle %s.mkdir' % (bad, os.mkdir.__module__))
    assert 'not an official batch' in msg and '\n' not in msg


def test_batch_pickles_of_python3_read_and_other_globals_refused(tmp_path, chainer_root):
    """Batches pickled again by Python 3 (protocol 2: bytes through ``_codecs.encode``,
    arrays through ``numpy._core``) read the same; ``_codecs.encode`` for anything but
    bytes, and any other global, are refused."""
    raw = _raw_cifar(5 * N_PER_BATCH, N_TEST, 10)
    assert b'cnumpy.core.multiarray\n_reconstruct\n' in _cifar10_files(raw)['test_batch']
    files = _cifar10_files(raw, dumps=lambda obj: pickle.dumps(obj, protocol=2))
    assert b'c_codecs\nencode\n' in files['test_batch']
    _write_dir(tmp_path / 'cifar-10-batches-py', files)
    _check_cifar(data.load_dataset('cifar10', tmp_path), raw, 10)
    for payload, refused in (
            (b'\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.',
             "'rot13'"),
            (pickle.dumps({b'data': numpy.int64(3)}, protocol=2), 'scalar'),
            (pickle.dumps({b'data': print}, protocol=2), r'__builtin__\.print')):
        with pytest.raises(data.CorruptDataError, match='x.pkl: refused .*%s' % refused):
            data.parsers.load_batch_pickle(io.BytesIO(payload), 'x.pkl')


def test_corrupt_npz_and_bad_labels_name_file(tmp_path, chainer_root):
    npz = data.chainer_cache_paths('cifar10')[0]
    os.makedirs(os.path.dirname(npz))
    with open(npz, 'wb') as f:
        f.write(b'PK\x03\x04 truncated zip')
    with pytest.raises(data.CorruptDataError, match=npz):
        data.load_dataset('cifar10')
    raw = _raw_cifar(10, N_TEST, 10)
    raw[1][4] = 10  # label outside CIFAR-10's classes
    numpy.savez_compressed(npz, train_x=raw[0], train_y=raw[1], test_x=raw[2],
                           test_y=raw[3])
    with pytest.raises(data.CorruptDataError, match='labels outside'):
        data.load_dataset('cifar10')


def test_a_subset_larger_than_the_data_is_a_data_error(tmp_path, chainer_root):
    _write_dir(tmp_path / 'cifar-10-batches-py', _cifar10_files(_raw_cifar(5 * N_PER_BATCH,
                                                                          N_TEST, 10)))
    with pytest.raises(data.DataError, match='data.subset asks for 50 train images'):
        data.load_dataset('cifar10', tmp_path, subset=[50, 2])
    assert issubclass(data.CorruptDataError, data.DataError)


def test_unknown_name_lists_datasets():
    with pytest.raises(ValueError) as info:
        data.load_dataset('imagenet')
    for name in data.DATASETS:
        assert name in str(info.value)
    assert data.DATASETS == ('cifar10', 'cifar100', 'fashion-mnist', 'synthetic')


# --------------------------------------------------------------------------- subset

def test_subset_after_seeded_shuffle(tmp_path, chainer_root):
    raw = _raw_cifar(5 * N_PER_BATCH, N_TEST, 10)
    _write_dir(tmp_path / 'cifar-10-batches-py', _cifar10_files(raw))
    full = data.load_dataset('cifar10', tmp_path)
    sub = data.load_dataset('cifar10', tmp_path, subset=(7, 3), seed=1)
    assert sub.train_x.shape == (7, 3, 32, 32) and sub.test_x.shape == (3, 3, 32, 32)
    assert 'subset' in sub.source and str(tmp_path) in sub.source
    numpy.testing.assert_array_equal(sub.mean, full.mean)  # full-train statistics
    numpy.testing.assert_array_equal(sub.std, full.std)
    rs = numpy.random.RandomState(1)
    tr, te = rs.permutation(20)[:7], rs.permutation(N_TEST)[:3]
    numpy.testing.assert_array_equal(sub.train_x, full.train_x[tr])
    numpy.testing.assert_array_equal(sub.train_y, full.train_y[tr])
    numpy.testing.assert_array_equal(sub.test_x, full.test_x[te])
    both = data.load_dataset('cifar10', tmp_path, subset=5, seed=1)
    assert (both.n_train, both.n_test) == (5, 5)
    numpy.testing.assert_array_equal(both.train_x, sub.train_x[:5])
    other = data.load_dataset('cifar10', tmp_path, subset=5, seed=2)
    assert not numpy.array_equal(other.train_y, both.train_y) or \
        not numpy.array_equal(other.train_x, both.train_x)
    with pytest.raises(ValueError, match='only 20'):
        data.load_dataset('cifar10', tmp_path, subset=(21, 1))
    with pytest.raises(ValueError, match='subset'):
        data.load_dataset('cifar10', tmp_path, subset=(0, 1))


# --------------------------------------------------------------------------- synthetic

def test_synthetic_deterministic_learnable_and_labelled():
    a = data.load_dataset('synthetic', seed=3)
    b = data.load_dataset('synthetic', seed=3)
    c = data.load_dataset('synthetic', seed=4)
    assert a.source == data.SYNTHETIC_SOURCE and 'not CIFAR' in a.source
    assert (a.n_train, a.n_test, a.n_classes) == (512, 256, 10)
    assert a.train_x.shape == (512, 3, 32, 32) and a.train_x.dtype == numpy.float32
    assert a.train_y.dtype == numpy.int32
    for field in ('train_x', 'train_y', 'test_x', 'test_y', 'mean', 'std'):
        numpy.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not numpy.array_equal(a.train_x, c.train_x)
    assert set(a.train_y) == set(range(10)) and set(a.test_y) <= set(range(10))
    numpy.testing.assert_allclose(a.train_x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    numpy.testing.assert_allclose(a.train_x.std(axis=(0, 2, 3)), 1, atol=1e-4)
    # nearest class mean (fit on train, scored on test) clearly beats chance (0.1)
    tr, te = a.train_x.reshape(512, -1), a.test_x.reshape(256, -1)
    means = numpy.stack([tr[a.train_y == k].mean(0) for k in range(10)])
    pred = ((te[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == a.test_y).mean() > 0.5
    small = data.load_dataset('synthetic', subset=(40, 20), seed=3)
    assert (small.n_train, small.n_test) == (40, 20)


# --------------------------------------------------------------------------- augmentation

def _crop_flip_loop(x, oy, ox, flip, pad):
    p = numpy.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    h, w = x.shape[2:]
    out = numpy.stack([p[b, :, oy[b]:oy[b] + h, ox[b]:ox[b] + w] for b in range(len(x))])
    out[flip] = out[flip][..., ::-1]
    return out


def test_random_crop_flip_matches_direct_computation():
    x = numpy.random.RandomState(0).randn(64, 3, 32, 32).astype(numpy.float32)
    x0 = x.copy()
    out = data.random_crop_flip(x, numpy.random.RandomState(5), pad=4)
    assert out.shape == x.shape and out.dtype == x.dtype
    numpy.testing.assert_array_equal(x, x0)  # input untouched
    oy, ox, flip = data.draw_crop_flip(numpy.random.RandomState(5), 64, 4)
    assert 0 < flip.sum() < 64 and len(set(oy)) > 3 and len(set(ox)) > 3
    numpy.testing.assert_array_equal(out, _crop_flip_loop(x, oy, ox, flip, 4))
    # sample-level check of one shift: content moves by (4 - oy, 4 - ox), zeros come in
    x1 = x[:1]
    shifted = data.apply_crop_flip(x1, numpy.array([0]), numpy.array([8]),
                                   numpy.array([False]), 4)[0]
    numpy.testing.assert_array_equal(shifted[:, 4:, :28], x1[0, :, :28, 4:])
    assert (shifted[:, :4] == 0).all() and (shifted[:, :, 28:] == 0).all()
    # same seed -> same output; another seed -> another
    numpy.testing.assert_array_equal(out, data.random_crop_flip(x, numpy.random.RandomState(5)))
    assert not numpy.array_equal(out, data.random_crop_flip(x, numpy.random.RandomState(6)))


def test_random_crop_flip_identity_and_flip():
    x = numpy.random.RandomState(1).randn(16, 3, 8, 8)
    numpy.testing.assert_array_equal(
        data.random_crop_flip(x, numpy.random.RandomState(0), pad=0, flip=False), x)
    out = data.random_crop_flip(x, numpy.random.RandomState(0), pad=0)
    flip = data.draw_crop_flip(numpy.random.RandomState(0), 16, 0)[2]
    assert 0 < flip.sum() < 16
    numpy.testing.assert_array_equal(out[~flip], x[~flip])
    numpy.testing.assert_array_equal(out[flip], x[flip][..., ::-1])
    assert not numpy.array_equal(out[flip], x[flip])
    # rates: flips ~ 1/2, offsets uniform over 0..2*pad
    oy, ox, flip = data.draw_crop_flip(numpy.random.RandomState(2), 20000, 4)
    assert abs(flip.mean() - 0.5) < 0.02
    assert set(oy) == set(ox) == set(range(9))
    with pytest.raises(ValueError):
        data.random_crop_flip(x[0], numpy.random.RandomState(0))


@pytest.mark.gpu
def test_random_crop_flip_gpu_matches_cpu():
    import cupy
    x = numpy.random.RandomState(0).randn(256, 3, 32, 32).astype(numpy.float32)
    out = data.random_crop_flip(cupy.asarray(x), numpy.random.RandomState(3))
    assert isinstance(out, cupy.ndarray)
    numpy.testing.assert_array_equal(
        cupy.asnumpy(out), data.random_crop_flip(x, numpy.random.RandomState(3)))


# --------------------------------------------------------------------------- epoch orders

def test_epoch_order_sampler_is_a_function_of_seed_and_order():
    s = data.EpochOrderSampler(7)
    first = s(numpy.arange(50), 0)
    assert sorted(first) == list(range(50)) and not numpy.array_equal(first, numpy.arange(50))
    second = s(first, 50)
    assert sorted(second) == list(range(50)) and not numpy.array_equal(first, second)
    numpy.testing.assert_array_equal(second, data.EpochOrderSampler(7)(first.copy(), 0))
    numpy.testing.assert_array_equal(second, s(first.astype(numpy.int32), 50))
    assert not numpy.array_equal(first, data.EpochOrderSampler(8)(numpy.arange(50), 0))


def _ids(batch):
    return [int(y) for _, y in batch]


def test_serial_iterator_resumes_identically(tmp_path):
    n, bs = 20, 3  # 1.5 epochs = 30 examples = 10 batches
    ds = chainer.datasets.TupleDataset(numpy.zeros((n, 1), numpy.float32),
                                       numpy.arange(n, dtype=numpy.int32))

    def make():
        return chainer.iterators.SerialIterator(ds, bs, order_sampler=data.EpochOrderSampler(0))

    ref = make()
    ref_batches = [_ids(ref.next()) for _ in range(20)]  # 3 epochs
    flat = sum(ref_batches, [])
    for e in range(3):  # every epoch a permutation, epochs differ
        assert sorted(flat[e * n:(e + 1) * n]) == list(range(n))
    assert flat[:n] != flat[n:2 * n]

    it = make()
    for _ in range(10):
        it.next()
    assert it.epoch_detail == 1.5
    chainer.serializers.save_npz(str(tmp_path / 'it.npz'), it)
    resumed = make()
    assert _ids(resumed.next()) != ref_batches[10]  # a fresh iterator is elsewhere
    resumed = make()
    chainer.serializers.load_npz(str(tmp_path / 'it.npz'), resumed)
    assert resumed.epoch_detail == 1.5
    assert [_ids(resumed.next()) for _ in range(10)] == ref_batches[10:]
    assert resumed.epoch == 3


def test_iterators():
    ds = data.load_dataset('synthetic', subset=(30, 10))
    train_iter, test_iter = data.iterators(ds, 8, seed=0, test_batch_size=4)
    assert isinstance(train_iter.order_sampler, data.EpochOrderSampler)
    x, y = chainer.dataset.concat_examples(train_iter.next())
    assert x.shape == (8, 3, 32, 32) and y.dtype == numpy.int32
    seen = [chainer.dataset.concat_examples(b) for b in test_iter]
    assert [len(b[1]) for b in seen] == [4, 4, 2]  # one pass, in order
    numpy.testing.assert_array_equal(numpy.concatenate([b[0] for b in seen]), ds.test_x)
    for _ in range(5):
        train_iter.next()
    assert train_iter.epoch >= 1  # repeats
    other = data.iterators(ds, 8, seed=0)[0]
    numpy.testing.assert_array_equal(other.next()[0][0], x[0])


# --------------------------------------------------------------------------- Fashion-MNIST

def idx_bytes(arr):
    """``arr`` (uint8) in the IDX format of the (Fashion-)MNIST files."""
    arr = numpy.ascontiguousarray(arr, numpy.uint8)
    return (b'\x00\x00\x08' + bytes([arr.ndim]) + numpy.array(arr.shape, '>u4').tobytes()
            + arr.tobytes())


def raw_fashion(n_train=12, n_test=8, seed=0):
    """uint8 (N, 28, 28) images and labels in [0, 10): train image 0 is black but for a
    white pixel at (0, 0) and a grey one at (27, 27); test pixels are darker."""
    rs = numpy.random.RandomState(seed)
    train_x = rs.randint(0, 256, (n_train, 28, 28)).astype(numpy.uint8)
    train_x[0] = 0
    train_x[0, 0, 0], train_x[0, 27, 27] = 255, 128
    test_x = rs.randint(0, 128, (n_test, 28, 28)).astype(numpy.uint8)
    return (train_x, rs.randint(0, 10, n_train).astype(numpy.uint8), test_x,
            rs.randint(0, 10, n_test).astype(numpy.uint8))


def write_fashion(folder, raw, gz=True, skip=()):
    """The four official IDX files of ``raw`` in ``folder`` (gzipped or not)."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = dict(zip([n for names in data.FMNIST_FILES.values() for n in names],
                      [raw[0], raw[1], raw[2], raw[3]]))
    paths = {}
    for name, arr in arrays.items():
        if name in skip:
            continue
        path = folder / (name + ('.gz' if gz else ''))
        path.write_bytes(gzip.compress(idx_bytes(arr)) if gz else idx_bytes(arr))
        paths[name] = path
    return paths


def check_fashion(ds, raw):
    train_x, train_y, test_x, test_y = raw
    assert ds.name == 'fashion-mnist' and ds.n_classes == 10 and ds.channels == 1
    assert ds.train_x.shape == (len(train_y), 1, 32, 32) and ds.train_x.dtype == numpy.float32
    assert ds.test_x.shape == (len(test_y), 1, 32, 32)
    numpy.testing.assert_array_equal(ds.train_y, train_y)
    numpy.testing.assert_array_equal(ds.test_y, test_y)
    # padded with zeros (the background) to 32 x 32; statistics of the padded train set
    padded = numpy.pad(train_x, ((0, 0), (2, 2), (2, 2))) / 255.0
    assert numpy.isclose(ds.mean[0], padded.mean()) and numpy.isclose(ds.std[0], padded.std())
    numpy.testing.assert_allclose(ds.train_x[:, 0] * ds.std[0] + ds.mean[0], padded,
                                  atol=1e-6)
    numpy.testing.assert_allclose(
        ds.test_x[:, 0] * ds.std[0] + ds.mean[0],
        numpy.pad(test_x, ((0, 0), (2, 2), (2, 2))) / 255.0, atol=1e-6)
    assert ds.train_x[0, 0, 2, 2] == ds.train_x.max()          # the white pixel, moved
    assert (ds.train_x[:, :, :2] == ds.crop_fill[0]).all()     # the border is background
    assert "not the paper's data" in ds.source
    info = ds.info()
    assert info['channels'] == 1 and info['crop_fill'] == 'background'


@pytest.mark.parametrize('gz', [True, False])
def test_fashion_mnist_idx_files_in_data_dir(tmp_path, chainer_root, gz):
    raw = raw_fashion()
    write_fashion(tmp_path / 'fashion-mnist', raw, gz=gz)
    ds = data.load_dataset('fashion-mnist', tmp_path / 'fashion-mnist')
    check_fashion(ds, raw)
    assert str(tmp_path / 'fashion-mnist') in ds.source
    # a data_dir holding a fashion-mnist/ folder works too; the name's spellings
    ds = data.load_dataset('Fashion_MNIST', tmp_path)
    check_fashion(ds, raw)
    assert data.canonical_name('fmnist') == 'fashion-mnist'
    assert data.channels_of('fashion-mnist') == 1 and data.channels_of('cifar10') == 3


def test_fashion_mnist_look_up_order(tmp_path, chainer_root, monkeypatch):
    """--data-dir, then the Debian path, then Chainer's npz cache, then its download
    cache; each found only when the ones before it are absent."""
    raws = [raw_fashion(seed=s) for s in range(4)]
    npz, dl = data.fashion_mnist_cache_paths()
    assert npz == tuple(str(chainer_root / 'pfnet' / 'chainer' / 'fashion-mnist' / f)
                        for f in ('train.npz', 'test.npz'))
    # what chainer.datasets.get_fashion_mnist leaves: x uint8 (N, 784), y uint8
    os.makedirs(os.path.dirname(npz[0]))
    numpy.savez_compressed(npz[0], x=raws[2][0].reshape(-1, 784), y=raws[2][1])
    numpy.savez_compressed(npz[1], x=raws[2][2].reshape(-1, 784), y=raws[2][3])
    os.makedirs(os.path.dirname(next(iter(dl.values()))))
    for name, arr in zip([n for ns in data.FMNIST_FILES.values() for n in ns], raws[3]):
        pathlib.Path(dl[name]).write_bytes(gzip.compress(idx_bytes(arr)))
        publish(monkeypatch, name + '.gz', dl[name])
    write_fashion(data.sources.DEBIAN_DIR, raws[1])
    write_fashion(tmp_path / 'mine', raws[0], gz=False)
    check_fashion(data.load_dataset('fashion-mnist', tmp_path / 'mine'), raws[0])
    ds = data.load_dataset('fashion-mnist')
    check_fashion(ds, raws[1])
    assert data.sources.DEBIAN_DIR in ds.source
    with pytest.warns(UserWarning, match='Debian package'):
        data.load_dataset('fashion-mnist', tmp_path / 'empty_but_asked')
    for f in os.listdir(data.sources.DEBIAN_DIR):
        os.remove(os.path.join(data.sources.DEBIAN_DIR, f))
    ds = data.load_dataset('fashion-mnist')
    check_fashion(ds, raws[2])
    assert os.path.dirname(npz[0]) in ds.source
    # Chainer's own reader agrees with ours on its cache
    train, _ = chainer.datasets.fashion_mnist._retrieve_fashion_mnist_training(), None
    numpy.testing.assert_array_equal(train['x'].reshape(-1, 28, 28), raws[2][0])
    for p in npz:
        os.remove(p)
    ds = data.load_dataset('fashion-mnist')
    check_fashion(ds, raws[3])
    assert '_dl_cache' in ds.source
    # the downloaded files are checked against their published checksums
    monkeypatch.setitem(data.CHECKSUMS, 't10k-labels-idx1-ubyte.gz',
                        'bb300cfdad3c16e7a12a480ee83cd310')
    with pytest.raises(data.CorruptDataError) as info:
        data.load_dataset('fashion-mnist')
    assert str(info.value).startswith(dl['t10k-labels-idx1-ubyte'] + ': MD5 ')
    assert 'published t10k-labels-idx1-ubyte.gz has MD5 bb300cfdad3c16e7a12a480ee83cd310' \
        in str(info.value)


def test_fashion_mnist_missing_is_one_line_naming_places_package_and_download(
        tmp_path, chainer_root):
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset('fashion-mnist', tmp_path / 'nowhere')
    msg = str(info.value)
    assert '\n' not in msg
    for part in (str(tmp_path / 'nowhere'), data.sources.DEBIAN_DIR, 'dataset-fashion-mnist',
                 'apt-get install', '--download', '--data-dir',
                 os.path.dirname(data.fashion_mnist_cache_paths()[0][0]), '_dl_cache',
                 't10k-labels-idx1-ubyte'):
        assert part in msg, part
    # a folder with some of the files names those it lacks
    write_fashion(tmp_path / 'part', raw_fashion(), skip=('t10k-images-idx3-ubyte',))
    with pytest.raises(FileNotFoundError, match=r'lacks t10k-images-idx3-ubyte\)'):
        data.load_dataset('fashion-mnist', tmp_path / 'part')
    write_fashion(data.sources.DEBIAN_DIR, raw_fashion(), skip=('train-labels-idx1-ubyte',))
    with pytest.raises(FileNotFoundError, match='dataset-fashion-mnist, which lacks train-labels'):
        data.load_dataset('fashion-mnist')
    assert not chainer_root.exists()
    # the CLI turns it into one `error:` line
    from experiments import cli

    @cli.entry_point
    def main(argv=None):
        data.load_dataset('fashion-mnist')
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert str(exit_info.value).startswith('error: Fashion-MNIST not found')
    assert '\n' not in str(exit_info.value)


def test_fashion_mnist_download_through_chainer(tmp_path, chainer_root, monkeypatch):
    def offline(url):
        raise OSError('network is unreachable')
    monkeypatch.setattr(chainer.dataset.download, 'cached_download', offline)
    with pytest.raises(FileNotFoundError, match='network is unreachable') as info:
        data.load_dataset('fashion-mnist', allow_download=True)
    assert 'and its download from %s failed' % data.FMNIST_URL in str(info.value)
    assert 'pass --download' not in str(info.value)
    raw = raw_fashion()
    dl = data.fashion_mnist_cache_paths()[1]
    arrays = dict(zip([n for names in data.FMNIST_FILES.values() for n in names], raw))

    def fake_download(url):         # what Chainer's downloader leaves behind
        name = url[len(data.FMNIST_URL):-len('.gz')]
        os.makedirs(os.path.dirname(dl[name]), exist_ok=True)
        pathlib.Path(dl[name]).write_bytes(gzip.compress(idx_bytes(arrays[name]), mtime=0))
        return dl[name]
    monkeypatch.setattr(chainer.dataset.download, 'cached_download', fake_download)
    with pytest.raises(data.CorruptDataError, match='published train-images-idx3-ubyte.gz '
                       'has MD5 8d4fb7e6c68d591d4c3dfef9ec88bf0d'):
        data.load_dataset('fashion-mnist', allow_download=True)
    for name in arrays:
        publish(monkeypatch, name + '.gz', dl[name])
        os.remove(dl[name])
    ds = data.load_dataset('fashion-mnist', allow_download=True)
    check_fashion(ds, raw)
    assert 'downloaded from %s' % data.FMNIST_URL in ds.source


@pytest.mark.parametrize('damage', ['truncated_gz', 'truncated_body', 'bad_magic',
                                    'wrong_shape', 'label_count', 'label_range'])
def test_damaged_fashion_mnist_file_is_named(tmp_path, chainer_root, damage):
    raw = list(raw_fashion())
    if damage == 'wrong_shape':
        raw[2] = numpy.zeros((8, 27, 28), numpy.uint8)
    if damage == 'label_count':
        raw[3] = raw[3][:-1]
    if damage == 'label_range':
        raw[1] = raw[1].copy()
        raw[1][3] = 10
    paths = write_fashion(tmp_path / 'fm', raw)
    bad = {'wrong_shape': 't10k-images-idx3-ubyte', 'label_count': 't10k-labels-idx1-ubyte',
           'label_range': 'train-labels-idx1-ubyte'}.get(damage, 'train-images-idx3-ubyte')
    path = paths[bad]
    if damage == 'truncated_gz':
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    elif damage == 'truncated_body':
        path.write_bytes(gzip.compress(idx_bytes(raw[0])[:-100]))
    elif damage == 'bad_magic':
        path.write_bytes(gzip.compress(b'\x00\x00\x0d\x03' + idx_bytes(raw[0])[4:]))
    with pytest.raises(data.CorruptDataError) as info:
        data.load_dataset('fashion-mnist', tmp_path / 'fm')
    assert str(path) in str(info.value)
    # the damaged file is not passed over for other data (the Debian copy here)
    write_fashion(data.sources.DEBIAN_DIR, raw_fashion(seed=1))
    with pytest.raises(data.CorruptDataError):
        data.load_dataset('fashion-mnist', tmp_path / 'fm')


def test_read_idx_plain_and_gzipped(tmp_path):
    arr = numpy.arange(24, dtype=numpy.uint8).reshape(2, 3, 4)
    (tmp_path / 'a').write_bytes(idx_bytes(arr))
    (tmp_path / 'b').write_bytes(gzip.compress(idx_bytes(arr)))
    for f in ('a', 'b'):
        numpy.testing.assert_array_equal(data.read_idx(str(tmp_path / f)), arr)
    (tmp_path / 'c').write_bytes(b'')
    with pytest.raises(data.CorruptDataError, match=str(tmp_path / 'c')):
        data.read_idx(str(tmp_path / 'c'))


def test_fashion_mnist_subset_keeps_full_statistics(tmp_path, chainer_root):
    raw = raw_fashion(40, 20)
    write_fashion(tmp_path, raw)
    full = data.load_dataset('fashion-mnist', tmp_path)
    sub = data.load_dataset('fashion-mnist', tmp_path, subset=[10, 5], seed=3)
    assert (sub.n_train, sub.n_test) == (10, 5)
    numpy.testing.assert_array_equal(sub.mean, full.mean)
    assert 'subset' in sub.source and "not the paper's data" in sub.source
    with pytest.raises(data.DataError, match='only 40'):
        data.load_dataset('fashion-mnist', tmp_path, subset=[41, 5])


def test_crops_pad_with_the_fill_value():
    """Padding with ``fill`` (the normalised background) equals padding the raw image
    with its background, then normalising."""
    rs = numpy.random.RandomState(0)
    raw = rs.randint(0, 256, (16, 1, 32, 32)).astype(numpy.float32)
    mean, std = numpy.float32(90.0), numpy.float32(70.0)
    x = (raw - mean) / std
    fill = numpy.array([-mean / std], numpy.float32)
    out = data.random_crop_flip(x, numpy.random.RandomState(4), pad=2, fill=fill)
    oy, ox, flip = data.draw_crop_flip(numpy.random.RandomState(4), 16, 2)
    expected = (_crop_flip_loop(raw, oy, ox, flip, 2) - mean) / std   # raw zeros padded
    numpy.testing.assert_allclose(out, expected, atol=1e-5)
    assert (oy != 2).any() and numpy.isclose(out.min(), fill[0])
    # without fill, the pad is the normalised mean (0), as for CIFAR
    plain = data.random_crop_flip(x, numpy.random.RandomState(4), pad=2)
    numpy.testing.assert_allclose(plain, _crop_flip_loop(x, oy, ox, flip, 2), atol=1e-6)
    with pytest.raises(ValueError, match='1 values for 3 channels'):
        data.random_crop_flip(numpy.zeros((2, 3, 8, 8), numpy.float32),
                              numpy.random.RandomState(0), fill=fill)
