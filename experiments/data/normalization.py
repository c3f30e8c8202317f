"""Paper Sec. 4.1's normalisation: pixels scaled to [0, 1], then every channel standardised
with the mean and standard deviation of the *full training set* (computed before any subset
is taken), applied to train and test alike."""
import numpy

from experiments.data.errors import DataError


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

