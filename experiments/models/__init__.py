"""Model registry: name -> constructor (one architecture per file, imported on demand).

``build_model(name, n_classes, **kwargs)``; ``MODELS`` lists the names.  Every
classifier takes ``in_channels`` (3; 1 for Fashion-MNIST), the only change the input
of another dataset makes to the paper's architectures.  Every model
names its normalization sites with the paper's layer names (``normalization_sites()``),
which ``mixnorm.replace_batch_normalization`` and the configs' ``mn.layers`` use.
The registry holds the classifiers a config names in ``model.name``; the networks that
are not classifiers are built by their own modules: ``dcgan.build_dcgan`` (generator and
discriminator, Sec. 4.5) and ``fid_inception.FIDInceptionV3`` (the FID feature network,
loaded with its weights by ``experiments.fid.load_extractor``).
"""
import importlib

MODELS = {
    'cifar_cnn': 'experiments.models.cifar_cnn:CifarCNN',            # Table 1
    'inception_v3': 'experiments.models.inception_v3:InceptionV3',   # Sec. 4.3
    'densenet': 'experiments.models.densenet:DenseNet',              # Sec. 4.4, Table 7
}


def get_model_class(name):
    if name not in MODELS:
        raise ValueError('unknown model %r; available: %s' % (name, ', '.join(sorted(MODELS))))
    module, cls = MODELS[name].split(':')
    return getattr(importlib.import_module(module), cls)


def build_model(name, n_classes, **kwargs):
    return get_model_class(name)(n_classes=n_classes, **kwargs)
