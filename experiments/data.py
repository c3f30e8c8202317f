"""CIFAR-10/100, Fashion-MNIST (and a synthetic stand-in) for the experiments,
preprocessed as paper Sec. 4.1.

Preprocessing: pixels are scaled to [0, 1], then every channel is standardised with the
mean and standard deviation of the *full training set* (computed before any subset is
taken), applied to train and test alike.  Training augmentation is random cropping from a
padded image and horizontal flipping (:func:`random_crop_flip`), applied per batch.

Fashion-MNIST (not a dataset of the paper: 60,000 training / 10,000 test greyscale
28x28 images, 10 classes) is padded with zeros, its background, to 1 x 32 x 32, so the
paper's CIFAR architectures keep their geometry; its crops are padded with the
background too (:attr:`Dataset.crop_fill`), not with the normalised mean.  Its IDX files
(gzipped or not) are looked for in ``data_dir``, then :data:`DEBIAN_DIR` (the Debian
package ``dataset-fashion-mnist``), then Chainer's cache (the npz files
``chainer.datasets.get_fashion_mnist`` writes, ``<root>/pfnet/chainer/fashion-mnist/
train.npz`` / ``test.npz``, or the IDX files it downloaded into ``<root>/_dl_cache/``),
and only with ``allow_download=True`` downloaded through Chainer.

Where CIFAR comes from (:func:`load_dataset`), in this order:

1. ``data_dir``, if given: the extracted python batches (``cifar-10-batches-py/`` or
   ``cifar-100-python/``), the official archive (``cifar-10-python.tar.gz`` /
   ``cifar-100-python.tar.gz``, read in place), or ``data_dir`` being that folder or archive;
2. Chainer's dataset cache: the npz that ``chainer.datasets.get_cifar10/100`` writes,
   ``<root>/pfnet/chainer/cifar/cifar-10.npz`` (``cifar-100.npz``) with ``root`` =
   ``chainer.dataset.get_dataset_root()`` (``$CHAINER_DATASET_ROOT``, default
   ``~/.chainer/dataset``), keys ``train_x``/``test_x`` uint8 (N, 3072) and ``train_y``/
   ``test_y`` uint8 (N,); failing that, the archive Chainer downloaded before building the
   npz, ``<root>/_dl_cache/<md5 of the URL>``;
3. only with ``allow_download=True``: ``chainer.datasets.get_cifar10/100`` (downloads).

Nothing found raises :class:`FileNotFoundError` listing every path looked at; unreadable
files raise :class:`CorruptDataError` naming the file; data that cannot serve the run
(a subset larger than the set) :class:`DataError`.  There is never a fallback to other
data: ``'synthetic'`` is used only when asked for by name.  The python batches are pickles
(as in the official archives): only load files you trust.
"""
import dataclasses
import gzip
import hashlib
import os
import pickle
import tarfile
import warnings
import zipfile
import zlib

import numpy

import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)
import chainer  # noqa: E402
import chainer.dataset.download  # noqa: E402

DATASETS = ('cifar10', 'cifar100', 'fashion-mnist', 'synthetic')
SYNTHETIC_SOURCE = 'synthetic (generated, not CIFAR)'
SYNTHETIC_SIZE = (512, 256)  # default (n_train, n_test) of the synthetic set

_CIFAR = {
    # name: (chainer's name, extracted folder, train members, test member, label key, classes)
    'cifar10': ('cifar-10', 'cifar-10-batches-py',
                tuple('data_batch_%d' % i for i in range(1, 6)), 'test_batch', b'labels', 10),
    'cifar100': ('cifar-100', 'cifar-100-python', ('train',), 'test', b'fine_labels', 100),
}
URLS = {name: 'https://www.cs.toronto.edu/~kriz/%s-python.tar.gz' % spec[0]
        for name, spec in _CIFAR.items()}

#: Where the Debian package ``dataset-fashion-mnist`` installs the four IDX files.
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
DEBIAN_PACKAGE = 'dataset-fashion-mnist'
#: The official file names, (images, labels) per split (each also read as ``<name>.gz``).
FMNIST_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
                'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
FMNIST_URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
FMNIST_SIZE = 28
FMNIST_PAD = 2      # zeros on each side: 28 x 28 -> 32 x 32, the paper's input size

#: Channels of each dataset's images (the models' input).
CHANNELS = {'cifar10': 3, 'cifar100': 3, 'fashion-mnist': 1, 'synthetic': 3}
#: What random crops pad with: 'mean' (0 after normalisation, as for CIFAR) or
#: 'background' (raw pixel 0: Fashion-MNIST's black background).
CROP_FILL = {'cifar10': 'mean', 'cifar100': 'mean', 'fashion-mnist': 'background',
             'synthetic': 'mean'}


