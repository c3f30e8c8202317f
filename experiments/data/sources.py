"""Where each dataset may be, in order, as :class:`~experiments.data.locator.Source` s,
and how it is downloaded; :func:`find` walks them with the one locator.

CIFAR-10/100:

1. ``data_dir``, if given: the extracted python batches (``cifar-10-batches-py/`` or
   ``cifar-100-python/``), the official archive (``cifar-10-python.tar.gz`` /
   ``cifar-100-python.tar.gz``, read in place), or ``data_dir`` being that archive or
   folder;
2. Chainer's dataset cache: the npz that ``chainer.datasets.get_cifar10/100`` writes,
   ``<root>/pfnet/chainer/cifar/cifar-10.npz`` (``cifar-100.npz``) with ``root`` =
   ``chainer.dataset.get_dataset_root()`` (``$CHAINER_DATASET_ROOT``, default
   ``~/.chainer/dataset``), keys ``train_x``/``test_x`` uint8 (N, 3072) and ``train_y``/
   ``test_y`` (N,);
3. the archive Chainer's downloader keeps, ``<root>/_dl_cache/<md5 of the URL>``;
4. only with ``allow_download=True``: that archive, downloaded by
   ``chainer.dataset.download.cached_download``.

Fashion-MNIST (its four IDX files, gzipped or not): ``data_dir`` or ``data_dir/
fashion-mnist/``, then :data:`DEBIAN_DIR` (the Debian package ``dataset-fashion-mnist``),
then Chainer's cache (the npz files ``chainer.datasets.get_fashion_mnist`` writes,
``<root>/pfnet/chainer/fashion-mnist/train.npz`` / ``test.npz``, or the IDX files its
downloader keeps in ``<root>/_dl_cache/``), and only with ``allow_download=True`` those
IDX files downloaded.

Every archive or file that was downloaded (the official CIFAR archives wherever they are,
the IDX files in Chainer's download cache) is checked against its published MD5
(:data:`CHECKSUMS`) before it is read.
"""
import hashlib
import os

import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)
import chainer  # noqa: E402
import chainer.dataset.download  # noqa: E402

from experiments.data import parsers  # noqa: E402
from experiments.data.locator import Download, Source, locate  # noqa: E402

_LAYOUTS = {
    'cifar10': parsers.CifarLayout(
        'cifar10', 'cifar-10-batches-py', tuple('data_batch_%d' % i for i in range(1, 6)),
        'test_batch', 'batches.meta', 'labels'),
    'cifar100': parsers.CifarLayout(
        'cifar100', 'cifar-100-python', ('train',), 'test', 'meta', 'fine_labels'),
}
_CIFAR_TITLES = {'cifar10': ('CIFAR-10', 'cifar-10'), 'cifar100': ('CIFAR-100', 'cifar-100')}
N_CLASSES = {'cifar10': 10, 'cifar100': 100, 'fashion-mnist': 10}
ARCHIVES = {name: '%s-python.tar.gz' % t[1] for name, t in _CIFAR_TITLES.items()}
URLS = {name: 'https://www.cs.toronto.edu/~kriz/' + a for name, a in ARCHIVES.items()}

#: Where the Debian package ``dataset-fashion-mnist`` installs the four IDX files.
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
DEBIAN_PACKAGE = 'dataset-fashion-mnist'
#: The official file names, (images, labels) per split (each also read as ``<name>.gz``).
FMNIST_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
                'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
FMNIST_URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'

#: The published MD5 of each official file that is downloaded.
CHECKSUMS = {
    'cifar-10-python.tar.gz': 'c58f30108f718f92721af3b95e74349a',
    'cifar-100-python.tar.gz': 'eb9058c3a382ffc7106e4002c42a8d85',
    'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
    'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
    't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79',
    't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310',
}


def _dl_cache_path(url):
    """Where ``chainer.dataset.download.cached_download(url)`` keeps its file."""
    return os.path.join(chainer.dataset.get_dataset_root(), '_dl_cache',
                        hashlib.md5(url.encode('utf-8')).hexdigest())


def chainer_cache_paths(name):
    """(npz, downloaded archive) paths where Chainer caches CIFAR ``name``; may not exist."""
    npz = os.path.join(chainer.dataset.get_dataset_root(), 'pfnet', 'chainer', 'cifar',
                       '%s.npz' % _CIFAR_TITLES[name][1])
    return npz, _dl_cache_path(URLS[name])


def fashion_mnist_cache_paths():
    """Chainer's npz cache (train, test) and its download cache of the four IDX files
    ({file name: path}); may not exist."""
    folder = os.path.join(chainer.dataset.get_dataset_root(), 'pfnet', 'chainer',
                          'fashion-mnist')
    npz = tuple(os.path.join(folder, s + '.npz') for s in ('train', 'test'))
    dl = {n: _dl_cache_path(FMNIST_URL + n + '.gz')
          for names in FMNIST_FILES.values() for n in names}
    return npz, dl


# --------------------------------------------------------------------------- CIFAR

def _cifar_archive(name, path, label='', in_data_dir=False):
    """The official archive at ``path``: checked against its published MD5, then read."""
    layout, archive = _LAYOUTS[name], ARCHIVES[name]

    def read(path, files):
        parsers.check_md5(path, CHECKSUMS[archive], archive)
        return parsers.read_cifar_archive(layout, path)
    return Source(path, read, label, None, in_data_dir)


