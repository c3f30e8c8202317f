"""Experiment configs: load, merge presets, validate.

A row of a paper table is ``configs/<table>/<dataset>/<row>.yaml``.  Loading it merges,
in order, the ``base.yaml`` of the folder above the row's folder (the table's), the
``base.yaml`` of the row's own folder (the dataset's), the row file, the presets asked
for (``configs/presets/<name>.yaml``) and ``--set key.path=value`` overrides.  The
``base.yaml`` files are found next to the config wherever it lies, so a copy of a table's
folder works outside ``configs/`` too.

The result is validated against :data:`SCHEMA`, the one place that checks settings and
supplies their defaults: an unknown key, a wrong type or a bad value raises
:class:`ConfigError` naming the key and the source that set it (a file or a ``--set``).
Every leaf states the values it allows with the constraint classes of
:mod:`mixnorm.settings` (:class:`Leaf`), and the ``mn`` section takes MN's settings from
:data:`mixnorm.settings.SETTINGS` whole, so that the config and the link check them
alike and say the same words.  The schema's leaves also carry what a key means for the
records (:data:`NEUTRAL`, :data:`JUDGED`, :data:`RESUME_FREE`;
:func:`keys_flagged`).  Builders (``experiments.optimizers``, ``experiments.train``)
take the validated sections as they are.  Numbers may be written in scientific notation
(``1e-3``), in files and in ``--set``.
"""
import copy
import difflib
import math
import numbers
import os
import re
from typing import NamedTuple

import yaml

from mixnorm import placement
from mixnorm import settings as mn_settings
from mixnorm.settings import Boolean, InstanceOf, Interval, Options

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_ROOT = os.path.join(REPO_ROOT, 'configs')
PRESET_DIR = os.path.join(CONFIG_ROOT, 'presets')
BASE_NAME = 'base.yaml'


class ConfigError(ValueError):
    """A config problem; the message names the key and the file."""