class DataError(ValueError):
    """The data cannot serve the run asked for (the message says why)."""


class CorruptDataError(DataError):
    """A data file exists but cannot be read (truncated, corrupted or wrong format)."""


@dataclasses.dataclass(repr=False, eq=False)
class Dataset:
    """Normalised images (N, C, 32, 32) float32, labels (N,) int32, and their provenance."""

    name: str
    train_x: numpy.ndarray
    train_y: numpy.ndarray
    test_x: numpy.ndarray
    test_y: numpy.ndarray
    n_classes: int
    source: str
    mean: numpy.ndarray  # (C,) training-set channel mean of the [0, 1]-scaled pixels
    std: numpy.ndarray   # (C,) training-set channel std (population) of the same
    background: numpy.ndarray = None  # (C,) a raw 0 pixel after normalisation

    @property
    def n_train(self):
        return len(self.train_y)

    @property
    def channels(self):
        return self.train_x.shape[1]

    @property
    def crop_fill(self):
        """(C,) value random crops pad with, or None for 0 (the normalised mean)."""
        if CROP_FILL[self.name] != 'background':
            return None
        if self.background is not None:
            return self.background
        return (-self.mean / self.std).astype(numpy.float32)

    @property
    def n_test(self):
        return len(self.test_y)

    def info(self):
        """JSON-able summary (no arrays) for run records."""
        return {'name': self.name, 'source': self.source, 'n_train': self.n_train,
                'n_test': self.n_test, 'n_classes': self.n_classes,
                'channels': self.channels, 'crop_fill': CROP_FILL[self.name],
                'mean': [float(v) for v in self.mean], 'std': [float(v) for v in self.std]}

    def __repr__(self):
        return 'Dataset(%s)' % ', '.join('%s=%r' % kv for kv in self.info().items())


# --------------------------------------------------------------------------- loading

def canonical_name(name):
    """'CIFAR-10', 'cifar_10', 'cifar10' -> 'cifar10'; 'Fashion_MNIST', 'fmnist' ->
    'fashion-mnist'; unknown names raise ValueError."""
    key = str(name).lower().replace('-', '').replace('_', '')
    key = {'fashionmnist': 'fashion-mnist', 'fmnist': 'fashion-mnist'}.get(key, key)
    if key not in DATASETS:
        raise ValueError('unknown dataset %r; choose one of %s' % (name, ', '.join(DATASETS)))
    return key


def channels_of(name):
    """The image channels of dataset ``name`` (the classifiers' input channels)."""
    return CHANNELS[canonical_name(name)]


def chainer_cache_paths(name):
    """(npz, downloaded archive) paths where Chainer caches CIFAR ``name``; may not exist."""
    root = chainer.dataset.get_dataset_root()
    npz = os.path.join(root, 'pfnet', 'chainer', 'cifar', '%s.npz' % _CIFAR[name][0])
    url_hash = hashlib.md5(URLS[name].encode('utf-8')).hexdigest()
    return npz, os.path.join(root, '_dl_cache', url_hash)


def load_dataset(name, data_dir=None, *, subset=None, seed=0, allow_download=False):
    """Load ``name`` (one of :data:`DATASETS`) normalised with training-set statistics.

    ``subset``: an int n or a pair (n_train, n_test) (None = all): the first n of each split
    after a shuffle seeded by ``seed``; statistics still come from the full training set.
    For ``'synthetic'`` it sets the generated sizes (default :data:`SYNTHETIC_SIZE`) and
    ``seed`` the samples.  See the module docstring for where CIFAR is looked for.
    """
    name = canonical_name(name)
    n_sub = _parse_subset(subset)
    if name == 'synthetic':
        sizes = tuple(d if n is None else n for n, d in zip(n_sub, SYNTHETIC_SIZE))
        (train_x, train_y), (test_x, test_y) = synthetic_uint8(sizes[0], sizes[1], seed)
        source, n_classes = SYNTHETIC_SOURCE, 10
        n_sub = (None, None)
    else:
        find = _find_fashion_mnist if name == 'fashion-mnist' else _find_cifar
        (train_x, train_y), (test_x, test_y), source = find(name, data_dir, allow_download)
        n_classes = 10 if name == 'fashion-mnist' else _CIFAR[name][5]
        for y, split in ((train_y, 'train'), (test_y, 'test')):
            if y.size and (y.min() < 0 or y.max() >= n_classes):
                raise CorruptDataError('%s: %s labels outside [0, %d)' % (source, split,
                                                                          n_classes))
    mean, std = channel_stats(train_x)
    if n_sub != (None, None):
        rs = numpy.random.RandomState(_check_seed(seed))
        picks = []
        for n, y, split in ((n_sub[0], train_y, 'train'), (n_sub[1], test_y, 'test')):
            if n is not None and n > len(y):
                raise DataError('data.subset asks for %d %s images but %s has only %d'
                                % (n, split, source, len(y)))
            picks.append(rs.permutation(len(y))[:n])
        train_x, train_y = train_x[picks[0]], train_y[picks[0]]
        test_x, test_y = test_x[picks[1]], test_y[picks[1]]
        source += ' [subset: first %d train / %d test after a shuffle with seed %d]' % (
            len(train_y), len(test_y), seed)
    return Dataset(name=name, train_x=normalize(train_x, mean, std),
                   train_y=numpy.asarray(train_y, numpy.int32),
                   test_x=normalize(test_x, mean, std),
                   test_y=numpy.asarray(test_y, numpy.int32), n_classes=n_classes,
                   source=source, mean=mean.astype(numpy.float32),
                   std=std.astype(numpy.float32),
                   background=normalize(numpy.zeros((1, len(mean), 1, 1), numpy.uint8),
                                        mean, std).reshape(-1))


