"""Inception-V3 modified for 32x32 CIFAR images (paper Sec. 4.3, Tables 4-6).

The standard Inception-V3 of Szegedy et al. (2016) in the layout of torchvision's
``inception_v3`` / Keras' ``InceptionV3`` / TF-slim's ``inception_v3_base`` (same
channels, kernels and branch order), every convolution without bias and followed by
BN (eps 1e-3, as the standard) and ReLU.  The paper's CIFAR modification: the first
convolution has stride 1 instead of 2 and the first max-pool is removed, so the output
stride is 8 (the second max-pool and the two grid reductions).

Stages and spatial sizes for a 32x32 input (``trace`` returns exactly these names)::

    stage   layers                                         C x H x W      H at 299
    input                                                  3 x 32 x 32
    stem/0  conv 3x3 /32, stride 1 (was 2), pad 1         32 x 32 x 32    149 (s2, pad 0)
    stem/1  conv 3x3 /32, pad 1                           32 x 32 x 32    147 (pad 0)
    stem/2  conv 3x3 /64, pad 1                           64 x 32 x 32    147 (pad 1)
            (max-pool 3x3 s2 removed)                                      73
    stem/3  conv 1x1 /80                                  80 x 32 x 32     73
    stem/4  conv 3x3 /192, pad 1                         192 x 32 x 32     71 (pad 0)
    pool    max-pool 3x3, stride 2, pad 0 (floor)        192 x 15 x 15     35
    inc1/0  Inception-A, pool features 32 (Mixed_5b)     256 x 15 x 15     35
    inc1/1  Inception-A, pool features 64 (Mixed_5c)     288 x 15 x 15     35
    inc1/2  Inception-A, pool features 64 (Mixed_5d)     288 x 15 x 15     35
    red1    grid reduction A (Mixed_6a)                  768 x  7 x  7     17
    inc2/0  Inception-B, channels_7x7 128 (Mixed_6b)     768 x  7 x  7     17
    inc2/1  Inception-B, channels_7x7 160 (Mixed_6c)     768 x  7 x  7     17
    inc2/2  Inception-B, channels_7x7 160 (Mixed_6d)     768 x  7 x  7     17
    inc2/3  Inception-B, channels_7x7 192 (Mixed_6e)     768 x  7 x  7     17
    red2    grid reduction B (Mixed_7a)                 1280 x  3 x  3      8
    inc3/0  Inception-C (Mixed_7b)                      2048 x  3 x  3      8
    inc3/1  Inception-C (Mixed_7c)                      2048 x  3 x  3      8
    gap     global average pooling                      2048
    dropout ratio ``dropout_ratio`` (default 0.2)       2048
    linear                                              n_classes

Paddings.  The paper says the final activation before global pooling is 3x3.  With the
standard "valid" (unpadded) stem convolutions the modified network would give
32 -> 30 -> 28 -> 28 -> 28 -> 26 -> pool 12 -> red1 5 -> red2 2, i.e. 2x2.  The grid
reductions (3x3 stride-2 "valid" convolutions and max-pools, floor) turn n into
(n - 3) // 2 + 1, so a 3x3 output needs 15..18 after the stem pool, i.e. 31..38 before
it.  We therefore pad every 3x3 stem convolution by 1 ("same"), keeping the stem
max-pool and the reductions unpadded as in the standard: 32 -> pool 15 -> 7 -> 3.
(All-"same" everywhere, reductions included, would give 4x4.)  Max-pools use
``cover_all=False`` (floor, as TF/PyTorch; Chainer's default ``cover_all=True`` would
give 16 and break the concatenation in the reduction modules).  The average pools of
the pool branches are 3x3, stride 1, pad 1, counting the zero padding (Chainer's
``average_pooling_2d``, as torchvision's ``count_include_pad=True``).

Choices the paper leaves open: no auxiliary classifier (the paper mentions none and
Tables 4-6 report the main head only); dropout before the linear layer with ratio 0.2
(TF-slim's ``dropout_keep_prob=0.8``, the recipe whose RMSprop/0.93 schedule the paper
uses; torchvision uses 0.5, Keras none) -- ``InceptionV3(dropout_ratio=...)`` /
``model.kwargs.dropout_ratio`` changes it, 0 disables it; its masks are drawn from a
persistent (seed, call count) pair, not the global RNG, so resuming from a snapshot
stays bit-for-bit; BN with learned gamma and beta (torchvision; TF-slim/Keras omit
gamma) and Chainer's running-average decay 0.9 (torchvision's momentum 0.1); Chainer's
default weight initialisation (LeCun normal for convolutions and the linear layer).

Parameters (trainable, measured): 21,785,568 in the body (94 convolutions and 94 BNs;
34,432 of them BN gamma/beta), plus the linear layer 2048 x n_classes + n_classes:
21,806,058 for 10 classes, 21,990,468 for 100 classes.  The body is exactly that of
torchvision's ``inception_v3(aux_logits=False)`` (23,834,568 with its 1000-class head):
the CIFAR changes (stride, paddings, removed pool) do not change the parameter count.

Layer names, as the paper (Table 4 caption, Sec. 5.2 footnote 8): blocks ``inc1``,
``inc2``, ``inc3`` of Inception layers ``incB/L`` (0-based), the grid reductions ``red1``
and ``red2``, and inside a layer or reduction ``.../branch/position`` (0-based, branches
in the standard order), so ``inc2/0/2/4`` is the fifth BN of the third branch of the
first layer of the second block (the last 1x7 of the double-7x7 branch of Mixed_6b).
Every conv-BN-ReLU unit is a :class:`ConvBN` whose BN link path is the unit's paper
name + ``/bn`` (``inc2/0/2/4/bn``); the stem units are ``stem/0`` .. ``stem/4``.

:meth:`InceptionV3.normalization_sites` maps

* every unit name (``stem/0``, ``inc2/0/2/4``, ``red1/1/2``, ...) to its single BN;
* a layer name ``incB/L`` and ``red1``/``red2`` to the LAST BN of each branch (Table 4
  caption: "we only replace the last batch normalization in each branch").  The pool
  branch of a reduction has no BN and contributes none.  In Inception-C the 3x3 branch
  and the double-3x3 branch end in a parallel 1x3/3x1 pair that is concatenated; both
  BNs of the pair are last on their path, so both count.  Counts: Inception-A 4
  (``inc1/L``), Inception-B 4 (``inc2/L``), Inception-C 6 (``inc3/L``), ``red1`` 2,
  ``red2`` 2.
"""
from mixnorm import _compat  # noqa: F401

