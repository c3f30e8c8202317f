"""Model registry: name -> constructor (one architecture per file).

``build_model(name, n_classes, **kwargs)``; ``MODELS`` lists the names.
"""
from experiments.models.cifar_cnn import CifarCNN

MODELS = {
    'cifar_cnn': CifarCNN,
}


def build_model(name, n_classes, **kwargs):
    if name not in MODELS:
        raise ValueError('unknown model %r; available: %s' % (name, ', '.join(sorted(MODELS))))
    return MODELS[name](n_classes=n_classes, **kwargs)