def channel_stats(x):
    """Per-channel mean and population std of uint8 images (N, C, H, W) scaled to [0, 1].

    Exact (from a 256-bin histogram per channel, float64), without a float copy of ``x``.
    """
    levels = numpy.arange(256) / 255.0
    mean, std = numpy.empty(x.shape[1]), numpy.empty(x.shape[1])
    for c in range(x.shape[1]):
        hist = numpy.bincount(x[:, c].reshape(-1), minlength=256)
        if hist.sum() == 0:
            raise DataError('no training images to compute statistics from')
        p = hist / hist.sum()
        mean[c] = p @ levels
        std[c] = numpy.sqrt(p @ (levels - mean[c]) ** 2)
    if (std == 0).any():
        raise DataError('a channel is constant over the training set: cannot normalise')
    return mean, std


def normalize(x, mean, std):
    """uint8 images (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel."""
    out = numpy.empty(x.shape, numpy.float32)
    for c in range(x.shape[1]):
        lut = ((numpy.arange(256) / 255.0 - mean[c]) / std[c]).astype(numpy.float32)
        out[:, c] = lut[x[:, c]]
    return out


def _parse_subset(subset):
    if subset is None:
        return None, None
    pair = (subset, subset) if isinstance(subset, (int, numpy.integer)) else tuple(subset)
    if len(pair) != 2 or not all(
            n is None or (isinstance(n, (int, numpy.integer)) and n > 0) for n in pair):
        raise ValueError('subset must be a positive int or a pair (n_train, n_test) of '
                         'positive ints or None, got %r' % (subset,))
    return tuple(None if n is None else int(n) for n in pair)


def _check_seed(seed):
    if not isinstance(seed, (int, numpy.integer)) or not 0 <= seed < 2 ** 32:
        raise ValueError('seed must be an int in [0, 2**32), got %r' % (seed,))
    return int(seed)


def _find_cifar(name, data_dir, allow_download):
    """((train_x, train_y), (test_x, test_y), source) as uint8 images (N, 3, 32, 32)."""
    chainer_name, folder, train_members, test_member, _, _ = _CIFAR[name]
    archive = '%s-python.tar.gz' % chainer_name
    looked = []
    if data_dir is not None:
        data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
        candidates = [('dir', os.path.join(data_dir, folder)),
                      ('tar', os.path.join(data_dir, archive))]
        if os.path.isfile(data_dir):
            candidates.append(('tar', data_dir))
        elif _looks_like_batches_dir(name, data_dir):
            candidates.append(('dir', data_dir))
        for kind, path in candidates:
            found = os.path.isdir(path) if kind == 'dir' else os.path.isfile(path)
            if found:
                return _read_dir(name, path) if kind == 'dir' else _read_tar(name, path)
            looked.append(path + ('/' if kind == 'dir' else ''))
        if not os.path.exists(data_dir):
            looked.append(data_dir + ' (data_dir does not exist)')
    npz, dl_archive = chainer_cache_paths(name)
    for path, reader, label in ((npz, _read_chainer_npz, "Chainer's dataset cache"),
                                (dl_archive, _read_tar, "Chainer's download cache of "
                                 + URLS[name])):
        if os.path.isfile(path):
            if data_dir is not None:
                warnings.warn('no %s data in --data-dir %s; using %s %s'
                              % (name, data_dir, label, path))
            return reader(name, path)
        looked.append('%s (%s)' % (path, label))
    error = None
    if allow_download:
        try:
            return _download(name)
        except Exception as e:  # network, disk, anything: report it, never fall back
            error = '%s: %s' % (type(e).__name__, e)
    raise FileNotFoundError(_not_found_message(name, looked, allow_download, error))


