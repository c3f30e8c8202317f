"""Batches for training and testing: a repeating train iterator whose epoch orders are
reproducible across a resume (:class:`EpochOrderSampler`) and a single-pass test iterator."""
import zlib

import numpy

import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)
import chainer  # noqa: E402

from experiments.data.dataset import check_seed  # noqa: E402


class EpochOrderSampler(chainer.iterators.OrderSampler):
    """Order sampler whose next permutation is a pure function of ``seed`` and the order of
    the epoch that is ending: ``RandomState(SeedSequence([seed, crc32(order)]))``.

    ``SerialIterator`` serializes its current order, so an iterator restored from a snapshot
    draws exactly the epochs an uninterrupted run would, with no sampler state to save.
    The first order is drawn from ``arange(N)`` (what ``SerialIterator.reset`` passes), i.e.
    from ``seed`` and N alone.  (With tiny N the sequence of orders may cycle.)
    """

    def __init__(self, seed):
        self.seed = check_seed(seed)

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
