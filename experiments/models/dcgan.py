"""DCGAN for CIFAR-10 (paper Sec. 4.5): generator and discriminator.

The paper names only "one linear and four deconvolution layers", BN + ReLU after the
first three deconvolutions, and MN in place of the BNs of the first two.  Its training
settings (Adam alpha 2e-4, beta1 0, beta2 0.9 for both nets, 100K updates, FID every
10K) are exactly those of Chainer-GAN-lib (pfnet-research/chainer-gan-lib, ``train.py``
defaults, ``dcgan/updater.py``), whose ``common/net.py`` DCGAN is the architecture below
(Radford et al. 2016 adapted to 32 x 32 as in Miyato et al. 2018, "standard CNN"):

Generator (``ch`` = 512, ``bottom_width`` = 4, ``z_dim`` = 128; defaults):

    z         (B, 128) ~ U(-1, 1)                      (``z_distribution='uniform'``)
    l0        linear 128 -> 4*4*512, bn0 + ReLU, reshape (B, 512, 4, 4)
    dc1       deconv 4x4 /2 pad 1   512 -> 256    8 x  8, bn1 + ReLU   ("deconv1")
    dc2       deconv 4x4 /2 pad 1   256 -> 128   16 x 16, bn2 + ReLU   ("deconv2")
    dc3       deconv 4x4 /2 pad 1   128 ->  64   32 x 32, bn3 + ReLU   ("deconv3")
    dc4       deconv 3x3 /1 pad 1    64 ->   3   32 x 32, tanh         ("deconv4")

``normalization_sites()`` names the BNs by the layer they follow: ``deconv1`` -> ``bn1``,
``deconv2`` -> ``bn2``, ``deconv3`` -> ``bn3`` (and ``linear`` -> ``bn0``), so the MN
config of the paper is ``mn.layers: [deconv1, deconv2]``.  (Chainer-GAN-lib also
normalises the linear layer's output, ``bn0``; the paper's sentence counts only the
deconvolutions' BNs.)

Discriminator (``ch`` = 512), LeakyReLU slope 0.2 after every convolution, BN without
gamma (Chainer-GAN-lib):

    c0_0  conv 3x3 /1 pad 1     3 ->  64  32 x 32
    c0_1  conv 4x4 /2 pad 1    64 -> 128  16 x 16, bn0_1
    c1_0  conv 3x3 /1 pad 1   128 -> 128  16 x 16, bn1_0
    c1_1  conv 4x4 /2 pad 1   128 -> 256   8 x  8, bn1_1
    c2_0  conv 3x3 /1 pad 1   256 -> 256   8 x  8, bn2_0
    c2_1  conv 4x4 /2 pad 1   256 -> 512   4 x  4, bn2_1
    c3_0  conv 3x3 /1 pad 1   512 -> 512   4 x  4, bn3_0
    l4    linear 4*4*512 -> 1 (the logit)

All weights are initialised N(0, 0.02^2) (``wscale``), biases 0.  ``ch`` may be reduced
(the tests narrow it to 16; smoke runs keep 512); ``ch`` must be a multiple of 8.
"""
from mixnorm import _compat  # noqa: F401

import numpy

import chainer
import chainer.functions as F
import chainer.links as L

Z_DISTRIBUTIONS = ('uniform', 'normal')


def _check(ch, bottom_width, z_dim):
    for name, v in (('ch', ch), ('bottom_width', bottom_width), ('z_dim', z_dim)):
        if int(v) != v or v < 1:
            raise ValueError('%s must be a positive integer, got %r' % (name, v))
    if ch % 8:
        raise ValueError('ch must be a multiple of 8 (the last hidden layer has ch/8 '
                         'channels), got %r' % (ch,))