def _not_found_message(name, looked, allow_download, error):
    chainer_name, folder = _CIFAR[name][:2]
    how = ('download %s (on any machine with network), then pass --data-dir DIR (with '
           'make: `make reproduce DATA_DIR=DIR`), where DIR holds %s-python.tar.gz or its '
           'extracted folder %s/' % (URLS[name], chainer_name, folder))
    lines = ['%s not found%s; %s.' % (
        name.upper(), ' and its download failed' if allow_download else '', how)]
    lines.append('Looked in:')
    lines += ['  - ' + p for p in looked]
    if allow_download:
        lines.append('Download through chainer.datasets.get_%s failed: %s' % (name, error))
    else:
        lines.append('Not downloaded: pass --download to let Chainer fetch it (it caches it '
                     'under %s).' % chainer.dataset.get_dataset_root())
    lines.append('Without CIFAR: --dataset fashion-mnist (`make reproduce DATA=fashion-mnist`) '
                 'trains the same rows on real images (Fashion-MNIST, Debian package %s), '
                 'or --synthetic (`make reproduce DATA=synthetic`) on generated ones; both '
                 'are marked NOT COMPARABLE to the paper.' % DEBIAN_PACKAGE)
    return '\n'.join(lines)


def _looks_like_batches_dir(name, path):
    """``data_dir`` is itself the extracted folder (holds the test batch and the metadata)."""
    meta = 'batches.meta' if name == 'cifar10' else 'meta'
    return all(os.path.isfile(os.path.join(path, f)) for f in (_CIFAR[name][3], meta))


def _unpickle(fileobj, where):
    try:
        d = pickle.load(fileobj, encoding='bytes')
    except Exception as e:
        raise CorruptDataError('%s: cannot unpickle (%s: %s); the file is truncated or '
                               'corrupted, provide it again' % (where, type(e).__name__, e))
    if not isinstance(d, dict):
        raise CorruptDataError('%s: expected a dict, found %s' % (where, type(d).__name__))
    return {k.decode('latin-1') if isinstance(k, bytes) else k: v for k, v in d.items()}


def _batch_arrays(name, d, where):
    """Images (N, 3, 32, 32) uint8 and labels (N,) of one unpickled batch dict."""
    label_key = _CIFAR[name][4].decode()
    if 'data' not in d or label_key not in d:
        raise CorruptDataError('%s: missing %r or %r (keys: %s)'
                               % (where, 'data', label_key, sorted(d)))
    x = numpy.asarray(d['data'])
    y = numpy.asarray(d[label_key])
    if x.dtype != numpy.uint8 or x.ndim != 2 or x.shape[1] != 3072 or y.shape != x.shape[:1]:
        raise CorruptDataError('%s: expected uint8 data (N, 3072) and N labels, found %s %s '
                               'and %s labels' % (where, x.dtype, x.shape, y.shape))
    return x.reshape(-1, 3, 32, 32), y.astype(numpy.int64)


def _join(batches):
    xs, ys = zip(*batches)
    return numpy.concatenate(xs), numpy.concatenate(ys)


def _read_dir(name, path):
    train_members, test_member = _CIFAR[name][2:4]
    splits = []
    for members in (train_members, (test_member,)):
        batches = []
        for member in members:
            f = os.path.join(path, member)
            if not os.path.isfile(f):
                raise FileNotFoundError('%s: incomplete %s folder, missing %s'
                                        % (path, name, f))
            with open(f, 'rb') as fileobj:
                batches.append(_batch_arrays(name, _unpickle(fileobj, f), f))
        splits.append(_join(batches))
    return splits[0], splits[1], path


def _read_tar(name, path):
    """Read the batches straight out of the .tar.gz, in stream order, without extracting."""
    folder, train_members, test_member = _CIFAR[name][1:4]
    wanted = {'%s/%s' % (folder, m): m for m in train_members + (test_member,)}
    found = {}
    try:
        with tarfile.open(path, 'r:*') as tar:
            for info in tar:
                member = info.name[2:] if info.name.startswith('./') else info.name
                if member in wanted and info.isfile():
                    where = '%s (member %s)' % (path, member)
                    found[wanted[member]] = _batch_arrays(
                        name, _unpickle(tar.extractfile(info), where), where)
    except CorruptDataError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise CorruptDataError('%s: cannot read the archive (%s: %s); it is truncated or '
                               'corrupted, download it again' % (path, type(e).__name__, e))
    missing = sorted(m for m in wanted if wanted[m] not in found)
    if missing:
        raise CorruptDataError('%s: archive lacks %s (not the %s python archive?)'
                               % (path, ', '.join(missing), name))
    return (_join([found[m] for m in train_members]), _join([found[test_member]]),
            path)


