"""Model architectures against the paper's tables."""
import numpy as np
import pytest

import mixnorm  # noqa: F401
import chainer.links as L

from experiments.models import MODELS, build_model

TABLE1 = [  # (stage, output shape) of Table 1 for a 32x32 input
    ('conv1', (64, 32, 32)), ('pool1', (64, 16, 16)), ('conv2', (128, 16, 16)),
    ('pool2', (128, 8, 8)), ('conv3', (128, 8, 8)), ('pool3', (128, 4, 4)),
    ('conv4', (256, 4, 4)), ('pool4', (256, 1, 1)),
]


@pytest.mark.parametrize('n_classes', [10, 100])
def test_cifar_cnn_shapes_match_table1(n_classes):
    model = build_model('cifar_cnn', n_classes)
    trace = model.trace(np.zeros((2, 3, 32, 32), np.float32))
    assert [name for name, _ in trace] == [n for n, _ in TABLE1] + ['linear']
    for (name, h), (ref_name, shape) in zip(trace, TABLE1):
        assert h.shape[1:] == shape, name
    assert trace[-1][1].shape == (2, n_classes)


def test_cifar_cnn_kernels_and_names():
    model = build_model('cifar_cnn', 10)
    ks = {name: getattr(model, name).conv.W.shape[2:] for name in model.LAYERS}
    assert ks == {'conv1': (5, 5), 'conv2': (5, 5), 'conv3': (5, 5), 'conv4': (3, 3)}
    sites = model.normalization_sites()
    assert sites['conv3'] == ['conv3/bn']
    assert all(isinstance(getattr(model, n).bn, L.BatchNormalization) for n in model.LAYERS)


def test_registry_rejects_unknown_model():
    assert 'cifar_cnn' in MODELS
    with pytest.raises(ValueError, match='available: cifar_cnn, densenet, inception_v3'):
        build_model('resnet', 10)
