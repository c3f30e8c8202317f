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

    Names are strings; an integer is read as the index of a child of a
    ``ChainList``/``Sequential`` (``0`` is ``'0'``).  Raises ``ValueError`` naming the
    unknown names and listing the valid ones, or naming the layers that already are
    :class:`MixtureNormalization`.
    """
    if isinstance(names, (str, int)):
        names = [names]
    names = [_name(n) for n in names]
    sites = normalization_sites(model)
    unknown = [n for n in names if n not in sites]
    if unknown:
        mn = dict((path.lstrip('/'), link) for path, link in model.namedlinks(skipself=True)
                  if isinstance(link, MixtureNormalization))
        already = [n for n in unknown if n in mn]
        if already:
            raise ValueError('%s already %s MixtureNormalization: nothing to replace (leave '
                             '%s out of the names)' % (', '.join(map(repr, already)),
                                                      'is a' if len(already) == 1 else 'are',
                                                      'it' if len(already) == 1 else 'them'))
        aliases = sorted(set(sites) - set(batch_normalization_paths(model)))
        raise ValueError(
            'unknown normalization layer name(s) %s for %s. Valid names: %s%s'
            % (unknown, type(model).__name__,
               ('aliases ' + ', '.join(aliases) + '; BN links ') if aliases else '',
               ', '.join(batch_normalization_paths(model)) or '(the model has no BN links)'))
    paths = []
    for n in names:
        for p in sites[n]:
            if p not in paths:
                paths.append(p)
    return paths


def _name(n):
    if isinstance(n, bool) or not isinstance(n, (str, int)):
        raise ValueError('a layer name must be a string (a BN path or an alias) or an '
                         'integer child index, got %r' % (n,))
    return str(n).lstrip('/')


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


def replace_batch_normalization(model, names, comm=None, **mn_kwargs):
    """Swap the named ``BatchNormalization`` links of ``model`` for MN links in place.

    Each new :class:`MixtureNormalization` takes the BN's configuration (its ``size``,
    or lazy size, ``decay``, ``eps``, ``axis``, parameter dtype, device, and whether it
    has gamma and beta) and its state: gamma and beta (with the per-channel affine),
    the running averages and ``N``, and the queue started from them, so that the new
    link's inference equals the BN's until it trains (:meth:`MixtureNormalization.
    copyparams`).  ``mn_kwargs`` (``n_components``, ``em_iters``, ...) are passed on
    and win over what is taken from the BN.  With a ChainerMN communicator ``comm`` the
    new links are :class:`mixnorm.distributed.MultiNodeMixtureNormalization` (the
    mixture of all processes' points); without it nothing distributed is imported.
    Returns the replaced BN paths.  Unknown names raise ``ValueError`` listing the
    valid ones.
    """
    paths = expand_names(model, names)
    links = dict((p.lstrip('/'), link) for p, link in model.namedlinks(skipself=True))
    for path in paths:
        bn = links[path]
        if not isinstance(bn, L.BatchNormalization):
            raise ValueError('%r is a %s, not a BatchNormalization' % (path, type(bn).__name__))
        kwargs = _configuration(bn, mn_kwargs)
        if comm is None:
            mn = MixtureNormalization(**kwargs)
        else:
            from mixnorm.distributed import MultiNodeMixtureNormalization
            mn = MultiNodeMixtureNormalization(kwargs.pop('size'), comm, **kwargs)
        mn.to_device(bn.device)
        if bn.avg_mean is not None:
            mn.take_batch_normalization_state(bn, parameters=mn.affine == 'channel')
        replace_link(model, path, mn, links)
    return paths


def replace_link(model, path, new, links=None):
    """Put ``new`` where the link at ``path`` of ``model`` is (``links``: the model's
    ``{path: link}``, if already at hand)."""
    if links is None:
        links = dict((p.lstrip('/'), link) for p, link in model.namedlinks(skipself=True))
    parent_path, _, child = path.rpartition('/')
    parent = links[parent_path] if parent_path else model
    _replace_child(parent, child, new)


def _configuration(bn, mn_kwargs):
    """MN constructor arguments that reproduce ``bn``'s configuration."""
    kwargs = dict(size=None if bn.avg_mean is None else bn.avg_mean.shape,
                  decay=bn.decay, eps=bn.eps, dtype=bn._highprec_dtype, axis=bn.axis,
                  use_gamma=getattr(bn, 'gamma', None) is not None,
                  use_beta=getattr(bn, 'beta', None) is not None)
    kwargs.update(mn_kwargs)
    return kwargs
