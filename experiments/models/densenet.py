"""DenseNet for CIFAR (Huang et al. 2017), the basic variant of the paper's Sec. 4.4 and
Table 7 (Sec. 5.1): no bottleneck, no compression, growth rate k = 12.

    input        3 x 32 x 32
    conv1        conv 3x3 (1, 1), 16 channels, no bias               16 x 32 x 32
    block1       n dense layers: BN-ReLU-conv 3x3 (1, 1) -> k maps,
                 each concatenated to its input                 16+n*k x 32 x 32
    transition1  BN-ReLU-conv 1x1 (same channels) - avg pool 2x2    c1 x 16 x 16
    block2       n dense layers                              c1+n*k x 16 x 16
    transition2  BN-ReLU-conv 1x1 - avg pool 2x2                     c2 x  8 x  8
    block3       n dense layers                              c2+n*k x  8 x  8
    last         BN-ReLU (``final_bn``)                              c3 x  8 x  8
    pool         global average pool                                 c3 x  1 x  1
    linear                                                          n_classes

with n = (depth - 4) / 3 layers per block (``layers_per_block`` overrides it).  The
channel counts are c1 = 16 + n*k, c2 = c1 + n*k, c3 = c2 + n*k = 16 + 3*n*k:

    depth 40  (n = 12): transition1 160, transition2 304, last  448
    depth 100 (n = 32): transition1 400, transition2 784, last 1168
    n = 5             : transition1  76, transition2 136, last  196

Table 7 (Sec. 5.1) times DenseNets with 196 and 448 channels into the last BN and calls
them 20 and 40 layers.  448 is depth 40 (n = 12).  196 needs n = 5, and by the usual
count (3n dense-layer convs + the initial conv + 2 transition convs + the linear layer =
3n + 4) that network has 19 layers, not 20: the paper's "20" does not fit any integer
n.  So ``DenseNet(layers_per_block=5)`` stands for the paper's "20 layers" and reports
``depth == 19``.

Choices that follow the original (Lua Torch) DenseNet: convolutions have no bias and are
initialised He-normal with fan-out (std sqrt(2 / (k*k*out_channels))); the linear layer
has a zero bias; there is no dropout (the CIFAR+ setting, with data augmentation).  BN
uses Chainer's defaults (eps 2e-5, decay 0.9).

Normalization sites (``normalization_sites()``, used by ``mn.layers`` and
``mixnorm.replace_batch_normalization``):

    'transition1', 'transition2'   the BN of each transition layer
                                   (link paths ``transition1/bn``, ``transition2/bn``)
    'last' (alias 'final_bn')      the final BN after the third dense block (``final_bn``)
    'block<b>/<i>'                 the BN of dense layer i (0-based, i < n) of block b
                                   (1..3), link path ``block<b>/<i>/bn``

The paper's MN variants (Sec. 4.4) replace ``transition1``, ``transition2`` and ``last``
(K = 5, EM iter. 2); Table 7 replaces only ``last``.
"""
from mixnorm import _compat  # noqa: F401

import chainer
import chainer.functions as F
import chainer.links as L
from chainer import initializers

INITIAL_CHANNELS = 16


def _conv(in_channels, out_channels, ksize, pad):
    return L.Convolution2D(in_channels, out_channels, ksize, pad=pad, nobias=True,
                           initialW=initializers.HeNormal(fan_option='fan_out'))


class DenseLayer(chainer.Chain):
    """BN-ReLU-conv 3x3 (pad 1) -> ``growth`` new maps, concatenated to the input."""

    def __init__(self, in_channels, growth):
        super().__init__()
        with self.init_scope():
            self.bn = L.BatchNormalization(in_channels)
            self.conv = _conv(in_channels, growth, 3, 1)

    def forward(self, x):
        return F.concat((x, self.conv(F.relu(self.bn(x)))), axis=1)


class DenseBlock(chainer.ChainList):
    """``n_layers`` dense layers; children ``0 .. n_layers-1``."""

    def __init__(self, in_channels, n_layers, growth):
        super().__init__(*[DenseLayer(in_channels + i * growth, growth)
                           for i in range(n_layers)])
        self.out_channels = in_channels + n_layers * growth

    def forward(self, x):
        h = x
        for layer in self:
            h = layer(h)
        return h