def _read_chainer_npz(name, path):
    try:
        with numpy.load(path) as z:
            arrays = {k: z[k] for k in ('train_x', 'train_y', 'test_x', 'test_y')}
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, zlib.error) as e:
        raise CorruptDataError("%s: cannot read Chainer's cached %s npz (%s: %s); delete it "
                               'and provide the data again' % (path, name, type(e).__name__, e))
    splits = []
    for split in ('train', 'test'):
        x, y = arrays[split + '_x'], arrays[split + '_y']
        if x.dtype != numpy.uint8 or x.size != len(y) * 3072:
            raise CorruptDataError('%s: %s_x is %s %s for %d labels, expected uint8 (N, 3072)'
                                   % (path, split, x.dtype, x.shape, len(y)))
        splits.append((x.reshape(-1, 3, 32, 32), y.astype(numpy.int64)))
    return splits[0], splits[1], path


def _download(name):
    """Download through Chainer (which writes its npz cache), then read that npz."""
    get = chainer.datasets.get_cifar10 if name == 'cifar10' else chainer.datasets.get_cifar100
    train, test = get(withlabel=True, ndim=3, scale=1.0)
    npz = chainer_cache_paths(name)[0]
    if os.path.isfile(npz):
        (tr, te, path) = _read_chainer_npz(name, npz)
        return tr, te, path + ' (downloaded by chainer.datasets.get_%s)' % name
    splits = []
    for ds in (train, test):
        x, y = ds._datasets
        splits.append((numpy.rint(numpy.asarray(x) * 255).astype(numpy.uint8),
                       numpy.asarray(y, numpy.int64)))
    return splits[0], splits[1], 'chainer.datasets.get_%s (downloaded)' % name


# ---------------------------------------------------------------------- Fashion-MNIST

_IDX_DTYPES = {0x08: numpy.uint8}


def read_idx(path):
    """The array in an IDX file (``path`` gzipped or not): uint8 data only, as the
    (Fashion-)MNIST files are.  Anything else, or a short file, raises
    :class:`CorruptDataError` naming ``path``."""
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
        opener = gzip.open if head == b'\x1f\x8b' else open
        with opener(path, 'rb') as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise CorruptDataError('%s: cannot read (%s: %s); the file is truncated or '
                               'corrupted, provide it again' % (path, type(e).__name__, e))
    if len(raw) < 4 or raw[:2] != b'\x00\x00' or raw[2] not in _IDX_DTYPES:
        raise CorruptDataError('%s: not an IDX file of unsigned bytes (header %s)'
                               % (path, raw[:4].hex() or 'empty'))
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise CorruptDataError('%s: IDX header truncated or with %d dimensions'
                               % (path, ndim))
    shape = tuple(int(d) for d in numpy.frombuffer(raw, '>u4', ndim, 4))
    size = int(numpy.prod(shape, dtype=numpy.int64))
    body = len(raw) - 4 - 4 * ndim
    if body != size:
        raise CorruptDataError('%s: IDX header says %s (%d bytes) but the file holds %d; '
                               'it is truncated or corrupted, provide it again'
                               % (path, 'x'.join(map(str, shape)), size, body))
    return numpy.frombuffer(raw, numpy.uint8, size, 4 + 4 * ndim).reshape(shape)


def _idx_file(folder, name):
    """``folder/name`` or ``folder/name.gz``, whichever exists (None if neither)."""
    for f in (name, name + '.gz'):
        path = os.path.join(folder, f)
        if os.path.isfile(path):
            return path
    return None


def _split_arrays(images, labels, where):
    """Images (N, 28, 28) and labels (N,) of one split checked, as (N, 1, 28, 28)."""
    if images.ndim != 3 or images.shape[1:] != (FMNIST_SIZE, FMNIST_SIZE):
        raise CorruptDataError('%s: expected 28x28 images, found shape %s'
                               % (where[0], images.shape))
    if labels.ndim != 1 or len(labels) != len(images):
        raise CorruptDataError('%s: %s labels for %d images in %s'
                               % (where[1], labels.shape, len(images), where[0]))
    if labels.size and labels.max() >= 10:
        raise CorruptDataError('%s: labels outside [0, 10)' % where[1])
    return images[:, None], labels.astype(numpy.int64)


def _missing_idx(folder):
    """The official IDX files (gzipped or not) that ``folder`` lacks."""
    return [n for names in FMNIST_FILES.values() for n in names
            if _idx_file(folder, n) is None]