class DCGANGenerator(chainer.Chain):
    """z (B, z_dim) -> images (B, 3, 8*bottom_width, 8*bottom_width) in [-1, 1]."""

    LAYERS = ('linear', 'deconv1', 'deconv2', 'deconv3')

    def __init__(self, z_dim=128, ch=512, bottom_width=4, wscale=0.02,
                 z_distribution='uniform'):
        super().__init__()
        _check(ch, bottom_width, z_dim)
        if z_distribution not in Z_DISTRIBUTIONS:
            raise ValueError('z_distribution must be one of %s, got %r'
                             % (', '.join(Z_DISTRIBUTIONS), z_distribution))
        self.z_dim, self.ch, self.bottom_width = int(z_dim), int(ch), int(bottom_width)
        self.z_distribution = z_distribution
        w = chainer.initializers.Normal(wscale)
        with self.init_scope():
            self.l0 = L.Linear(self.z_dim, bottom_width * bottom_width * ch, initialW=w)
            self.dc1 = L.Deconvolution2D(ch, ch // 2, 4, 2, 1, initialW=w)
            self.dc2 = L.Deconvolution2D(ch // 2, ch // 4, 4, 2, 1, initialW=w)
            self.dc3 = L.Deconvolution2D(ch // 4, ch // 8, 4, 2, 1, initialW=w)
            self.dc4 = L.Deconvolution2D(ch // 8, 3, 3, 1, 1, initialW=w)
            self.bn0 = L.BatchNormalization(bottom_width * bottom_width * ch)
            self.bn1 = L.BatchNormalization(ch // 2)
            self.bn2 = L.BatchNormalization(ch // 4)
            self.bn3 = L.BatchNormalization(ch // 8)

    @property
    def image_size(self):
        return 8 * self.bottom_width

    def normalization_sites(self):
        """The paper's layer names -> the BN link that follows that layer."""
        return {'linear': ['bn0'], 'deconv1': ['bn1'], 'deconv2': ['bn2'],
                'deconv3': ['bn3']}

    def sample_z(self, rng, batch_size):
        """Noise (batch_size, z_dim) float32 drawn on the host from ``rng`` (a
        ``numpy.random.RandomState``)."""
        if self.z_distribution == 'uniform':
            z = rng.uniform(-1, 1, (batch_size, self.z_dim))
        else:
            z = rng.standard_normal((batch_size, self.z_dim))
        return z.astype(numpy.float32)

    def forward(self, z):
        h = F.relu(self.bn0(self.l0(z)))
        h = F.reshape(h, (len(z), self.ch, self.bottom_width, self.bottom_width))
        h = F.relu(self.bn1(self.dc1(h)))
        h = F.relu(self.bn2(self.dc2(h)))
        h = F.relu(self.bn3(self.dc3(h)))
        return F.tanh(self.dc4(h))


class DCGANDiscriminator(chainer.Chain):
    """images (B, 3, 8*bottom_width, 8*bottom_width) -> logits (B, 1)."""

    def __init__(self, ch=512, bottom_width=4, wscale=0.02):
        super().__init__()
        _check(ch, bottom_width, 1)
        w = chainer.initializers.Normal(wscale)
        with self.init_scope():
            self.c0_0 = L.Convolution2D(3, ch // 8, 3, 1, 1, initialW=w)
            self.c0_1 = L.Convolution2D(ch // 8, ch // 4, 4, 2, 1, initialW=w)
            self.c1_0 = L.Convolution2D(ch // 4, ch // 4, 3, 1, 1, initialW=w)
            self.c1_1 = L.Convolution2D(ch // 4, ch // 2, 4, 2, 1, initialW=w)
            self.c2_0 = L.Convolution2D(ch // 2, ch // 2, 3, 1, 1, initialW=w)
            self.c2_1 = L.Convolution2D(ch // 2, ch, 4, 2, 1, initialW=w)
            self.c3_0 = L.Convolution2D(ch, ch, 3, 1, 1, initialW=w)
            self.l4 = L.Linear(bottom_width * bottom_width * ch, 1, initialW=w)
            self.bn0_1 = L.BatchNormalization(ch // 4, use_gamma=False)
            self.bn1_0 = L.BatchNormalization(ch // 4, use_gamma=False)
            self.bn1_1 = L.BatchNormalization(ch // 2, use_gamma=False)
            self.bn2_0 = L.BatchNormalization(ch // 2, use_gamma=False)
            self.bn2_1 = L.BatchNormalization(ch, use_gamma=False)
            self.bn3_0 = L.BatchNormalization(ch, use_gamma=False)

    def forward(self, x):
        h = F.leaky_relu(self.c0_0(x), 0.2)
        h = F.leaky_relu(self.bn0_1(self.c0_1(h)), 0.2)
        h = F.leaky_relu(self.bn1_0(self.c1_0(h)), 0.2)
        h = F.leaky_relu(self.bn1_1(self.c1_1(h)), 0.2)
        h = F.leaky_relu(self.bn2_0(self.c2_0(h)), 0.2)
        h = F.leaky_relu(self.bn2_1(self.c2_1(h)), 0.2)
        h = F.leaky_relu(self.bn3_0(self.c3_0(h)), 0.2)
        return self.l4(h)


def build_dcgan(z_dim=128, ch=512, bottom_width=4, wscale=0.02, z_distribution='uniform'):
    """(generator, discriminator) with the shared width settings (``model.kwargs``)."""
    gen = DCGANGenerator(z_dim=z_dim, ch=ch, bottom_width=bottom_width, wscale=wscale,
                         z_distribution=z_distribution)
    dis = DCGANDiscriminator(ch=ch, bottom_width=bottom_width, wscale=wscale)
    return gen, dis
