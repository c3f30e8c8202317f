"""Placing MN in a model by name: ``replace_batch_normalization``.

Names are either link paths of ``BatchNormalization`` links relative to the model
(``'bn3'``, ``'block1/bn'``, as ``model.namedlinks(skipself=True)`` spells them without
the leading slash), or aliases that the model defines for the paper's layer names
(``'conv3'``, ``'inc2/0'``, ``'transition1'``): a model may provide
``normalization_sites()`` returning ``{alias: [bn path, ...]}``, e.g. mapping
``'inc2/0'`` to the last BN of each branch of that Inception layer (Table 4 caption).
"""
from mixnorm import _compat  # noqa: F401

import chainer
import chainer.links as L

from mixnorm.links import MixtureNormalization


def batch_normalization_paths(model):
    """Paths (no leading slash) of every ``BatchNormalization`` link in ``model``."""
    return [path.lstrip('/') for path, link in model.namedlinks(skipself=True)
            if isinstance(link, L.BatchNormalization)]


def normalization_sites(model):
    """``{name: [bn paths]}``: the model's aliases plus every BN path as itself."""
    sites = {p: [p] for p in batch_normalization_paths(model)}
    if hasattr(model, 'normalization_sites'):
        for alias, paths in model.normalization_sites().items():
            sites[alias] = [p.lstrip('/') for p in paths]
    return sites


def expand_names(model, names):
    """Expand layer names (aliases or BN paths) into the BN paths they stand for.

    Raises ``ValueError`` naming the unknown names and listing the valid ones.
    """
    if isinstance(names, str):
        names = [names]
    sites = normalization_sites(model)
    unknown = [n for n in names if n.lstrip('/') not in sites]
    if unknown:
        aliases = sorted(set(sites) - set(batch_normalization_paths(model)))
        raise ValueError(
            'unknown normalization layer name(s) %s for %s. Valid names: %s%s'
            % (unknown, type(model).__name__,
               ('aliases ' + ', '.join(aliases) + '; BN links ') if aliases else '',
               ', '.join(batch_normalization_paths(model)) or '(the model has no BN links)'))
    paths = []
    for n in names:
        for p in sites[n.lstrip('/')]:
            if p not in paths:
                paths.append(p)
    return paths


def _replace_child(parent, name, new):
    if isinstance(parent, chainer.ChainList):
        idx = int(name)
        new.name = name
        parent._children[idx] = new
        layers = getattr(parent, '_layers', None)      # chainer.Sequential
        if layers is not None:
            for i, layer in enumerate(layers):
                if layer is parent._children[idx] or (
                        isinstance(layer, chainer.Link) and layer.name == name):
                    layers[i] = new
    else:
        delattr(parent, name)
        with parent.init_scope():
            setattr(parent, name, new)


def replace_batch_normalization(model, names, **mn_kwargs):
    """Swap the named ``BatchNormalization`` links of ``model`` for MN links in place.

    Each new :class:`MixtureNormalization` has the BN's size, dtype and device, the
    keyword arguments ``mn_kwargs`` (``n_components``, ``em_iters``, ...), and, with the
    default per-channel affine, the BN's current gamma and beta.  Returns the replaced
    BN paths.  Unknown names raise ``ValueError`` listing the valid ones.
    """
    paths = expand_names(model, names)
    links = dict((p.lstrip('/'), link) for p, link in model.namedlinks(skipself=True))
    for path in paths:
        bn = links[path]
        if not isinstance(bn, L.BatchNormalization):
            raise ValueError('%r is a %s, not a BatchNormalization' % (path, type(bn).__name__))
        size = bn.avg_mean.shape[0] if bn.avg_mean is not None else bn.gamma.shape[0]
        kwargs = dict(mn_kwargs)
        kwargs.setdefault('eps', bn.eps)
        kwargs.setdefault('dtype', bn.avg_mean.dtype if bn.avg_mean is not None else None)
        mn = MixtureNormalization(size, **kwargs)
        if mn.affine == 'channel' and getattr(bn, 'gamma', None) is not None \
                and bn.gamma.array is not None:
            mn.gamma.array[...] = chainer.backends.cuda.to_cpu(bn.gamma.array)
            mn.beta.array[...] = chainer.backends.cuda.to_cpu(bn.beta.array)
        mn.to_device(bn.device)
        parent_path, _, child = path.rpartition('/')
        parent = links[parent_path] if parent_path else model
        _replace_child(parent, child, mn)
    return paths