def _read_idx_dir(folder):
    """(train, test, source) from the four IDX files in ``folder``, or None if one of
    them is missing there (a missing folder or file is not an error here)."""
    paths = {split: [_idx_file(folder, n) for n in names]
             for split, names in FMNIST_FILES.items()}
    if not all(p for ps in paths.values() for p in ps):
        return None
    splits = [_split_arrays(read_idx(paths[s][0]), read_idx(paths[s][1]), paths[s])
              for s in ('train', 'test')]
    return splits[0], splits[1], folder


def fashion_mnist_cache_paths():
    """Chainer's npz cache (train, test) and its download cache of the four IDX files
    ({file name: path}); may not exist."""
    root = chainer.dataset.get_dataset_root()
    folder = os.path.join(root, 'pfnet', 'chainer', 'fashion-mnist')
    npz = tuple(os.path.join(folder, s + '.npz') for s in ('train', 'test'))
    dl = {n: os.path.join(root, '_dl_cache',
                          hashlib.md5((FMNIST_URL + n + '.gz').encode()).hexdigest())
          for names in FMNIST_FILES.values() for n in names}
    return npz, dl


def _read_fashion_npz(paths):
    splits = []
    for path in paths:
        try:
            with numpy.load(path) as z:
                x, y = z['x'], z['y']
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError,
                zlib.error) as e:
            raise CorruptDataError("%s: cannot read Chainer's cached Fashion-MNIST npz "
                                   '(%s: %s); delete it and provide the data again'
                                   % (path, type(e).__name__, e))
        if x.dtype != numpy.uint8 or x.size != len(y) * FMNIST_SIZE ** 2:
            raise CorruptDataError('%s: x is %s %s for %d labels, expected uint8 (N, 784)'
                                   % (path, x.dtype, x.shape, len(y)))
        splits.append(_split_arrays(x.reshape(-1, FMNIST_SIZE, FMNIST_SIZE),
                                    numpy.asarray(y).reshape(-1), (path, path)))
    return splits[0], splits[1], ' + '.join(paths)


def _read_dl_cache(dl):
    splits = []
    for split in ('train', 'test'):
        im, lb = (dl[n] for n in FMNIST_FILES[split])
        splits.append(_split_arrays(read_idx(im), read_idx(lb), (im, lb)))
    return splits[0], splits[1], "Chainer's download cache (%s)" % os.path.dirname(
        dl[FMNIST_FILES['train'][0]])


def _find_fashion_mnist(name, data_dir, allow_download):
    """((train_x, train_y), (test_x, test_y), source), images uint8 (N, 1, 32, 32)
    padded with zeros (the background) from 28 x 28."""
    found = _locate_fashion_mnist(data_dir, allow_download)
    pad = ((0, 0), (0, 0), (FMNIST_PAD, FMNIST_PAD), (FMNIST_PAD, FMNIST_PAD))
    (tr_x, tr_y), (te_x, te_y), source = found
    return ((numpy.pad(tr_x, pad), tr_y), (numpy.pad(te_x, pad), te_y),
            'Fashion-MNIST (not the paper\'s data) from %s' % source)


def _locate_fashion_mnist(data_dir, allow_download):
    looked = []
    if data_dir is not None:
        data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
        if not os.path.isdir(data_dir):
            looked.append(data_dir + ' (--data-dir: no such folder)')
        for folder in (data_dir, os.path.join(data_dir, 'fashion-mnist')):
            if not os.path.isdir(folder):
                continue
            got = _read_idx_dir(folder)
            if got:
                return got
            looked.append('%s/ (lacks %s)' % (folder, ', '.join(_missing_idx(folder))))
    npz, dl = fashion_mnist_cache_paths()
    for ok, read, where in (
            (lambda: os.path.isdir(DEBIAN_DIR), lambda: _read_idx_dir(DEBIAN_DIR),
             '%s/ (the Debian package %s)' % (DEBIAN_DIR, DEBIAN_PACKAGE)),
            (lambda: all(os.path.isfile(p) for p in npz), lambda: _read_fashion_npz(npz),
             "%s (Chainer's dataset cache)" % ' + '.join(npz)),
            (lambda: all(os.path.isfile(p) for p in dl.values()), lambda: _read_dl_cache(dl),
             "%s/ (Chainer's download cache of %s*.gz)"
             % (os.path.dirname(next(iter(dl.values()))), FMNIST_URL))):
        got = read() if ok() else None
        if got:
            if data_dir is not None:
                warnings.warn('no Fashion-MNIST IDX files in --data-dir %s; using %s'
                              % (data_dir, where))
            return got
        if where.startswith(DEBIAN_DIR) and os.path.isdir(DEBIAN_DIR):
            where = where[:-1] + ', which lacks %s)' % ', '.join(_missing_idx(DEBIAN_DIR))
        looked.append(where)
    error = None
    if allow_download:
        try:
            chainer.datasets.get_fashion_mnist(withlabel=True, ndim=3, scale=1.0)
            if all(os.path.isfile(p) for p in npz):
                (tr, te, src) = _read_fashion_npz(npz)
                return tr, te, src + ' (downloaded by chainer.datasets.get_fashion_mnist)'
            error = 'it wrote no npz files under %s' % os.path.dirname(npz[0])
        except CorruptDataError:
            raise
        except Exception as e:  # network, disk, anything: report it, never fall back
            error = '%s: %s' % (type(e).__name__, e)
    raise FileNotFoundError(
        'Fashion-MNIST not found (looked in: %s)%s; install the Debian package (as root: '
        'apt-get install -y %s, which puts the four IDX files under %s/), or pass '
        '--data-dir DIR where DIR holds %s (or their .gz), or %s' % (
            '; '.join(looked),
            '; the download through chainer.datasets.get_fashion_mnist failed: %s'
            % error if allow_download else '', DEBIAN_PACKAGE, DEBIAN_DIR,
            ', '.join(n for ns in FMNIST_FILES.values() for n in ns),
            'on a machine with network, --download (Chainer caches it under %s)'
            % chainer.dataset.get_dataset_root() if allow_download else
            '--download to let Chainer fetch it (it caches it under %s)'
            % chainer.dataset.get_dataset_root()))


