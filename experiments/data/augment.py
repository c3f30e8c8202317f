"""Training augmentation, per batch: random cropping from a padded image and horizontal
flipping (:func:`random_crop_flip`); the draws on the host, the gather on the batch's
device (NumPy or CuPy)."""
import numpy

import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)
import chainer  # noqa: E402


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
