"""Experiment configs: load, merge presets, validate.

A row of a paper table is ``configs/<table>/<dataset>/<row>.yaml``.  Loading it merges,
in order, every ``base.yaml`` from ``configs/<table>/`` down to the row's folder, then
the row file, then the presets asked for (``configs/presets/<name>.yaml``), then
``--set key.path=value`` overrides.  The result is validated against :data:`SCHEMA`:
an unknown key, a wrong type or a bad value raises :class:`ConfigError` naming the key
and the file(s) it came from.
"""
import copy
import difflib
import os

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_ROOT = os.path.join(REPO_ROOT, 'configs')
PRESET_DIR = os.path.join(CONFIG_ROOT, 'presets')


class ConfigError(ValueError):
    """A config problem; the message names the key and the file."""


# --------------------------------------------------------------------------- schema
# A leaf is (types, default, check) where check(value) returns an error string or None.
# A dict is a nested section.  ``OPTIONAL_SECTION`` sections may be null.

def _positive(v):
    return None if v > 0 else 'must be > 0'


def _non_negative(v):
    return None if v >= 0 else 'must be >= 0'


def _fraction(v):
    return None if 0 < v <= 1 else 'must be in (0, 1]'


def _choice(*options):
    def check(v):
        return None if v in options else 'must be one of %s' % ', '.join(map(repr, options))
    return check


def _subset(v):
    if v is None or (isinstance(v, int) and v > 0):
        return None
    if isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) and i > 0 for i in v):
        return None
    return 'must be null, a positive integer, or [n_train, n_test]'


def _fractions(v):
    if isinstance(v, list) and all(isinstance(f, (int, float)) and 0 < f <= 1 for f in v):
        return None
    return 'must be a list of fractions in (0, 1]'


def _layers(v):
    if isinstance(v, list) and v and all(isinstance(s, str) and s for s in v):
        return None
    return 'must be a non-empty list of layer names'


REQUIRED = object()   # a leaf default meaning "must be given"
NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_STR = (str, type(None))
OPT_INT = (int, type(None))

SCHEMA = {
    'experiment': (str, REQUIRED, None),
    'row': (str, REQUIRED, None),
    'description': (str, '', None),
    'smoke': (bool, False, None),
    'model': {
        'name': (str, REQUIRED, None),
        'kwargs': (dict, {}, None),
    },
    'data': {
        'dataset': (str, REQUIRED, _choice('cifar10', 'cifar100', 'synthetic')),
        'data_dir': (OPT_STR, None, None),
        'download': (bool, False, None),
        'batch_size': (int, REQUIRED, _positive),
        'test_batch_size': (OPT_INT, None, None),
        'augment': (bool, True, None),
        'subset': ((int, list, type(None)), None, _subset),
    },
    'optimizer': {
        'name': (str, REQUIRED, _choice('rmsprop_momentum', 'nesterov', 'momentum_sgd', 'adam')),
        'lr': (NUM, REQUIRED, _positive),
        'momentum': (NUM, 0.9, _non_negative),
        'weight_decay': (NUM, 0.0, _non_negative),
        'rho': (NUM, 0.9, _fraction),
        'eps': (OPT_NUM, None, None),
        'beta1': (NUM, 0.9, _non_negative),
        'beta2': (NUM, 0.999, _fraction),
    },
    'schedule': {
        'type': (str, 'constant', _choice('constant', 'staircase', 'multistep')),
        'rate': (OPT_NUM, None, _positive),
        'every_epochs': (OPT_NUM, None, _positive),
        'factor': (OPT_NUM, None, _positive),
        'at': ((list, type(None)), None, _fractions),
    },
    'mn': {
        'layers': (list, REQUIRED, _layers),
        'n_components': (int, 3, _positive),
        'em_iters': (int, 2, _non_negative),
        'fit_fraction': (NUM, 1.0, _fraction),
        'min_weight': (NUM, 0.01, _non_negative),
        'queue_length': (int, 10, _positive),
        'decay': (NUM, 0.9, _fraction),
        'affine': (OPT_STR, 'channel', _choice('channel', 'component', None)),
        'lambda_scaling': (bool, True, None),
    },
    'train': {
        'epochs': (NUM, REQUIRED, _positive),
        'seed': (int, 0, _non_negative),
        'snapshot_every': (int, 10, _positive),
        'target_accuracy': (OPT_NUM, None, None),
        'checkpoints': (list, [0.25, 0.5, 0.75, 1.0], _fractions),
        'max_iterations': (OPT_INT, None, None),
        # MN layers (BN paths) whose fitted mixture is saved at 20/40/60/80/100 % of
        # training (paper Sec. 5.2, Figure 8)
        'save_mixtures': (list, [], None),
    },
    # GAN runs (experiments/gan.py, paper Sec. 4.5); null for classifiers.  A GAN run
    # lasts gan.updates generator updates; train.epochs / snapshot_every / checkpoints
    # are not used by it.  gan.fid: see experiments/fid.py.
    'gan': {
        'updates': (int, 100000, _positive),
        'snapshot_every': (int, 10000, _positive),
        'log_every': (int, 100, _positive),
        'grid': (int, 10, _positive),
        'target_fid': (OPT_NUM, None, _positive),
        'fid': {
            'enabled': (bool, True, None),
            'every': (int, 10000, _positive),
            'n_samples': (int, 10000, _positive),
            'n_real': (OPT_INT, None, _positive),
            'weights': (OPT_STR, None, None),
            'random_weights': (bool, False, None),
            'dims': (int, 2048, _choice(64, 192, 768, 2048)),
            'image_size': (int, 299, _positive),
            'batch_size': (int, 100, _positive),
            'cache_dir': (OPT_STR, None, None),
        },
    },
}
OPTIONAL_SECTIONS = ('mn', 'gan')