# --------------------------------------------------------------------------- synthetic

_SYNTH_PROTOTYPE_SEED = 20180417  # fixes the 10 classes; ``seed`` only draws the samples


def synthetic_uint8(n_train, n_test, seed=0):
    """A learnable 10-class stand-in for CIFAR (uint8 (N, 3, 32, 32), labels): NOT CIFAR.

    Class k is a colour (fixed) plus a sinusoidal grating of a class-specific orientation and
    frequency; every sample draws a random phase, contrast, colour jitter and pixel noise.
    Deterministic given ``seed``; train and test are independent streams of one distribution.
    """
    proto = numpy.random.RandomState(_SYNTH_PROTOTYPE_SEED)
    colours = proto.uniform(0.2, 0.8, size=(10, 3))
    angles = numpy.arange(10) % 5 * numpy.pi / 5 + proto.uniform(0, 0.2, 10)
    freqs = numpy.where(numpy.arange(10) < 5, 2.5, 5.0)  # cycles per image
    yy, xx = numpy.mgrid[0:32, 0:32] / 32.0
    out = []
    for stream, n in enumerate((n_train, n_test)):
        rs = numpy.random.RandomState([_check_seed(seed), stream])
        y = rs.permutation(numpy.arange(n) % 10)
        phase = rs.uniform(0, 2 * numpy.pi, n)
        contrast = rs.uniform(0.1, 0.25, n)
        jitter = rs.normal(0, 0.08, (n, 3))
        x = numpy.empty((n, 3, 32, 32), numpy.uint8)
        for s in range(0, n, 2048):  # chunks bound the float temporaries
            k = y[s:s + 2048]
            arg = (xx * numpy.cos(angles[k])[:, None, None]
                   + yy * numpy.sin(angles[k])[:, None, None])
            grating = numpy.cos(2 * numpy.pi * freqs[k][:, None, None] * arg
                                + phase[s:s + 2048, None, None])
            img = ((colours[k] + jitter[s:s + 2048])[:, :, None, None]
                   + (contrast[s:s + 2048, None, None] * grating)[:, None]
                   + rs.normal(0, 0.1, (len(k), 3, 32, 32)))
            x[s:s + 2048] = numpy.rint(numpy.clip(img, 0, 1) * 255)
        out.append((x, y.astype(numpy.int64)))
    return out[0], out[1]


# --------------------------------------------------------------------------- augmentation

def draw_crop_flip(rng, batch_size, pad=4):
    """Host-side draws of :func:`random_crop_flip`: row offsets, column offsets in
    [0, 2 pad] and flip flags, each (batch_size,), in that order from ``rng``."""
    oy = rng.randint(0, 2 * pad + 1, size=batch_size)
    ox = rng.randint(0, 2 * pad + 1, size=batch_size)
    flip = rng.randint(0, 2, size=batch_size).astype(bool)
    return oy, ox, flip


