"""CIFAR-10/100, Fashion-MNIST (and a synthetic stand-in) for the experiments,
preprocessed as paper Sec. 4.1.

One job per module:

* :mod:`~experiments.data.sources`: where each dataset may be, in order, and how it is
  downloaded (only with ``allow_download=True``), walked by the one locator,
  :mod:`~experiments.data.locator` (one "not found, looked in ..." line);
* :mod:`~experiments.data.parsers`: the published file formats (CIFAR python batches
  through an unpickler that builds only what those files hold, the CIFAR archives read in
  place, Chainer's npz caches, IDX files) and the published checksums' check;
* :mod:`~experiments.data.normalization`: pixels scaled to [0, 1], then every channel
  standardised with the mean and standard deviation of the *full training set* (computed
  before any subset is taken), applied to train and test alike;
* :mod:`~experiments.data.augment`: random cropping from a padded image and horizontal
  flipping (:func:`random_crop_flip`), applied per batch;
* :mod:`~experiments.data.iteration`: the train and test iterators, epoch orders that
  survive a resume;
* :mod:`~experiments.data.synthetic`: the generated stand-in;
* :mod:`~experiments.data.load`: :func:`load_dataset`, which puts them together into a
  :class:`Dataset` (:mod:`~experiments.data.dataset`).

Fashion-MNIST (not a dataset of the paper: 60,000 training / 10,000 test greyscale
28x28 images, 10 classes) is padded with zeros, its background, to 1 x 32 x 32, so the
paper's CIFAR architectures keep their geometry; its crops are padded with the
background too (:attr:`Dataset.crop_fill`), not with the normalised mean.

Nothing found raises :class:`FileNotFoundError` listing every place looked at; unreadable
files (truncated, not matching their published checksum, a pickle asking for anything but
the batches' types) raise :class:`CorruptDataError` naming the file; data that cannot serve
the run (a subset larger than the set) :class:`DataError`.  There is never a fallback to
other data: ``'synthetic'`` is used only when asked for by name.

The names below are this package's interface.  The places looked in are read from
:mod:`~experiments.data.sources` when a dataset is loaded (set ``sources.DEBIAN_DIR``
there, not here, to look elsewhere).
"""
from experiments.data import sources  # noqa: F401
from experiments.data.augment import apply_crop_flip, draw_crop_flip, random_crop_flip
from experiments.data.dataset import (CHANNELS, CROP_FILL, DATASETS, Dataset,
                                      canonical_name, channels_of)
from experiments.data.errors import CorruptDataError, DataError
from experiments.data.iteration import EpochOrderSampler, iterators
from experiments.data.load import FMNIST_PAD, load_dataset
from experiments.data.normalization import channel_stats, normalize
from experiments.data.parsers import FMNIST_SIZE, read_idx
from experiments.data.sources import (CHECKSUMS, DEBIAN_DIR, DEBIAN_PACKAGE, FMNIST_FILES,
                                      FMNIST_URL, URLS, chainer_cache_paths,
                                      fashion_mnist_cache_paths)
from experiments.data.synthetic import SYNTHETIC_SIZE, SYNTHETIC_SOURCE, synthetic_uint8

__all__ = [
    'DATASETS', 'CHANNELS', 'CROP_FILL', 'Dataset', 'canonical_name', 'channels_of',
    'DataError', 'CorruptDataError', 'load_dataset', 'channel_stats', 'normalize',
    'read_idx', 'chainer_cache_paths', 'fashion_mnist_cache_paths', 'URLS', 'CHECKSUMS',
    'DEBIAN_DIR', 'DEBIAN_PACKAGE', 'FMNIST_FILES', 'FMNIST_URL', 'FMNIST_SIZE',
    'FMNIST_PAD', 'SYNTHETIC_SOURCE', 'SYNTHETIC_SIZE', 'synthetic_uint8',
    'draw_crop_flip', 'apply_crop_flip', 'random_crop_flip', 'EpochOrderSampler',
    'iterators',
]