# ---------------------------------------------------------------------------- merge

def deep_merge(base, over):
    """``over`` merged into a copy of ``base`` (dicts recursively; ``None`` sections
    in ``over`` replace)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path):
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError('config file not found: %s' % path) from None
    except yaml.YAMLError as e:
        raise ConfigError('%s: not valid YAML: %s' % (path, e)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError('%s: a config must be a mapping of keys, got %s'
                          % (path, type(data).__name__))
    return data


def _base_chain(path):
    """``base.yaml`` files from the table folder down to ``path``'s folder."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    root = os.path.abspath(CONFIG_ROOT)
    chain = []
    while True:
        candidate = os.path.join(folder, 'base.yaml')
        if os.path.isfile(candidate) and candidate != path:
            chain.append(candidate)
        if folder == root or os.path.dirname(folder) == folder or \
                not os.path.abspath(folder).startswith(root):
            break
        folder = os.path.dirname(folder)
    return list(reversed(chain))


def parse_override(text):
    """``'train.epochs=3'`` -> (['train', 'epochs'], 3) (value parsed as YAML)."""
    if '=' not in text:
        raise ConfigError('override %r must look like key.path=value' % text)
    key, value = text.split('=', 1)
    return key.strip().split('.'), yaml.safe_load(value)


def load_config(path, presets=(), overrides=()):
    """Load, merge and validate a row config; returns a plain dict.

    ``config['_sources']`` lists the files merged (for error messages and records).
    """
    sources = _base_chain(path) + [os.path.abspath(path)]
    for name in presets:
        p = os.path.join(PRESET_DIR, name + '.yaml')
        if not os.path.isfile(p):
            available = sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith('.yaml'))
            raise ConfigError('unknown preset %r; available: %s' % (name, ', '.join(available)))
        sources.append(p)
    cfg = {}
    for src in sources:
        cfg = deep_merge(cfg, _read_yaml(src))
    cfg.setdefault('row', os.path.splitext(os.path.basename(path))[0])
    for text in overrides:
        keys, value = parse_override(text)
        node = cfg
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
        sources.append('--set %s' % text)
    cfg = validate(cfg, sources)
    cfg['_sources'] = [os.path.relpath(s, REPO_ROOT) if os.path.isabs(s) else s
                       for s in sources]
    return cfg


# ------------------------------------------------------------------------- validate

def _where(sources):
    return ', '.join(os.path.relpath(s, REPO_ROOT) if os.path.isabs(s) else s
                     for s in sources)


def _check_section(cfg, schema, prefix, sources):
    out = {}
    for key in cfg:
        if key.startswith('_'):
            continue
        if key not in schema:
            hint = difflib.get_close_matches(key, list(schema), n=1)
            raise ConfigError('%s: unknown key %r%s; valid keys here: %s' % (
                _where(sources), prefix + key,
                " (did you mean '%s'?)" % (prefix + hint[0]) if hint else '',
                ', '.join(sorted(schema))))
    for key, spec in schema.items():
        name = prefix + key
        if isinstance(spec, dict):
            value = cfg.get(key, {} if key not in OPTIONAL_SECTIONS else None)
            if value is None and key in OPTIONAL_SECTIONS:
                out[key] = None
                continue
            if not isinstance(value, dict):
                raise ConfigError('%s: %r must be a mapping, got %r' % (_where(sources), name,
                                                                       value))
            out[key] = _check_section(value, spec, name + '.', sources)
            continue
        types, default, check = spec
        if key not in cfg:
            if default is REQUIRED:
                raise ConfigError('%s: missing required key %r' % (_where(sources), name))
            out[key] = copy.deepcopy(default)
            continue
        value = cfg[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple)
                                                    else (types,)):
            raise ConfigError('%s: %r must be %s, got %r' % (_where(sources), name,
                                                            _type_name(types), value))
        if not isinstance(value, types):
            raise ConfigError('%s: %r must be %s, got %r' % (_where(sources), name,
                                                            _type_name(types), value))
        if check is not None and value is not None:
            err = check(value)
            if err:
                raise ConfigError('%s: %r %s, got %r' % (_where(sources), name, err, value))
        out[key] = value
    return out


def _type_name(types):
    types = types if isinstance(types, tuple) else (types,)
    names = {int: 'an integer', float: 'a number', str: 'a string', bool: 'true/false',
             list: 'a list', dict: 'a mapping', type(None): 'null'}
    return ' or '.join(names.get(t, t.__name__) for t in types)


def validate(cfg, sources=('<dict>',)):
    """Check ``cfg`` against :data:`SCHEMA`; returns it with defaults filled in."""
    out = _check_section(cfg, SCHEMA, '', sources)
    sched = out['schedule']
    if sched['type'] == 'multistep' and not sched['at']:
        raise ConfigError("%s: 'schedule.at' must list the drop points (fractions of the "
                          "epochs) for a multistep schedule" % _where(sources))
    return out


def check_layers(cfg, model, sources=None):
    """Every ``mn.layers`` name must be a layer of ``model`` (error lists valid names)."""
    if not cfg.get('mn'):
        return []
    from mixnorm.placement import expand_names
    try:
        return expand_names(model, cfg['mn']['layers'])
    except ValueError as e:
        raise ConfigError('%s: mn.layers: %s' % (_where(sources or cfg.get('_sources', [])),
                                                 e)) from None


def dump(cfg):
    """The resolved config as YAML (without private keys)."""
    return yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith('_')},
                           sort_keys=False)