def apply_crop_flip(x, oy, ox, flip, pad=4, fill=None):
    """Crop sample b of ``x`` padded by ``pad`` at (oy[b], ox[b]), then mirror it if
    flip[b].  The padding is zeros, or ``fill``, one value per channel.

    One gather on ``x``'s device (NumPy or CuPy); returns a new array of ``x``'s shape.
    The gather index is built on that device too, in int32 (int64 only past 2**31
    elements): only the 3 B draws travel from the host.
    """
    xp = chainer.backend.get_array_module(x)
    b, c, h, w = x.shape
    if fill is not None:
        fill = xp.asarray(fill, dtype=x.dtype).reshape(-1)
        if fill.shape[0] != c:
            raise ValueError('fill has %d values for %d channels' % (fill.shape[0], c))
    if pad:
        padded = xp.empty((b, c, h + 2 * pad, w + 2 * pad), x.dtype)
        padded[...] = 0 if fill is None else fill[None, :, None, None]
        padded[:, :, pad:pad + h, pad:pad + w] = x
        x = padded
    hp, wp = h + 2 * pad, w + 2 * pad
    it = numpy.int32 if b * c * hp * wp < 2 ** 31 else numpy.int64
    oy, ox = (xp.asarray(numpy.asarray(a, it)) for a in (oy, ox))
    flip = xp.asarray(numpy.asarray(flip, bool))
    ar_w = xp.arange(w, dtype=it)
    rows = oy[:, None] + xp.arange(h, dtype=it)                                 # (B, H)
    cols = ox[:, None] + xp.where(flip[:, None], ar_w[::-1], ar_w)              # (B, W)
    # flat index of out[b, c, i, j] in the contiguous padded array
    base = (xp.arange(b, dtype=it)[:, None] * c + xp.arange(c, dtype=it)) * (hp * wp)
    idx = (base[:, :, None, None] + (rows * wp)[:, None, :, None]
           + cols[:, None, None, :])
    return xp.take(xp.ascontiguousarray(x).reshape(-1), idx)


def random_crop_flip(x, rng, pad=4, flip=True, fill=None):
    """Training augmentation of a batch (B, C, H, W): random crop of the image padded by
    ``pad`` and a horizontal flip with p = 0.5.

    The padding is 0 (the mean after normalisation), or ``fill``, one value per channel
    (:attr:`Dataset.crop_fill`: the normalised background of Fashion-MNIST, so that a
    crop does not paint mean-grey bands onto a black background).  All randomness comes
    from ``rng`` (a ``numpy.random.RandomState``, serialisable), drawn on the host
    (:func:`draw_crop_flip`); the gather runs on ``x``'s device.
    """
    if x.ndim != 4:
        raise ValueError('expected a batch (B, C, H, W), got shape %s' % (x.shape,))
    if int(pad) != pad or pad < 0:
        raise ValueError('pad must be a non-negative int, got %r' % (pad,))
    oy, ox, flips = draw_crop_flip(rng, x.shape[0], int(pad))
    if not flip:
        flips[:] = False
    return apply_crop_flip(x, oy, ox, flips, int(pad), fill)


# --------------------------------------------------------------------------- iteration

class EpochOrderSampler(chainer.iterators.OrderSampler):
    """Order sampler whose next permutation is a pure function of ``seed`` and the order of
    the epoch that is ending: ``RandomState(SeedSequence([seed, crc32(order)]))``.

    ``SerialIterator`` serializes its current order, so an iterator restored from a snapshot
    draws exactly the epochs an uninterrupted run would, with no sampler state to save.
    The first order is drawn from ``arange(N)`` (what ``SerialIterator.reset`` passes), i.e.
    from ``seed`` and N alone.  (With tiny N the sequence of orders may cycle.)
    """

    def __init__(self, seed):
        self.seed = _check_seed(seed)

    def __call__(self, current_order, current_position=0):
        order = numpy.ascontiguousarray(current_order, dtype=numpy.int64)
        seq = numpy.random.SeedSequence([self.seed, zlib.crc32(order.tobytes())])
        return numpy.random.RandomState(numpy.random.MT19937(seq)).permutation(len(order))


def iterators(dataset, batch_size, seed, test_batch_size=None, shard=None):
    """(train_iter, test_iter): repeating, reproducibly shuffled train iterator
    (:class:`EpochOrderSampler`) and a single-pass, unshuffled test iterator.

    Batches are lists of (image, label) tuples (``chainer.dataset.concat_examples``);
    augmentation (:func:`random_crop_flip`) is left to the training step.  ``shard``
    (``shard(dataset, equal)``: :meth:`experiments.parallel.Parallel.shard`) cuts each
    set to this process's part.
    """
    train = chainer.datasets.TupleDataset(dataset.train_x, dataset.train_y)
    test = chainer.datasets.TupleDataset(dataset.test_x, dataset.test_y)
    if shard is not None:
        train, test = shard(train, equal=True), shard(test, equal=False)
    train_iter = chainer.iterators.SerialIterator(train, batch_size, repeat=True,
                                                  order_sampler=EpochOrderSampler(seed))
    test_iter = chainer.iterators.SerialIterator(test, test_batch_size or batch_size,
                                                 repeat=False, shuffle=False)
    return train_iter, test_iter