def cifar_sources(name, data_dir=None):
    """The places CIFAR ``name`` may be, in order (see the module docstring)."""
    layout = _LAYOUTS[name]

    def read_folder(path, files):
        return parsers.read_cifar_folder(layout, path)
    out = []
    if data_dir is not None:
        out += [Source(os.path.join(data_dir, layout.folder), read_folder, '', {},
                       in_data_dir=True),
                _cifar_archive(name, os.path.join(data_dir, ARCHIVES[name]),
                               in_data_dir=True)]
        if os.path.isfile(data_dir):
            out.append(_cifar_archive(name, data_dir, '--data-dir', in_data_dir=True))
        else:
            out.append(Source(data_dir, read_folder, '--data-dir as the extracted folder',
                              {f: (f,) for f in (layout.test, layout.meta)},
                              in_data_dir=True))
    npz, dl = chainer_cache_paths(name)
    out += [Source(npz, lambda path, files: parsers.read_cifar_npz(layout, path),
                   "Chainer's dataset cache"),
            _cifar_archive(name, dl, "Chainer's download cache of %s" % URLS[name])]
    return out


def cifar_download(name):
    """The official archive fetched into Chainer's download cache (checked when read)."""
    url = URLS[name]
    return Download(lambda: chainer.dataset.download.cached_download(url),
                    cifar_sources(name)[-1], url, chainer.dataset.get_dataset_root())


def _cifar_fix(name):
    layout = _LAYOUTS[name]
    return ('download %s (on any machine with network), then pass --data-dir DIR (with '
            'make: `make reproduce DATA_DIR=DIR`), where DIR holds %s or its extracted '
            'folder %s/' % (URLS[name], ARCHIVES[name], layout.folder))


WITHOUT_CIFAR = ('without CIFAR, --dataset fashion-mnist (`make reproduce '
                 'DATA=fashion-mnist`) trains the same rows on real images (Fashion-MNIST, '
                 'Debian package %s), or --synthetic (`make reproduce DATA=synthetic`) on '
                 'generated ones; both are marked NOT COMPARABLE to the paper'
                 % DEBIAN_PACKAGE)


# --------------------------------------------------------------------------- Fashion-MNIST

def _idx_members():
    return {n: (n, n + '.gz') for names in FMNIST_FILES.values() for n in names}


def _read_idx_files(path, files):
    return parsers.read_idx_splits({s: tuple(files[n] for n in FMNIST_FILES[s])
                                    for s in FMNIST_FILES})


def _read_downloaded_idx(path, files):
    for shown, f in files.items():
        parsers.check_md5(f, CHECKSUMS[shown], shown)
    return parsers.read_idx_splits({s: tuple(files[n + '.gz'] for n in FMNIST_FILES[s])
                                    for s in FMNIST_FILES})


def fashion_sources(data_dir=None):
    """The places Fashion-MNIST may be, in order (see the module docstring)."""
    out = []
    if data_dir is not None:
        out += [Source(data_dir, _read_idx_files, '--data-dir', _idx_members(),
                       in_data_dir=True),
                Source(os.path.join(data_dir, 'fashion-mnist'), _read_idx_files, '',
                       _idx_members(), in_data_dir=True)]
    npz, dl = fashion_mnist_cache_paths()
    out += [Source(DEBIAN_DIR, _read_idx_files, 'the Debian package %s' % DEBIAN_PACKAGE,
                   _idx_members()),
            Source(os.path.dirname(npz[0]),
                   lambda path, files: parsers.read_fashion_npz(
                       (files['train.npz'], files['test.npz'])),
                   "Chainer's dataset cache", {os.path.basename(p): (os.path.basename(p),)
                                               for p in npz}),
            Source(os.path.dirname(next(iter(dl.values()))), _read_downloaded_idx,
                   "Chainer's download cache of %s*.gz" % FMNIST_URL,
                   {n + '.gz': (os.path.basename(p),) for n, p in dl.items()})]
    return out


def fashion_download():
    """The four IDX files fetched into Chainer's download cache (checked when read)."""
    def fetch():
        for names in FMNIST_FILES.values():
            for n in names:
                chainer.dataset.download.cached_download(FMNIST_URL + n + '.gz')
    return Download(fetch, fashion_sources()[-1], FMNIST_URL,
                    chainer.dataset.get_dataset_root())


FASHION_FIX = ('install the Debian package (as root: apt-get install -y %s, which puts the '
               'four IDX files under %%s/), or pass --data-dir DIR where DIR holds %s (or '
               'their .gz)' % (DEBIAN_PACKAGE, ', '.join(n for ns in FMNIST_FILES.values()
                                                         for n in ns)))


# --------------------------------------------------------------------------- find

def find(name, data_dir=None, allow_download=False):
    """(train, test, where, n_classes) of ``name`` ('cifar10', 'cifar100' or
    'fashion-mnist'): uint8 images (N, C, H, W) as stored and int64 labels."""
    if data_dir is not None:
        data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
    if name == 'fashion-mnist':
        found = locate('Fashion-MNIST', fashion_sources(data_dir), data_dir=data_dir,
                       download=fashion_download(), allow_download=allow_download,
                       fix=FASHION_FIX % DEBIAN_DIR)
    else:
        found = locate(_CIFAR_TITLES[name][0], cifar_sources(name, data_dir),
                       data_dir=data_dir, download=cifar_download(name),
                       allow_download=allow_download, fix=_cifar_fix(name),
                       otherwise=WITHOUT_CIFAR)
    return found.train, found.test, found.where, N_CLASSES[name]
