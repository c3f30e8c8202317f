"""The datasets' names and channels, and :class:`Dataset`, what loading returns."""
import dataclasses

import numpy

DATASETS = ('cifar10', 'cifar100', 'fashion-mnist', 'synthetic')

#: Channels of each dataset's images (the models' input).
CHANNELS = {'cifar10': 3, 'cifar100': 3, 'fashion-mnist': 1, 'synthetic': 3}
#: What random crops pad with: 'mean' (0 after normalisation, as for CIFAR) or
#: 'background' (raw pixel 0: Fashion-MNIST's black background).
CROP_FILL = {'cifar10': 'mean', 'cifar100': 'mean', 'fashion-mnist': 'background',
             'synthetic': 'mean'}


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


def check_seed(seed):
    """``seed`` as an int in [0, 2**32) (what NumPy's RandomState takes), else ValueError."""
    if not isinstance(seed, (int, numpy.integer)) or not 0 <= seed < 2 ** 32:
        raise ValueError('seed must be an int in [0, 2**32), got %r' % (seed,))
    return int(seed)
