""":func:`load_dataset`: find a dataset's files (or generate the synthetic set), check the
labels, take the training-set statistics, draw a subset, normalise."""
import numpy

from experiments.data import sources
from experiments.data.dataset import Dataset, canonical_name, check_seed
from experiments.data.errors import CorruptDataError, DataError
from experiments.data.normalization import channel_stats, normalize
from experiments.data.synthetic import SYNTHETIC_SIZE, SYNTHETIC_SOURCE, synthetic_uint8

FMNIST_PAD = 2      # zeros on each side: 28 x 28 -> 32 x 32, the paper's input size


def load_dataset(name, data_dir=None, *, subset=None, seed=0, allow_download=False):
    """Load ``name`` (one of :data:`~experiments.data.DATASETS`) normalised with
    training-set statistics.

    ``subset``: an int n or a pair (n_train, n_test) (None = all): the first n of each split
    after a shuffle seeded by ``seed``; statistics still come from the full training set.
    For ``'synthetic'`` it sets the generated sizes (default :data:`SYNTHETIC_SIZE`) and
    ``seed`` the samples.  Where the files are looked for: :mod:`experiments.data.sources`.
    """
    name = canonical_name(name)
    n_sub = _parse_subset(subset)
    if name == 'synthetic':
        sizes = tuple(d if n is None else n for n, d in zip(n_sub, SYNTHETIC_SIZE))
        (train_x, train_y), (test_x, test_y) = synthetic_uint8(sizes[0], sizes[1], seed)
        source, n_classes = SYNTHETIC_SOURCE, 10
        n_sub = (None, None)
    else:
        (train_x, train_y), (test_x, test_y), source, n_classes = sources.find(
            name, data_dir, allow_download)
        if name == 'fashion-mnist':
            train_x, test_x = _pad_fashion(train_x), _pad_fashion(test_x)
            source = "Fashion-MNIST (not the paper's data) from %s" % source
        for y, split in ((train_y, 'train'), (test_y, 'test')):
            if y.size and (y.min() < 0 or y.max() >= n_classes):
                raise CorruptDataError('%s: %s labels outside [0, %d)' % (source, split,
                                                                          n_classes))
    mean, std = channel_stats(train_x)
    if n_sub != (None, None):
        rs = numpy.random.RandomState(check_seed(seed))
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


def _pad_fashion(x):
    """(N, 1, 28, 28) -> (N, 1, 32, 32), padded with zeros (the black background), so the
    paper's CIFAR architectures keep their geometry."""
    pad = ((0, 0), (0, 0), (FMNIST_PAD, FMNIST_PAD), (FMNIST_PAD, FMNIST_PAD))
    return numpy.pad(x, pad)


def _parse_subset(subset):
    if subset is None:
        return None, None
    pair = (subset, subset) if isinstance(subset, (int, numpy.integer)) else tuple(subset)
    if len(pair) != 2 or not all(
            n is None or (isinstance(n, (int, numpy.integer)) and n > 0) for n in pair):
        raise ValueError('subset must be a positive int or a pair (n_train, n_test) of '
                         'positive ints or None, got %r' % (subset,))
    return tuple(None if n is None else int(n) for n in pair)