import numpy

import chainer
import chainer.functions as F
import chainer.links as L

BN_EPS = 1e-3


class ConvBN(chainer.Chain):
    """conv (no bias) -> BN (``bn``, eps 1e-3) -> ReLU; the BN is what MN replaces."""

    def __init__(self, in_channels, out_channels, ksize, stride=1, pad=0):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(in_channels, out_channels, ksize, stride=stride,
                                        pad=pad, nobias=True)
            self.bn = L.BatchNormalization(out_channels, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _units(*specs):
    """A branch: ChainList of ConvBN units, ``spec`` = (in, out, ksize[, stride, pad])."""
    return chainer.ChainList(*[ConvBN(*s) for s in specs])


def _avg_pool(x):
    return F.average_pooling_2d(x, 3, stride=1, pad=1)


def _max_pool(x):
    return F.max_pooling_2d(x, 3, stride=2, pad=0, cover_all=False)


def _chain(branch, x):
    for unit in branch:
        x = unit(x)
    return x


class _Module(chainer.ChainList):
    """An Inception layer or grid reduction: a ChainList of branches (ChainLists of
    :class:`ConvBN`).  ``last_units`` lists, per branch, the positions whose BN is the
    last one of the branch."""

    last_units = ()

    def last_bn_paths(self, prefix):
        return ['%s/%d/%d/bn' % (prefix, b, p)
                for b, positions in enumerate(self.last_units) for p in positions]

    def _branches_and_pooled_branch(self, x):
        """Every branch on ``x`` except the last, which runs on the 3x3 average pool
        of ``x`` (Inception-A and -B), concatenated along channels."""
        *branches, pooled = self
        return F.concat([_chain(b, x) for b in branches] + [_chain(pooled, _avg_pool(x))])


class InceptionA(_Module):
    """Mixed_5b/c/d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    last_units = ((0,), (1,), (2,), (0,))

    def __init__(self, in_channels, pool_features):
        super().__init__(
            _units((in_channels, 64, 1)),
            _units((in_channels, 48, 1), (48, 64, 5, 1, 2)),
            _units((in_channels, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1)),
            _units((in_channels, pool_features, 1)))
        self.out_channels = 64 + 64 + 96 + pool_features

    def forward(self, x):
        return self._branches_and_pooled_branch(x)


class ReductionA(_Module):
    """Mixed_6a: 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2 (no BN)."""

    last_units = ((0,), (2,))

    def __init__(self, in_channels):
        super().__init__(
            _units((in_channels, 384, 3, 2, 0)),
            _units((in_channels, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 2, 0)))
        self.out_channels = 384 + 96 + in_channels

    def forward(self, x):
        b0, b1 = self
        return F.concat([_chain(b0, x), _chain(b1, x), _max_pool(x)])


class InceptionB(_Module):
    """Mixed_6b..e: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1."""

    last_units = ((0,), (2,), (4,), (0,))

    def __init__(self, in_channels, c7):
        h, v = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
        super().__init__(
            _units((in_channels, 192, 1)),
            _units((in_channels, c7, 1), (c7, c7) + h, (c7, 192) + v),
            _units((in_channels, c7, 1), (c7, c7) + v, (c7, c7) + h, (c7, c7) + v,
                   (c7, 192) + h),
            _units((in_channels, 192, 1)))
        self.out_channels = 768

    def forward(self, x):
        return self._branches_and_pooled_branch(x)


class ReductionB(_Module):
    """Mixed_7a: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2 (no BN)."""

    last_units = ((1,), (3,))

    def __init__(self, in_channels):
        super().__init__(
            _units((in_channels, 192, 1), (192, 320, 3, 2, 0)),
            _units((in_channels, 192, 1), (192, 192, (1, 7), 1, (0, 3)),
                   (192, 192, (7, 1), 1, (3, 0)), (192, 192, 3, 2, 0)))
        self.out_channels = 320 + 192 + in_channels

    def forward(self, x):
        b0, b1 = self
        return F.concat([_chain(b0, x), _chain(b1, x), _max_pool(x)])


class InceptionC(_Module):
    """Mixed_7b/c: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | avgpool-1x1.

    Positions: branch 1 = [1x1, 1x3, 3x1], branch 2 = [1x1, 3x3, 1x3, 3x1]; the final
    1x3 and 3x1 of a branch are applied in parallel to the same input and concatenated.
    """

    last_units = ((0,), (1, 2), (2, 3), (0,))

    def __init__(self, in_channels):
        h, v = ((1, 3), 1, (0, 1)), ((3, 1), 1, (1, 0))
        super().__init__(
            _units((in_channels, 320, 1)),
            _units((in_channels, 384, 1), (384, 384) + h, (384, 384) + v),
            _units((in_channels, 448, 1), (448, 384, 3, 1, 1), (384, 384) + h,
                   (384, 384) + v),
            _units((in_channels, 192, 1)))
        self.out_channels = 2048

    def forward(self, x):
        b0, b1, b2, b3 = self
        h1 = b1[0](x)
        h2 = b2[1](b2[0](x))
        return F.concat([_chain(b0, x), b1[1](h1), b1[2](h1), b2[2](h2), b2[3](h2),
                         _chain(b3, _avg_pool(x))])


class InceptionV3(chainer.Chain):
    """Inception-V3 for 32x32 inputs (see the module docstring); ``forward`` returns
    logits, ``trace`` every named stage."""

    BLOCKS = ('inc1', 'inc2', 'inc3')
    REDUCTIONS = ('red1', 'red2')

    def __init__(self, n_classes=10, dropout_ratio=0.2, dropout_seed=None, in_channels=3):
        super().__init__()
        if not 0 <= dropout_ratio < 1:
            raise ValueError('dropout_ratio must be in [0, 1), got %r' % (dropout_ratio,))
        self.n_classes = n_classes
        self.dropout_ratio = dropout_ratio
        # Dropout masks come from RandomState(seed, number of training forwards), both
        # persistent, so that a run resumed from a snapshot draws the same masks.
        self.dropout_seed = int(numpy.random.randint(2 ** 31)) if dropout_seed is None \
            else int(dropout_seed)
        self.dropout_calls = 0
        self.register_persistent('dropout_seed')
        self.register_persistent('dropout_calls')
        with self.init_scope():
            self.stem = chainer.ChainList(
                ConvBN(in_channels, 32, 3, 1, 1),  # stride 2 -> 1 (paper), pad 0 -> 1
                ConvBN(32, 32, 3, 1, 1),      # pad 0 -> 1
                ConvBN(32, 64, 3, 1, 1),      # (first max-pool removed after this)
                ConvBN(64, 80, 1),
                ConvBN(80, 192, 3, 1, 1))     # pad 0 -> 1
            self.inc1 = chainer.ChainList(InceptionA(192, 32), InceptionA(256, 64),
                                          InceptionA(288, 64))
            self.red1 = ReductionA(288)
            self.inc2 = chainer.ChainList(*[InceptionB(768, c7)
                                            for c7 in (128, 160, 160, 192)])
            self.red2 = ReductionB(768)
            self.inc3 = chainer.ChainList(InceptionC(1280), InceptionC(2048))
            self.linear = L.Linear(2048, n_classes)

    # ------------------------------------------------------------------ naming
    def layer_names(self):
        """The paper's layer names in order: inc1/0..2, red1, inc2/0..3, red2, inc3/0..1."""
        names = ['inc1/%d' % i for i in range(len(self.inc1))] + ['red1']
        names += ['inc2/%d' % i for i in range(len(self.inc2))] + ['red2']
        names += ['inc3/%d' % i for i in range(len(self.inc3))]
        return names

    def _module(self, name):
        if name in self.REDUCTIONS:
            return getattr(self, name)
        block, idx = name.split('/')
        return getattr(self, block)[int(idx)]

    def normalization_sites(self):
        """The paper's names -> BN link paths: unit names -> their BN; layer names
        (``incB/L``, ``red1``, ``red2``) -> the last BN of each branch."""
        sites = {}
        for i in range(len(self.stem)):
            sites['stem/%d' % i] = ['stem/%d/bn' % i]
        for name in self.layer_names():
            module = self._module(name)
            for b, branch in enumerate(module):
                for p in range(len(branch)):
                    sites['%s/%d/%d' % (name, b, p)] = ['%s/%d/%d/bn' % (name, b, p)]
            sites[name] = module.last_bn_paths(name)
        return sites

    # ----------------------------------------------------------------- forward
    def trace(self, x):
        """[(stage name, output)] as in the module docstring's table."""
        out = []
        h = x
        for i, unit in enumerate(self.stem):
            h = unit(h)
            out.append(('stem/%d' % i, h))
        h = _max_pool(h)
        out.append(('pool', h))
        for name in self.layer_names():
            h = self._module(name)(h)
            out.append((name, h))
        h = F.average(h, axis=(2, 3))
        out.append(('gap', h))
        h = self._dropout(h)
        out.append(('dropout', h))
        h = self.linear(h)
        out.append(('linear', h))
        return out

    def _dropout(self, h):
        if not self.dropout_ratio or not chainer.config.train:
            return h
        rng = numpy.random.RandomState(
            (int(self.dropout_seed) * 1000003 + int(self.dropout_calls)) % 2 ** 32)
        self.dropout_calls = int(self.dropout_calls) + 1
        keep = rng.rand(*h.shape) >= self.dropout_ratio
        mask = (keep / (1.0 - self.dropout_ratio)).astype(h.dtype)
        mask = chainer.backend.get_device_from_array(h.array).send(mask)
        return F.dropout(h, self.dropout_ratio, mask=mask)

    def forward(self, x):
        return self.trace(x)[-1][1]
