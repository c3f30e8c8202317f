"""The CIFAR CNN of the paper's Table 1 (Sec. 4.2).

    input   3 x 32 x 32   (in_channels x 32 x 32: 1 for Fashion-MNIST)
    conv1   conv 5x5 (1, 2) + bn + relu   64 x 32 x 32
    pool1   max pool 3x3 (2, 0)           64 x 16 x 16
    conv2   conv 5x5 (1, 2) + bn + relu  128 x 16 x 16
    pool2   max pool 3x3 (2, 0)          128 x  8 x  8
    conv3   conv 5x5 (1, 2) + bn + relu  128 x  8 x  8
    pool3   max pool 3x3 (2, 0)          128 x  4 x  4
    conv4   conv 3x3 (1, 1) + bn + relu  256 x  4 x  4
    pool4   avg pool 4x4 (1, 0)          256 x  1 x  1
    linear                               10 or 100

The max pools keep Chainer's default ``cover_all=True``, which is what turns
32 -> 16 -> 8 -> 4 with a 3x3 window and stride 2 (``cover_all=False`` gives 15).
"MN at conv3" replaces the BN of block ``conv3`` (link path ``conv3/bn``).
"""
from mixnorm import _compat  # noqa: F401

import chainer
import chainer.functions as F
import chainer.links as L


class ConvBNReLU(chainer.Chain):
    """conv -> BN -> ReLU; the BN (``bn``) is what MN replaces."""

    def __init__(self, in_channels, out_channels, ksize, pad):
        super().__init__()
        with self.init_scope():
            self.conv = L.Convolution2D(in_channels, out_channels, ksize, pad=pad,
                                        nobias=True)
            self.bn = L.BatchNormalization(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class CifarCNN(chainer.Chain):
    """Table 1; ``forward`` returns logits.  ``trace`` returns every named stage."""

    LAYERS = ('conv1', 'conv2', 'conv3', 'conv4')

    def __init__(self, n_classes=10, in_channels=3):
        super().__init__()
        self.n_classes = n_classes
        with self.init_scope():
            self.conv1 = ConvBNReLU(in_channels, 64, 5, 2)
            self.conv2 = ConvBNReLU(64, 128, 5, 2)
            self.conv3 = ConvBNReLU(128, 128, 5, 2)
            self.conv4 = ConvBNReLU(128, 256, 3, 1)
            self.linear = L.Linear(256, n_classes)

    def normalization_sites(self):
        """The paper's layer names -> the BN link paths MN replaces."""
        return {name: ['%s/bn' % name] for name in self.LAYERS}

    def trace(self, x):
        """[(stage name, output)] through the network, named as Table 1."""
        out = []
        h = x
        for i, name in enumerate(self.LAYERS, 1):
            h = getattr(self, name)(h)
            out.append((name, h))
            if i < 4:
                h = F.max_pooling_2d(h, 3, stride=2)
            else:
                h = F.average_pooling_2d(h, 4, stride=1)
            out.append(('pool%d' % i, h))
        h = self.linear(h)
        out.append(('linear', h))
        return out

    def forward(self, x):
        return self.trace(x)[-1][1]
