"""Placing MN in a model by name: ``replace_batch_normalization``.

Names are either link paths of ``BatchNormalization`` links relative to the model
(``'bn3'``, ``'block1/bn'``, as ``model.namedlinks(skipself=True)`` spells them without
the leading slash), or aliases that the model defines for the paper's layer names
(``'conv3'``, ``'inc2/0'``, ``'transition1'``): a model may provide
``normalization_sites()`` returning ``{alias: [bn path, ...]}``, e.g. mapping
``'inc2/0'`` to the last BN of each branch of that Inception layer (Table 4 caption).
"""
from mixnorm import _compat  # noqa: F401

import copy

import chainer
import chainer.links as L

from mixnorm.links import MixtureNormalization


def links_by_path(model):
    """``{path: link}`` of every link below ``model``, paths without the leading slash."""
    return {path.lstrip('/'): link for path, link in model.namedlinks(skipself=True)}


def batch_normalization_paths(model):
    """Paths (no leading slash) of every ``BatchNormalization`` link in ``model``."""
    return [path.lstrip('/') for path, link in model.namedlinks(skipself=True)
            if isinstance(link, L.BatchNormalization)]


def normalization_sites(model):
    """``{name: [bn paths]}``: the model's aliases, every BN path as itself, and
    ``'all'``, every BN (unless the model names something else so)."""
    paths = batch_normalization_paths(model)
    sites = {p: [p] for p in paths}
    sites['all'] = paths
    if hasattr(model, 'normalization_sites'):
        for alias, paths in model.normalization_sites().items():
            sites[alias] = [p.lstrip('/') for p in paths]
    return sites


def expand_names(model, names=None):
    """Expand layer names (aliases or BN paths) into the BN paths they stand for;
    ``None``: every BN of the model.

    Names are strings; an integer ``i`` is the layer ``model[i]``, as Chainer's users
    write it, of a ``Sequential`` (whose layers include functions) or a ``ChainList``.
    Raises ``ValueError`` naming the unknown names and listing the valid ones, or naming
    the layers that already are :class:`MixtureNormalization`.
    """
    if names is None:
        return batch_normalization_paths(model)
    if isinstance(names, (str, int)):
        names = [names]
    if not isinstance(names, (list, tuple)):
        raise ValueError('names must be None (every BN), a layer name or a list of them, '
                         'got %r' % (names,))
    names = [_position(model, n) if isinstance(n, int) and not isinstance(n, bool)
             else _name(n) for n in names]
    sites = normalization_sites(model)
    unknown = [n for n in names if n not in sites]
    if unknown:
        already = [n for n in unknown
                   if isinstance(links_by_path(model).get(n), MixtureNormalization)]
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


def _position(model, i):
    """The path of ``model[i]`` for an integer ``i`` (a ``Sequential``'s layers count
    its functions too; Chainer names its links by their order among links)."""
    if not isinstance(model, chainer.ChainList):
        raise ValueError('layer %d: integer positions name the layers of a Sequential or '
                         'ChainList; %s is neither, use the BN paths'
                         % (i, type(model).__name__))
    try:
        layer = model[i]
    except IndexError:
        raise ValueError('layer %d: %s has %d layers' % (i, type(model).__name__,
                                                         len(model))) from None
    if not isinstance(layer, chainer.Link):
        raise ValueError('layer %d of %s is %r, not a BatchNormalization link'
                         % (i, type(model).__name__, layer))
    return layer.name


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


def replace_batch_normalization(model, names=None, comm=None, **mn_kwargs):
    """Swap the named ``BatchNormalization`` links of ``model`` (``names=None``: every
    one) for MN links in place.

    Each new :class:`MixtureNormalization` takes the BN's configuration (its ``size``,
    or lazy size, ``decay``, ``eps``, ``axis``, parameter dtype, device, and whether it
    has gamma and beta) and its state: gamma and beta (with the per-channel affine),
    the running averages and ``N``, and, when the BN has seen data (its averages are
    not its initial 0 and 1, :func:`has_statistics`), the queue started from them, so
    that the new link's inference equals the BN's until it trains; a BN that has seen
    no data (a model just built) starts no queue.  ``mn_kwargs`` (``n_components``, ``em_iters``, ...) are passed on
    and win over what is taken from the BN.  With a ChainerMN communicator ``comm`` the
    new links are :class:`mixnorm.distributed.MultiNodeMixtureNormalization` (the
    mixture of all processes' points); without it nothing distributed is imported.

    An optimizer set up before the swap goes on training the new parameters: each takes
    the update rule of the BN parameter it replaces (its hyperparameters, hooks, and its
    state where the shapes agree).  Every MN link of the model learns its path, which
    its messages name (:func:`name_layers`).  Returns the replaced BN paths.  Unknown
    names raise ``ValueError`` listing the valid ones.
    """
    paths = expand_names(model, names)
    links = links_by_path(model)
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
            mn.take_batch_normalization_state(bn, parameters=mn.affine == 'channel',
                                              start_queue=has_statistics(bn))
        _carry_update_rules(bn, mn)
        replace_link(model, path, mn, links)
    name_layers(model)
    return paths


def has_statistics(bn):
    """Whether ``bn``'s running averages hold statistics (they differ from BN's
    initial mean 0 and variance 1): a BN that has seen no data starts no queue."""
    return bool((bn.avg_mean != 0).any() | (bn.avg_var != 1).any())


def name_layers(model):
    """Tell every MN link of ``model`` its path (``'block1/bn'``), which its errors and
    notices name; returns ``{path: link}``."""
    found = {}
    for path, link in model.namedlinks(skipself=True):
        if isinstance(link, MixtureNormalization):
            link.path = path.lstrip('/')
            found[link.path] = link
    return found


def _carry_update_rules(bn, mn):
    """The update rules of ``bn``'s gamma and beta (an optimizer set up before the
    swap) for ``mn``'s: the same hyperparameters and hooks, the state (e.g. momentum)
    where the shapes agree, a fresh state where they do not."""
    for name in ('gamma', 'beta'):
        src, dst = getattr(bn, name, None), getattr(mn, name, None)
        if src is None or dst is None or src.update_rule is None:
            continue
        rule = copy.copy(src.update_rule)
        state = src.update_rule.state
        if state is not None and all(getattr(v, 'shape', dst.shape) == dst.shape
                                     for v in state.values()):
            rule._state = {k: copy.deepcopy(v) for k, v in state.items()}
        else:
            rule._state = None
        rule._fp32_param = None
        dst.update_rule = rule


def replace_link(model, path, new, links=None):
    """Put ``new`` where the link at ``path`` of ``model`` is (``links``: the model's
    ``{path: link}``, if already at hand)."""
    if links is None:
        links = links_by_path(model)
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
