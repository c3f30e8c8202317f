"""The verdict on a run, decided here only: its status (finished, interrupted, not
started), the dataset it stands for, whether its numbers may be set beside the paper's
(with the reasons when they may not), and which runs it is comparable *with* (its
cohort: runs trained the same way on the same data, e.g. a BN row and an MN row on
Fashion-MNIST, whose numbers may be set beside each other although neither may be set
beside the paper's).

:func:`assess` judges a run record: any object with ``config``, ``sources`` (the files
and overrides its config was merged from), ``log``, ``summary`` and ``snapshots``, as
:class:`experiments.runs.Run` holds them (which asks once per run:
:attr:`experiments.runs.Run.assessment`).  Tables, figures, reports and
``summary.json`` all use it.
"""
import dataclasses
import json
import os

from experiments import config as config_lib
from experiments import paper

FINISHED = 'finished'
INTERRUPTED = 'interrupted'
NOT_STARTED = 'not started'

#: ``--set`` keys that keep a run the paper's row: those that do not change what it
#: measures (flagged NEUTRAL) and those judged by themselves (flagged JUDGED: the
#: dataset, its size, the length of training, the FID network); any other override
#: makes a run not the paper's row.
ALLOWED_OVERRIDES = frozenset(config_lib.keys_flagged(config_lib.NEUTRAL)
                              + config_lib.keys_flagged(config_lib.JUDGED))


# ----------------------------------------------------------- the dataset it stands for

#: Real datasets of the kit that are not the paper's: their runs stand for themselves
#: and are never comparable to the paper's numbers.
OWN_DATASETS = ('fashion-mnist',)
OWN_DATASET_NAMES = {'fashion-mnist': 'Fashion-MNIST'}


def stands_for(config, sources=()):
    """The dataset a run stands for: the CIFAR it trained on (the paper's), the kit's
    own real dataset (:data:`OWN_DATASETS`: Fashion-MNIST, not the paper's), or, for
    synthetic data, the dataset folder of the row config it was made from
    (``configs/<table>/<dataset>/<row>.yaml``, wherever that tree lies); None if
    neither tells."""
    known = paper.PAPER_DATASETS + OWN_DATASETS
    name = config['data']['dataset']
    if name in known:
        return name
    for src in reversed(list(sources)):
        if src.startswith('--set'):
            continue
        parts = src.replace(os.sep, '/').split('/')
        if len(parts) >= 2 and parts[-2] in known:
            return parts[-2]
    return None



# ------------------------------------------------------------------------ verdict

@dataclasses.dataclass(frozen=True)
class Assessment:
    """What :func:`assess` says of a run.

    ``status``: :data:`FINISHED`, :data:`INTERRUPTED` or :data:`NOT_STARTED`;
    ``dataset``: the dataset it stands for (or None); ``comparable``: whether its
    numbers may be set beside the paper's; ``reasons``: why not (empty if comparable).
    ``cohort``: how it was trained and on what, but for the row's own settings (its
    optimizer's rate and decay, its MN layers) and the seed (:func:`cohort`): runs with
    equal cohorts are comparable with each other (:meth:`comparable_with`), whether or
    not they are comparable to the paper.
    """
    status: str
    dataset: object
    comparable: bool
    reasons: tuple
    cohort: tuple = dataclasses.field(default=(), compare=False)

    @classmethod
    def recorded(cls, summary):
        """The verdict a summary carries (:func:`experiments.runs.judged` puts it there
        as the summary is made): a run's status and comparability to the paper, without
        reading its record back from disk (its cohort is not recorded: :func:`assess`
        tells it)."""
        return cls(run_status(summary, None, ()), summary.get('paper_dataset'),
                   bool(summary['comparable_to_paper']),
                   tuple(summary['not_comparable_reasons']))

    def label(self):
        """``'comparable'`` or ``'NOT COMPARABLE (reason; reason)'`` (to the paper)."""
        return 'comparable' if self.comparable else \
            'NOT COMPARABLE (%s)' % '; '.join(self.reasons)

    def comparable_with(self, other):
        """Whether two runs (their assessments) were trained the same way on the same
        data, so that their numbers may be set beside each other (a BN row beside an MN
        row), independent of either's comparability to the paper."""
        return bool(self.cohort) and self.cohort == other.cohort

    def cohort_differences(self, other):
        """The cohort keys in which two runs differ: ``[(key, mine, theirs)]``."""
        a, b = dict(self.cohort), dict(other.cohort)
        return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)]


def run_status(summary, log, snapshot_paths):
    """Finished (the trainer reached its end), interrupted (it began), or not started."""
    if summary and summary.get('finished'):
        return FINISHED
    if summary or log or snapshot_paths:
        return INTERRUPTED
    return NOT_STARTED


def assess(run):
    """The verdict on a run record (see the module's docstring): an :class:`Assessment`.

    A run is comparable to the paper when it trained the paper's row as configured in
    ``configs/`` (no smoke preset, no ``--set`` that changes the setting) on real CIFAR
    of the paper's size (50,000 training / 10,000 test images, Sec. 4.1) for the paper's
    epochs (DCGAN: generator updates), and, for DCGAN, measured FID with the standard
    FID network.  Every way it falls short is a reason.  Whether it has finished is its
    status, judged apart.
    """
    cfg, summary = run.config, run.summary or {}
    dataset = stands_for(cfg, run.sources)
    reasons = (_data_reasons(cfg, summary, dataset) + _length_reasons(cfg)
               + _setting_reasons(cfg, run.sources) + _fid_reasons(cfg, summary))
    return Assessment(run_status(run.summary, run.log, run.snapshots), dataset,
                      not reasons, tuple(reasons), cohort(run))