# ----------------------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3`` as a number (YAML 1.2) rather than as the
    string YAML 1.1 makes of an exponent without a dot."""


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$'),
    list('-+0123456789'))


def yaml_load(stream):
    """YAML text or stream -> Python objects (safe; ``1e-3`` is a float)."""
    return yaml.load(stream, Loader=_Loader)


# --------------------------------------------------------------------------- schema
# A leaf of the schema is a :class:`Leaf` (made by :func:`leaf`): the values it allows,
# stated with the constraint classes of :mod:`mixnorm.settings` (``Interval``,
# ``Options``, ``Boolean``, ``InstanceOf``; ``None`` allows null) and, for strings and
# lists, :class:`Text` and :class:`ListOf`, which follow their protocol; its default; and
# its flags, which tell the verdict (experiments/verdict.py) what the key means for a run.
# A dict is a nested section; ``OPTIONAL_SECTIONS`` sections may be null.

#: Overriding the key does not change what a run measures (paths, seeds, bookkeeping);
#: an override of any other key makes a run not the paper's row, unless it is JUDGED.
NEUTRAL = 'neutral'
#: The key changes what a run measures and the records judge it by itself (the dataset,
#: its size, the length of training, the FID network).
JUDGED = 'judged'
#: The key may differ between a run's config.yaml and the config resuming it: where the
#: data or the FID weights are found does not change the run.
RESUME_FREE = 'resume-free'
_FREE = (NEUTRAL, RESUME_FREE)

REQUIRED = object()   # a leaf default meaning "must be given"


class Text(NamedTuple):
    """A string; ``nonempty``: of one character at least.  A constraint as those of
    :mod:`mixnorm.settings` (``accepts``, ``convert``, its phrase as ``str``)."""
    nonempty: bool = False

    def accepts(self, value):
        return isinstance(value, str) and (bool(value) or not self.nonempty)

    def convert(self, value):
        return value

    def __str__(self):
        return 'a non-empty string' if self.nonempty else 'a string'


class ListOf(NamedTuple):
    """A list whose length ``length`` (an ``Interval`` of ints) allows and whose every
    item ``item`` (a constraint) allows.  A constraint as :class:`Text`."""
    item: object
    length: Interval = Interval(numbers.Integral, 0, math.inf, 'left')

    def accepts(self, value):
        return isinstance(value, list) and self.length.accepts(len(value)) and \
            all(self.item.accepts(v) for v in value)

    def convert(self, value):
        return value

    def __str__(self):
        n, each = self.length, _phrase(self.item)
        if n.low == n.high:
            return 'a list of %d items, each %s' % (n.low, each)
        if n.high == math.inf:
            return '%s, each item %s' % ('a list' if n.accepts(0) else 'a non-empty list', each)
        return 'a list of length %s, each item %s' % (_limit(n), each)


class Leaf(NamedTuple):
    """A leaf of the schema: ``allows`` (a tuple of constraints), ``default``
    (:data:`REQUIRED`: must be given), ``flags`` (:data:`NEUTRAL`, :data:`JUDGED`,
    :data:`RESUME_FREE`), ``meaning`` (said after the limit in a message) and ``setting``
    (the :class:`mixnorm.settings.Setting` an ``mn`` key is: its messages are the
    link's own words)."""
    allows: tuple
    default: object = REQUIRED
    flags: tuple = ()
    meaning: str = None
    setting: object = None

    def problem(self, value):
        """``'must be ...'`` when ``value`` is not allowed, else None."""
        if mn_settings.accepts(self.allows, value):
            return None
        if self.setting is not None:
            return self.setting.requirement()
        return 'must be %s%s' % (_requirement(self.allows, value),
                                 ' (%s)' % self.meaning if self.meaning else '')


def leaf(*allows, default=REQUIRED, flags=(), meaning=None):
    """A :class:`Leaf` allowing any of ``allows``; ``flags``: one flag or a tuple."""
    return Leaf(allows, default, (flags,) if isinstance(flags, str) else tuple(flags), meaning)


def _limit(c):
    """The bounds of an ``Interval`` as a message says them: ``'> 0'``, ``'>= 75'``,
    ``'in [0, 1)'``; ``''`` when it has none."""
    low, high = c.low != -math.inf, c.high != math.inf
    left, right = c.closed in ('both', 'left'), c.closed in ('both', 'right')
    if low and high:
        return 'in %s%g, %g%s' % ('[' if left else '(', c.low, c.high, ']' if right else ')')
    if low:
        return '%s %g' % ('>=' if left else '>', c.low)
    if high:
        return '%s %g' % ('<=' if right else '<', c.high)
    return ''


def _phrase(c):
    """What constraint ``c`` allows, in the words of a config message."""
    if c is None:
        return 'null'
    if isinstance(c, Interval):
        limit = _limit(c)
        return '%s%s' % ('an integer' if c.kind is numbers.Integral else 'a number',
                         ' ' + limit if limit else '')
    if isinstance(c, Boolean):
        return 'true or false'
    return str(c)


def _requirement(allows, value):
    """What a leaf allowing ``allows`` requires of ``value``, which it refuses: only the
    bounds when ``value`` is a number of the right kind (``'> 0'``), else every
    alternative (``'an integer > 0 or null'``)."""
    intervals = [c for c in allows if isinstance(c, Interval)]
    reals = [c for c in intervals if c.kind is numbers.Real]
    if isinstance(value, float) and not math.isfinite(value) and reals:
        limit = _limit(reals[0])
        return 'a finite number' + (' ' + limit if limit else '')
    near = [c for c in intervals if Interval(c.kind, -_inf, _inf, 'neither').accepts(value)]
    parts = [_limit(c) for c in near] if near else [_phrase(c) for c in allows]
    return parts[0] if len(parts) == 1 else '%s or %s' % (', '.join(parts[:-1]), parts[-1])


_INT, _REAL, _inf = numbers.Integral, numbers.Real, math.inf
POSITIVE = Interval(_REAL, 0, _inf, 'neither')
POSITIVE_INT = Interval(_INT, 0, _inf, 'neither')
NON_NEGATIVE = Interval(_REAL, 0, _inf, 'left')
NON_NEGATIVE_INT = Interval(_INT, 0, _inf, 'left')
NUMBER = Interval(_REAL, -_inf, _inf, 'neither')
DECAY = Interval(_REAL, 0, 1, 'left')                   # a decay rate: [0, 1)
FRACTION = Interval(_REAL, 0, 1, 'right')               # (0, 1]
NON_EMPTY = Interval(_INT, 1, _inf, 'left')             # the length of a non-empty list
STRING = Text()
BOOL = Boolean()
MAPPING = InstanceOf(dict, 'a mapping')
FRACTIONS = ListOf(FRACTION, NON_EMPTY)

#: MN's settings (:data:`mixnorm.settings.SETTINGS`) that an ``mn`` section does not
#: hold, and where each comes from.
MN_SETTINGS_SET_ELSEWHERE = {
    'eps': 'the eps of the BatchNormalization each MN layer replaces',
    'seed': 'derived for each layer from train.seed',
}
#: the keys of an ``mn`` section that place MN in the model (the rest are MN's settings)
MN_PLACEMENT_KEYS = ('layers', 'convert_at_epoch')

SCHEMA = {
    'experiment': leaf(STRING),
    'row': leaf(STRING),
    'description': leaf(STRING, default='', flags=_FREE),
    'smoke': leaf(BOOL, default=False, flags=JUDGED),
    # written by the run (experiments/parallel.py): how many processes trained it, with
    # which ChainerMN communicator, and each one's part of data.batch_size
    'world_size': leaf(POSITIVE_INT, default=1),
    'communicator': leaf(STRING, None, default=None),
    'per_rank_batch_size': leaf(POSITIVE_INT, None, default=None),
    'model': {
        'name': leaf(STRING),
        'kwargs': leaf(MAPPING, default={}),
    },
    'data': {
        'dataset': leaf(Options(('cifar10', 'cifar100', 'fashion-mnist', 'synthetic')),
                       flags=JUDGED),
        'data_dir': leaf(STRING, None, default=None, flags=_FREE),
        'download': leaf(BOOL, default=False, flags=_FREE),
        'batch_size': leaf(POSITIVE_INT),
        'test_batch_size': leaf(POSITIVE_INT, None, default=None, flags=NEUTRAL),
        'augment': leaf(BOOL, default=True),
        # the augmentation (with augment: true): random crops of the image padded by
        # crop_pad pixels (0: none), and horizontal flips
        'crop_pad': leaf(NON_NEGATIVE_INT, default=4),
        'flip': leaf(BOOL, default=True),
        'subset': leaf(POSITIVE_INT, ListOf(POSITIVE_INT, Interval(_INT, 2, 2, 'both')), None,
                      default=None, flags=JUDGED, meaning='n_train, or [n_train, n_test]'),
    },
    # which keys apply to which optimizer: OPTIMIZER_KEYS
    'optimizer': {
        'name': leaf(Options(('rmsprop_momentum', 'nesterov', 'momentum_sgd', 'adam'))),
        'lr': leaf(POSITIVE),                            # Adam's alpha
        'weight_decay': leaf(NON_NEGATIVE, default=0.0),
        'momentum': leaf(DECAY, default=0.9),
        'rho': leaf(DECAY, default=0.9),                 # RMSprop's decay of the mean square
        'eps': leaf(NON_NEGATIVE, default=1e-8),
        'ms_init': leaf(NON_NEGATIVE, default=1.0),      # RMSprop's initial mean square (TF1: 1)
        'beta1': leaf(DECAY, default=0.9),
        'beta2': leaf(DECAY, default=0.999),
    },
    # which keys apply to which schedule type: SCHEDULE_KEYS
    'schedule': {
        'type': leaf(Options(('constant', 'staircase', 'multistep')), default='constant'),
        'rate': leaf(POSITIVE),
        'every_epochs': leaf(POSITIVE),
        'factor': leaf(POSITIVE),
        'at': leaf(FRACTIONS),
    },
    # the layers, and MN's settings as mixnorm.settings defines them (the values each
    # allows, its default and the words of its messages), but those of
    # MN_SETTINGS_SET_ELSEWHERE
    'mn': {
        'layers': leaf(ListOf(Text(nonempty=True), NON_EMPTY)),
        # train with BN until this epoch ends, then convert those layers to MN (their
        # statistics and optimizer state carried over); None: MN from the start
        'convert_at_epoch': leaf(POSITIVE_INT, None, default=None),
        **{name: Leaf(s.constraints, s.default, setting=s)
           for name, s in mn_settings.SETTINGS.items()
           if name not in MN_SETTINGS_SET_ELSEWHERE},
    },
    'train': {
        'epochs': leaf(POSITIVE, flags=JUDGED),
        'seed': leaf(NON_NEGATIVE_INT, default=0, flags=NEUTRAL),
        'snapshot_every': leaf(POSITIVE_INT, default=10, flags=NEUTRAL),
        'target_accuracy': leaf(NUMBER, None, default=None, flags=NEUTRAL),
        'checkpoints': leaf(FRACTIONS, default=[0.25, 0.5, 0.75, 1.0], flags=NEUTRAL),
        'max_iterations': leaf(POSITIVE_INT, None, default=None, flags=JUDGED),
        # MN layers (BN paths) whose fitted mixture is saved at 20/40/60/80/100 % of
        # training (paper Sec. 5.2, Figure 8)
        'save_mixtures': leaf(ListOf(Text(nonempty=True)), default=[], flags=NEUTRAL),
        # with several processes: BN and MN normalize over the global batch (the
        # paper's); false normalizes each process's part alone (not the paper's setting)
        'sync_normalization': leaf(BOOL, default=True, flags=JUDGED),
    },
    # GAN runs (experiments/gan.py, paper Sec. 4.5); null for classifiers.  A GAN run
    # lasts gan.updates generator updates; train.epochs / snapshot_every / checkpoints
    # are not used by it.  gan.fid: see experiments/fid.py.
    'gan': {
        'updates': leaf(POSITIVE_INT, default=100000, flags=JUDGED),
        'snapshot_every': leaf(POSITIVE_INT, default=10000, flags=NEUTRAL),
        'log_every': leaf(POSITIVE_INT, default=100, flags=NEUTRAL),
        'grid': leaf(POSITIVE_INT, default=10, flags=NEUTRAL),
        'target_fid': leaf(POSITIVE, None, default=None, flags=NEUTRAL),
        'fid': {
            'enabled': leaf(BOOL, default=True, flags=JUDGED),
            'every': leaf(POSITIVE_INT, default=10000),
            'n_samples': leaf(POSITIVE_INT, default=10000),
            'n_real': leaf(POSITIVE_INT, None, default=None),
            'weights': leaf(STRING, None, default=None, flags=_FREE),
            'random_weights': leaf(BOOL, default=False, flags=JUDGED),
            'dims': leaf(Options((64, 192, 768, 2048)), default=2048),
            'image_size': leaf(Interval(_INT, 75, _inf, 'left'), default=299,
                              meaning='the smallest input of Inception-V3'),
            'batch_size': leaf(POSITIVE_INT, default=100, flags=NEUTRAL),
            'cache_dir': leaf(STRING, None, default=None, flags=_FREE),
        },
    },
}
OPTIONAL_SECTIONS = ('mn', 'gan')

#: The keys each optimizer uses (besides name, lr, weight_decay); giving a key of another
#: optimizer is an error, and in the validated section such keys are null.
OPTIMIZER_KEYS = {
    'rmsprop_momentum': ('momentum', 'rho', 'eps', 'ms_init'),
    'nesterov': ('momentum',),
    'momentum_sgd': ('momentum',),
    'adam': ('beta1', 'beta2', 'eps'),
}
#: The keys each schedule type uses (all required; the others are null).
SCHEDULE_KEYS = {
    'constant': (),
    'staircase': ('rate', 'every_epochs'),
    'multistep': ('factor', 'at'),
}
#: section -> (the key that selects the variant, {variant: keys it uses}, keys always used)
VARIANTS = {
    'optimizer': ('name', OPTIMIZER_KEYS, ('name', 'lr', 'weight_decay')),
    'schedule': ('type', SCHEDULE_KEYS, ('type',)),
}


def keys_flagged(flag, schema=None, prefix=''):
    """The dotted keys of the schema's leaves that carry ``flag`` (:data:`NEUTRAL`,
    :data:`JUDGED` or :data:`RESUME_FREE`), in schema order."""
    keys = []
    for key, spec in (SCHEMA if schema is None else schema).items():
        if isinstance(spec, dict):
            keys += keys_flagged(flag, spec, prefix + key + '.')
        elif flag in spec.flags:
            keys.append(prefix + key)
    return tuple(keys)


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


def _rows_below(folder):
    """Row configs in ``folder`` and one level below it, for messages."""
    rows = []
    for sub in [''] + sorted(d for d in os.listdir(folder)
                             if os.path.isdir(os.path.join(folder, d))):
        here = os.path.join(folder, sub)
        rows += [os.path.join(folder, sub, f) for f in sorted(os.listdir(here))
                 if f.endswith('.yaml') and f != BASE_NAME]
    return rows


def _read_yaml(path):
    if os.path.isdir(path):
        rows = _rows_below(path)
        raise ConfigError('%s is a folder, not a config file: pass one row config%s' % (
            relative_source(path), ', e.g. %s (%d in this folder)' % (
                relative_source(rows[0]), len(rows)) if rows
            else ' (configs/<table>/<dataset>/<row>.yaml)'))
    try:
        with open(path) as f:
            data = yaml_load(f)
    except FileNotFoundError:
        raise ConfigError('config file not found: %s' % path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError('%s: cannot read the config (%s)' % (path, e)) from None
    except yaml.YAMLError as e:
        raise ConfigError('%s: not valid YAML: %s' % (path, e)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError('%s: a config must be a mapping of keys, got %s'
                          % (path, type(data).__name__))
    return data


def base_chain(path):
    """The ``base.yaml`` files a row config inherits, outermost first: the one in the
    folder above the row's folder (``configs/<table>/``) and the one in the row's own
    folder (``configs/<table>/<dataset>/``), where they exist.  Resolved from the row
    file's own location, so a copied table folder keeps its inheritance."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    chain = [os.path.join(d, BASE_NAME) for d in (os.path.dirname(folder), folder)]
    return [c for c in chain if os.path.isfile(c) and c != path]


def parse_override(text):
    """``'train.epochs=3'`` -> (['train', 'epochs'], 3) (value parsed as YAML, so
    ``1e-2`` is a number and ``[64, 32]`` a list)."""
    if '=' not in text:
        raise ConfigError('override %r must look like key.path=value' % text)
    key, value = text.split('=', 1)
    keys = key.strip().split('.')
    if not all(keys):
        raise ConfigError('override %r: empty key in %r' % (text, key))
    try:
        return keys, yaml_load(value)
    except yaml.YAMLError as e:
        raise ConfigError('override %r: the value is not valid YAML (%s)'
                          % (text, str(e).splitlines()[0])) from None


def load_config(path, presets=(), overrides=()):
    """Load, merge and validate a row config; returns a plain dict.

    ``config['_sources']`` lists the files merged and the overrides (for records), and
    ``config['_origins']`` maps each dotted key to the one of them that set it last
    (an error about a key names that source).
    """
    sources = base_chain(path) + [os.path.abspath(path)]
    for name in presets:
        p = os.path.join(PRESET_DIR, name + '.yaml')
        if not os.path.isfile(p):
            available = sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith('.yaml'))
            raise ConfigError('unknown preset %r; available: %s' % (name, ', '.join(available)))
        sources.append(p)
    cfg, origins = {}, {}
    for src in sources:
        data = _read_yaml(src)
        _note_origins(origins, data, '', src)
        cfg = deep_merge(cfg, data)
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
        _note_origins(origins, value, '.'.join(keys), sources[-1], replace=True)
    cfg = validate(cfg, Sources(sources, origins))
    cfg['_sources'] = [relative_source(s) for s in sources]
    cfg['_origins'] = {k: relative_source(v) for k, v in origins.items()}
    return cfg


class Sources(list):
    """The files and overrides a config was merged from, in order, with ``origins``:
    dotted key -> the source that set it last."""

    def __init__(self, sources, origins=None):
        super().__init__(sources)
        self.origins = dict(origins or {})

    def of(self, key):
        """The source that set ``key`` or the section holding it, or None."""
        parts = key.split('.')
        for n in range(len(parts), 0, -1):
            found = self.origins.get('.'.join(parts[:n]))
            if found is not None:
                return found
        return None


def _note_origins(origins, value, key, source, replace=False):
    """Record ``source`` as the origin of every leaf of ``value`` set at ``key``
    (``''``: the top level).  A leaf, or with ``replace`` (an override) any value,
    replaces what was recorded below ``key``; a mapping in a file merges into it."""
    if replace or not isinstance(value, dict):
        for old in [k for k in origins if k == key or k.startswith(key + '.')]:
            del origins[old]
    if isinstance(value, dict):
        for k, v in value.items():
            _note_origins(origins, v, '%s.%s' % (key, k) if key else str(k), source)
    else:
        origins[key] = source


def _sources_of(cfg):
    """The :class:`Sources` of a loaded config (``_sources`` and ``_origins``)."""
    return Sources(cfg.get('_sources') or ['<config>'], cfg.get('_origins'))


def relative_source(source):
    """A source as records name it: files relative to the repository root."""
    if os.path.isabs(source) and (source + os.sep).startswith(REPO_ROOT + os.sep):
        return os.path.relpath(source, REPO_ROOT)
    return source


# ------------------------------------------------------------------------- validate

def _where(sources, *keys):
    """Where ``keys`` were set: the source(s) that set them when known (a
    :class:`Sources`), else every source."""
    of = getattr(sources, 'of', None)
    found = [of(k) for k in keys] if of else []
    named = list(dict.fromkeys(f for f in found if f is not None))
    return ', '.join(relative_source(s) for s in (named or sources))


def _missing_key_message(name, sources):
    msg = '%s: missing required key %r' % (_where(sources), name)
    files = [s for s in sources if not s.startswith('--set')
             and os.path.dirname(os.path.abspath(s)) != os.path.abspath(PRESET_DIR)]
    # 'experiment' is set by every table's base.yaml and by no row: a row without it
    # has lost its inheritance
    if name == 'experiment' and files and not any(os.path.basename(s) == BASE_NAME
                                                  for s in files):
        folder = os.path.dirname(os.path.abspath(files[-1]))
        msg += (' (no %s in %s or %s: a row file holds only what makes it that row and '
                'inherits the rest from its table\'s %s; copy the whole configs/<table>/ '
                'folder rather than the row file alone, or write %r into it)'
                % (BASE_NAME, folder, os.path.dirname(folder), BASE_NAME, name))
    return msg


def _check_leaf(name, value, spec, sources):
    problem = spec.problem(value)
    if problem:
        hint = ' (a number written as a string?)' if _looks_numeric(value) and any(
            isinstance(c, Interval) for c in spec.allows) else ''
        raise ConfigError('%s: %r %s, got %r%s' % (_where(sources, name), name, problem, value,
                                                  hint))
    return value


def _looks_numeric(value):
    """Whether ``value`` is a string that reads as a number (``'1e-3'``)."""
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def _used_keys(section, cfg, schema, prefix, sources):
    """The keys of a section with variants (:data:`VARIANTS`) that its chosen variant
    uses; a key of another variant given a value is an error."""
    selector, variants, common = VARIANTS[section]
    choice = cfg.get(selector, schema[selector].default)
    if choice not in variants:          # the selector's own check names the choices
        _check_leaf(prefix + selector, choice, schema[selector], sources)
    used = set(common) | set(variants[choice])
    for key in cfg:
        if key in schema and key not in used and cfg[key] is not None:
            raise ConfigError('%s: %r does not apply to %s %r (its keys: %s)' % (
                _where(sources, prefix + key, prefix + selector), prefix + key, selector,
                choice,
                ', '.join(sorted(used - {selector}))))
    return used


def _check_section(cfg, schema, prefix, sources):
    out = {}
    for key in cfg:
        if key.startswith('_'):
            continue
        if key not in schema:
            hint = difflib.get_close_matches(key, list(schema), n=1)
            elsewhere = MN_SETTINGS_SET_ELSEWHERE.get(key) if prefix == 'mn.' else None
            raise ConfigError('%s: unknown key %r%s; valid keys here: %s' % (
                _where(sources, prefix + key), prefix + key,
                ' (MN\'s %s is %s)' % (key, elsewhere) if elsewhere else
                " (did you mean '%s'?)" % (prefix + hint[0]) if hint else '',
                ', '.join(sorted(schema))))
    section = prefix.rstrip('.')
    used = _used_keys(section, cfg, schema, prefix, sources) if section in VARIANTS \
        else set(schema)
    for key, spec in schema.items():
        name = prefix + key
        if key not in used:
            out[key] = None                 # a key of another variant: not used
            continue
        if isinstance(spec, dict):
            value = cfg.get(key, {} if key not in OPTIONAL_SECTIONS else None)
            if value is None and key in OPTIONAL_SECTIONS:
                out[key] = None
                continue
            if not isinstance(value, dict):
                raise ConfigError('%s: %r must be a mapping, got %r'
                                  % (_where(sources, name), name, value))
            out[key] = _check_section(value, spec, name + '.', sources)
            continue
        if key not in cfg:
            if spec.default is REQUIRED:
                raise ConfigError(_missing_key_message(name, sources))
            out[key] = copy.deepcopy(spec.default)
            continue
        out[key] = _check_leaf(name, cfg[key], spec, sources)
    return out


def _check_across(cfg, sources):
    """Checks that involve several keys."""
    data = cfg['data']
    subset = data['subset']
    n_train = subset[0] if isinstance(subset, list) else subset
    if n_train is not None:
        check_batch_size(cfg, n_train, sources)
    if cfg.get('mn'):
        try:
            mn_settings.check_together(cfg['mn'], 'the mn section')
        except ValueError as e:
            raise ConfigError('%s: %s' % (_where(sources, 'mn.inference', 'mn.affine'), e)) \
                from None
    if cfg['gan'] is not None and cfg['model']['name'] != 'dcgan':
        raise ConfigError("%s: a config with a gan section trains a DCGAN: 'model.name' must "
                          "be 'dcgan', got %r" % (_where(sources, 'gan', 'model.name'),
                                                  cfg['model']['name']))


def check_batch_size(cfg, n_train, sources=None):
    """``data.batch_size`` must not exceed the ``n_train`` training images: a larger batch
    would wrap around the set, counting several epochs per update."""
    batch, subset = cfg['data']['batch_size'], cfg['data']['subset']
    if batch > n_train:
        keys = ('data.batch_size',) + (('data.subset',) if subset is not None else ())
        raise ConfigError(
            "%s: 'data.batch_size' is %d but there are only %d training images%s: lower "
            'data.batch_size or use more images' % (
                _where(sources or _sources_of(cfg), *keys), batch, n_train,
                ' (data.subset)' if subset is not None else ''))


def validate(cfg, sources=('<dict>',)):
    """Check ``cfg`` against :data:`SCHEMA`; returns it with defaults filled in."""
    out = _check_section(cfg, SCHEMA, '', sources)
    _check_across(out, sources)
    return out


def validate_section(name, values, sources=('<dict>',)):
    """One top-level section (e.g. ``'optimizer'``) checked and completed as in a full
    config: what :func:`experiments.optimizers.make_optimizer` and friends take."""
    if not isinstance(SCHEMA.get(name), dict):
        raise KeyError('no config section %r; sections: %s'
                       % (name, ', '.join(k for k, v in SCHEMA.items() if isinstance(v, dict))))
    if not isinstance(values, dict):
        raise ConfigError('%s: %r must be a mapping, got %r' % (_where(sources), name, values))
    return _check_section(values, SCHEMA[name], name + '.', sources)


def check_layers(cfg, model, sources=None):
    """Every ``mn.layers`` name must be a layer of ``model`` (error lists valid names)."""
    if not cfg.get('mn'):
        return []
    try:
        return placement.expand_names(model, cfg['mn']['layers'])
    except ValueError as e:
        raise ConfigError('%s: mn.layers: %s' % (_where(sources or _sources_of(cfg),
                                                        'mn.layers'), e)) from None


def differences(a, b, ignore=()):
    """Dotted keys whose values differ between two validated configs, with both values:
    ``[(key, value in a, value in b)]`` (private ``_`` keys and ``ignore`` skipped)."""
    out = []

    def walk(x, y, prefix):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y), key=str):
                if str(k).startswith('_') or prefix + str(k) in ignore:
                    continue
                walk(x.get(k, _ABSENT), y.get(k, _ABSENT), prefix + str(k) + '.')
        elif x != y:
            out.append((prefix.rstrip('.'), x, y))
    walk(a, b, '')
    return out


class _Absent:
    def __repr__(self):
        return '(absent)'


_ABSENT = _Absent()


def dump(cfg):
    """The resolved config as YAML (without private keys)."""
    return yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith('_')},
                           sort_keys=False)