class Transition(chainer.Chain):
    """BN-ReLU-conv 1x1 (same channels: no compression) - average pool 2x2."""

    def __init__(self, channels):
        super().__init__()
        with self.init_scope():
            self.bn = L.BatchNormalization(channels)
            self.conv = _conv(channels, channels, 1, 0)

    def forward(self, x):
        return F.average_pooling_2d(self.conv(F.relu(self.bn(x))), 2, stride=2)


class DenseNet(chainer.Chain):
    """The basic CIFAR DenseNet (see the module docstring); ``forward`` returns logits.

    Args:
        n_classes: outputs of the linear layer.
        depth: 3n + 4 with n dense layers per block (40, 100, ...); ignored when
            ``layers_per_block`` is given.
        growth: the growth rate k (maps added by each dense layer).
        in_channels: channels of the input images (3; Fashion-MNIST: 1).
        layers_per_block: n, overriding ``(depth - 4) / 3`` (Table 7's "20 layers" is
            n = 5, which is 19 layers by the 3n + 4 count).

    Attributes: ``depth`` (3n + 4), ``layers_per_block`` (n), ``growth``, ``channels``
    (the input channels of the BNs of ``transition1``, ``transition2`` and ``last``).
    """

    BLOCKS = ('block1', 'block2', 'block3')
    TRANSITIONS = ('transition1', 'transition2')

    def __init__(self, n_classes=100, depth=40, growth=12, layers_per_block=None,
                 in_channels=3):
        super().__init__()
        if layers_per_block is None:
            if int(depth) != depth or depth < 7 or (depth - 4) % 3:
                raise ValueError('DenseNet depth must be 3n + 4 with n >= 1 dense layers per '
                                 'block (e.g. 40, 100), got %r; or give layers_per_block'
                                 % (depth,))
            layers_per_block = (int(depth) - 4) // 3
        if int(layers_per_block) != layers_per_block or layers_per_block < 1:
            raise ValueError('layers_per_block must be a positive integer, got %r'
                             % (layers_per_block,))
        if int(growth) != growth or growth < 1:
            raise ValueError('growth must be a positive integer, got %r' % (growth,))
        n, k = int(layers_per_block), int(growth)
        self.n_classes = n_classes
        self.layers_per_block = n
        self.growth = k
        self.depth = 3 * n + 4
        c = INITIAL_CHANNELS
        channels = {}
        with self.init_scope():
            self.conv1 = _conv(in_channels, c, 3, 1)
            self.block1 = DenseBlock(c, n, k)
            c = channels['transition1'] = self.block1.out_channels
            self.transition1 = Transition(c)
            self.block2 = DenseBlock(c, n, k)
            c = channels['transition2'] = self.block2.out_channels
            self.transition2 = Transition(c)
            self.block3 = DenseBlock(c, n, k)
            c = channels['last'] = self.block3.out_channels
            self.final_bn = L.BatchNormalization(c)
            self.linear = L.Linear(c, n_classes, initial_bias=initializers.Zero())
        self.channels = channels

    def normalization_sites(self):
        """The paper's layer names -> the BN link paths MN replaces (module docstring)."""
        sites = {'transition1': ['transition1/bn'], 'transition2': ['transition2/bn'],
                 'last': ['final_bn'], 'final_bn': ['final_bn']}
        for name in self.BLOCKS:
            for i in range(self.layers_per_block):
                sites['%s/%d' % (name, i)] = ['%s/%d/bn' % (name, i)]
        return sites

    def trace(self, x):
        """[(stage name, output)] through the network, named as the module docstring."""
        out = []
        h = self.conv1(x)
        out.append(('conv1', h))
        for i, name in enumerate(self.BLOCKS):
            h = getattr(self, name)(h)
            out.append((name, h))
            if i < 2:
                h = getattr(self, self.TRANSITIONS[i])(h)
                out.append((self.TRANSITIONS[i], h))
        h = F.relu(self.final_bn(h))
        out.append(('last', h))
        h = F.mean(h, axis=(2, 3))
        out.append(('pool', h))
        h = self.linear(h)
        out.append(('linear', h))
        return out

    def forward(self, x):
        h = self.conv1(x)
        h = self.transition1(self.block1(h))
        h = self.transition2(self.block2(h))
        h = F.relu(self.final_bn(self.block3(h)))
        return self.linear(F.mean(h, axis=(2, 3)))