#: The row's own settings: what a BN row and its MN row may differ in and still be
#: comparable with each other.
ROW_SETTINGS = ('row', 'mn', 'optimizer.lr', 'optimizer.weight_decay')
#: Keys left out of a run's cohort: the row's own settings, and what does not change
#: what a run measures (the schema's leaves flagged NEUTRAL or RESUME_FREE: the seed,
#: paths, bookkeeping).
ROW_KEYS = tuple(dict.fromkeys(ROW_SETTINGS + config_lib.keys_flagged(config_lib.NEUTRAL)
                               + config_lib.keys_flagged(config_lib.RESUME_FREE)))


def cohort(run):
    """How ``run`` was trained and on what, but for :data:`ROW_KEYS`: a sorted tuple of
    ``(key, value)`` (values as JSON text).  It holds the experiment, the dataset and
    where it came from (the subset and sizes), the model, the batch, the augmentation,
    the schedule and length of training, the optimizer's kind, the presets, and the
    number of processes."""
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            key = prefix + k
            if any(key == r or key.startswith(r + '.') for r in ROW_KEYS):
                continue
            if isinstance(v, dict):
                walk(v, key + '.')
            else:
                flat[key] = json.dumps(v, sort_keys=True)
    walk({k: v for k, v in run.config.items() if not k.startswith('_')}, '')
    summary = run.summary or {}
    flat['dataset_size'] = json.dumps(summary.get('dataset_size'), sort_keys=True)
    flat['presets'] = json.dumps(sorted(
        os.path.splitext(os.path.basename(s))[0] for s in run.sources
        if '/presets/' in s.replace(os.sep, '/')))
    return tuple(sorted(flat.items()))


def _n(v):
    return '{:,}'.format(v) if isinstance(v, int) else '%g' % v


def _data_reasons(cfg, summary, dataset):
    data, gan = cfg['data'], bool(cfg.get('gan'))
    reasons = ['smoke preset'] if cfg.get('smoke') else []
    if data['dataset'] == 'synthetic':
        reasons.append('synthetic data, not CIFAR')
    elif data['dataset'] in OWN_DATASETS:
        reasons.append("%s, not the paper's data (CIFAR)"
                       % OWN_DATASET_NAMES[data['dataset']])
    if dataset is None:
        reasons.append('stands for no paper dataset (its config is not under a '
                       '<table>/cifar10|cifar100/ folder)')
    subset = data.get('subset')
    if subset is not None:
        reasons.append('a subset of %s images' % ('%s training / %s test' % (
            _n(subset[0]), _n(subset[1])) if isinstance(subset, list) else _n(subset)))
    elif data['dataset'] in paper.PAPER_DATASETS:
        size = summary.get('dataset_size')
        if not size:
            reasons.append('dataset size not recorded')
        else:
            for split in ('train', 'test')[:1 if gan else 2]:
                if size.get(split) != paper.DATA_SPLIT[split]:
                    reasons.append('%s %s images (the paper: %s)' % (
                        _n(size.get(split)), 'training' if split == 'train' else 'test',
                        _n(paper.DATA_SPLIT[split])))
    return reasons


def _length_reasons(cfg):
    length = paper.training_length(cfg.get('experiment'))
    if length is None:
        return ['no paper setting for experiment %r' % cfg.get('experiment')]
    unit, n = length
    planned = cfg['gan']['updates'] if unit == 'updates' else cfg['train']['epochs']
    reasons = []
    if planned != n:
        reasons.append('%s %s (the paper: %s)' % (
            _n(planned), unit[:-1] if planned == 1 else unit, _n(n)))
    if unit == 'epochs' and cfg['train'].get('max_iterations'):
        reasons.append('stops at train.max_iterations=%d' % cfg['train']['max_iterations'])
    return reasons


def _setting_reasons(cfg, sources):
    """Overrides and presets that change the row's setting, and configs that are not
    rows of ``configs/``, and data-parallel runs that normalize each process's part of the
    batch alone."""
    reasons = []
    if cfg.get('world_size', 1) > 1 and not cfg['train'].get('sync_normalization', True):
        reasons.append('normalization not synchronized: each of the %d processes '
                       'normalizes over its %s images, not the batch of %d'
                       % (cfg['world_size'], cfg.get('per_rank_batch_size'),
                          cfg['data']['batch_size']))
    for src in sources:
        if src.startswith('--set '):
            key = src[len('--set '):].split('=', 1)[0].strip()
            if key not in ALLOWED_OVERRIDES:
                reasons.append('%s (not the row\'s setting)' % src)
        elif '/presets/' in src.replace(os.sep, '/') and not cfg.get('smoke'):
            reasons.append('preset %s' % os.path.splitext(os.path.basename(src))[0])
    rows = [s for s in sources if not s.startswith('--set')
            and os.path.basename(s) != 'base.yaml' and '/presets/' not in s]
    if sources and not any(s.replace(os.sep, '/').startswith('configs/%s/'
                                                             % cfg.get('experiment'))
                           for s in rows):
        reasons.append('config not from configs/%s/' % cfg.get('experiment'))
    return reasons


def _fid_reasons(cfg, summary):
    if not cfg.get('gan'):
        return []
    fid = summary.get('fid') or {}
    fcfg = cfg['gan']['fid']
    if not fid.get('enabled', fcfg.get('enabled', True)):
        return ['no FID (gan.fid.enabled: false)']
    if fid.get('random_weights', fcfg.get('random_weights')):
        return ['random-weights "FID", not an FID']
    if not fid:
        return ['FID network not recorded']
    if not fid.get('standard'):
        return ['non-standard FID network']
    return []
