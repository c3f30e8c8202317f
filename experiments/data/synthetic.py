"""A learnable 10-class stand-in for CIFAR, generated (never read): used only when asked
for by name (``'synthetic'``), never in place of missing data."""
import numpy

from experiments.data.dataset import check_seed

SYNTHETIC_SOURCE = 'synthetic (generated, not CIFAR)'
SYNTHETIC_SIZE = (512, 256)  # default (n_train, n_test) of the synthetic set
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
        rs = numpy.random.RandomState([check_seed(seed), stream])
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

