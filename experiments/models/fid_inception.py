"""The FID Inception-V3 (Heusel et al. 2017): the feature network of the Fréchet
Inception Distance (:mod:`experiments.fid`).

torchvision's Inception-V3 with pytorch-fid's FID patches (``FIDInceptionA``/``C``/
``E_1``: average pools that ignore the padding; ``FIDInceptionE_2``: a 3x3 max pool in
the pool branch), i.e. the Inception of TensorFlow's 2015-12-05 graph that TTUR's FID
code uses.  Link names equal the PyTorch module names (``Mixed_5b/branch5x5_2/conv``),
so that converted weights load by name (:func:`experiments.fid.torch_to_chainer`).
``FIDInceptionV3(last_block)`` stops after pytorch-fid's feature block ``last_block``
(3 = pool3, the 2048-d FID features).  Not a classifier (no ``fc``), so it is not in
the :data:`experiments.models.MODELS` registry: :func:`experiments.fid.load_extractor`
builds it and loads its weights.
"""
from mixnorm import _compat  # noqa: F401

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import initializers


def _avg_pool_exclude_pad(x):
    """3x3/1 average pool, padding 1, ignoring the padded zeros (TF; FID patches)."""
    return F.average_pooling_nd(x, 3, 1, 1, pad_value=None)


class BasicConv2d(chainer.Chain):
    """conv (no bias) -> BN (eps 1e-3) -> ReLU, as torchvision's ``BasicConv2d``."""

    def __init__(self, in_channels, out_channels, ksize, stride=1, pad=0):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(in_channels, out_channels, ksize, stride, pad,
                                        nobias=True, initialW=initializers.Zero())
            self.bn = L.BatchNormalization(out_channels, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class FIDInceptionA(chainer.Chain):
    def __init__(self, in_channels, pool_features):
        super().__init__()
        with self.init_scope():
            self.branch1x1 = BasicConv2d(in_channels, 64, 1)
            self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
            self.branch5x5_2 = BasicConv2d(48, 64, 5, pad=2)
            self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, pad=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, pad=1)
            self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_exclude_pad(x))
        return F.concat((b1, b5, b3, bp), axis=1)


class InceptionB(chainer.Chain):
    def __init__(self, in_channels):
        super().__init__()
        with self.init_scope():
            self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
            self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
            self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, pad=1)
            self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pooling_2d(x, 3, 2, cover_all=False)
        return F.concat((b3, bd, bp), axis=1)


class FIDInceptionC(chainer.Chain):
    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        with self.init_scope():
            self.branch1x1 = BasicConv2d(in_channels, 192, 1)
            self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
            self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), pad=(0, 3))
            self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), pad=(3, 0))
            self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
            self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), pad=(3, 0))
            self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), pad=(0, 3))
            self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), pad=(3, 0))
            self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), pad=(0, 3))
            self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for link in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            bd = link(bd)
        bp = self.branch_pool(_avg_pool_exclude_pad(x))
        return F.concat((b1, b7, bd, bp), axis=1)


class InceptionD(chainer.Chain):
    def __init__(self, in_channels):
        super().__init__()
        with self.init_scope():
            self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
            self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
            self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
            self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), pad=(0, 3))
            self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), pad=(3, 0))
            self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for link in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                     self.branch7x7x3_4):
            b7 = link(b7)
        bp = F.max_pooling_2d(x, 3, 2, cover_all=False)
        return F.concat((b3, b7, bp), axis=1)


class FIDInceptionE(chainer.Chain):
    """``pool='avg'``: pytorch-fid's FIDInceptionE_1; ``'max'``: FIDInceptionE_2."""

    def __init__(self, in_channels, pool):
        super().__init__()
        if pool not in ('avg', 'max'):
            raise ValueError(pool)
        self.pool = pool
        with self.init_scope():
            self.branch1x1 = BasicConv2d(in_channels, 320, 1)
            self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
            self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), pad=(0, 1))
            self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), pad=(1, 0))
            self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
            self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, pad=1)
            self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), pad=(0, 1))
            self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), pad=(1, 0))
            self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = F.concat((self.branch3x3_2a(b3), self.branch3x3_2b(b3)), axis=1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = F.concat((self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)), axis=1)
        if self.pool == 'avg':
            bp = _avg_pool_exclude_pad(x)
        else:
            bp = F.max_pooling_2d(x, 3, 1, 1, cover_all=False)
        bp = self.branch_pool(bp)
        return F.concat((b1, b3, bd, bp), axis=1)


# (name, constructor args) of each block, in order; pytorch-fid's blocks 0-3
_BLOCKS = (
    (('Conv2d_1a_3x3', BasicConv2d, (3, 32, 3), {'stride': 2}),
     ('Conv2d_2a_3x3', BasicConv2d, (32, 32, 3), {}),
     ('Conv2d_2b_3x3', BasicConv2d, (32, 64, 3), {'pad': 1}),
     'maxpool'),
    (('Conv2d_3b_1x1', BasicConv2d, (64, 80, 1), {}),
     ('Conv2d_4a_3x3', BasicConv2d, (80, 192, 3), {}),
     'maxpool'),
    (('Mixed_5b', FIDInceptionA, (192, 32), {}),
     ('Mixed_5c', FIDInceptionA, (256, 64), {}),
     ('Mixed_5d', FIDInceptionA, (288, 64), {}),
     ('Mixed_6a', InceptionB, (288,), {}),
     ('Mixed_6b', FIDInceptionC, (768, 128), {}),
     ('Mixed_6c', FIDInceptionC, (768, 160), {}),
     ('Mixed_6d', FIDInceptionC, (768, 160), {}),
     ('Mixed_6e', FIDInceptionC, (768, 192), {})),
    (('Mixed_7a', InceptionD, (768,), {}),
     ('Mixed_7b', FIDInceptionE, (1280, 'avg'), {}),
     ('Mixed_7c', FIDInceptionE, (2048, 'max'), {})),
)


class FIDInceptionV3(chainer.Chain):
    """The FID Inception-V3 up to pytorch-fid's block ``last_block`` (3 = pool3, 2048-d).

    ``forward(x)``: x (B, 3, H, W) already resized and scaled to [-1, 1]; returns the
    spatial mean of the last block's output (B, 64 / 192 / 768 / 2048).  Always runs in
    inference mode (BN with the stored statistics).  Weights start at zero (conv) and
    identity (BN): use :func:`load_extractor`.
    """

    def __init__(self, last_block=3):
        super().__init__()
        if last_block not in (0, 1, 2, 3):
            raise ValueError('last_block must be 0..3, got %r' % (last_block,))
        self.last_block = last_block
        self._order = []
        with self.init_scope():
            for block in _BLOCKS[:last_block + 1]:
                for item in block:
                    if item == 'maxpool':
                        self._order.append(item)
                        continue
                    name, cls, args, kwargs = item
                    setattr(self, name, cls(*args, **kwargs))
                    self._order.append(name)

    def forward(self, x):
        with chainer.using_config('train', False), \
                chainer.using_config('enable_backprop', False):
            h = x
            for name in self._order:
                if name == 'maxpool':
                    h = F.max_pooling_2d(h, 3, 2, cover_all=False)
                else:
                    h = getattr(self, name)(h)
            return F.mean(h, axis=(2, 3))
