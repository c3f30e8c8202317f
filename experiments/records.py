"""Run records: where a run writes, what ``summary.json`` holds, reading runs back, and
the one place that judges a run.

A run directory (``results/runs/<experiment>/<dataset>/<row>/seed<k>/``; smoke runs
under ``results/runs/smoke/...``) holds ``config.yaml`` (the resolved config and the
files and overrides it was merged from), ``log.json`` (Chainer's LogReport),
``summary.json`` and the trainer snapshots ``snapshot_epoch_<e>`` (GAN runs:
``snapshot_iter_<k>``; the other processes of a data-parallel run
``snapshot_epoch_<e>.rank<r>``).

:func:`assess` decides, from a run's record alone, its status (finished, interrupted,
not started), the dataset it stands for, and the two kinds of comparability, kept
apart: whether it is comparable to the *paper* (with the reasons when it is not), and
which runs it is comparable *with* (its cohort: runs trained the same way on the same
data, e.g. a BN row and an MN row on Fashion-MNIST, whose numbers may be set beside
each other although neither may be set beside the paper's).  Tables, figures, reports
and ``summary.json`` all use it.  :func:`prepare_run` decides what training into a run
directory should do (train, resume, or skip a finished run), for every entry point.
"""
import dataclasses
import glob
import json
import math
import os
import re
import shutil

import yaml

from experiments import config as config_lib
from experiments import environment
from experiments import paper

RUNS_ROOT = os.path.join(environment.REPO_ROOT, 'results', 'runs')

TEST_ACC = 'validation/main/accuracy'
TEST_LOSS = 'validation/main/loss'
FID_KEY = 'fid'

FINISHED = 'finished'
INTERRUPTED = 'interrupted'
NOT_STARTED = 'not started'

SNAPSHOT_RE = re.compile(r'snapshot_(?:epoch|iter)_(\d+)$')
#: What a run writes into its directory (removed when it starts over).
RUN_FILES = ('log.json', 'summary.json', 'generator_best.npz')
RUN_FOLDERS = ('mixtures', 'samples')
#: What a run killed while writing leaves: Chainer's temporary snapshot and log
#: folders, the temporary file of :func:`write_json`.
LEFTOVERS = ('tmpsnapshot_*', 'log.json?*', '*.tmp')
#: Keys that may differ between a run's config.yaml and the config resuming it (the
#: schema's leaves flagged RESUME_FREE: where the data or the FID weights are found).
RESUME_IGNORED = config_lib.keys_flagged(config_lib.RESUME_FREE)
#: ``--set`` keys that keep a run the paper's row: those that do not change what it
#: measures (flagged NEUTRAL) and those judged by themselves (flagged JUDGED: the
#: dataset, its size, the length of training, the FID network); any other override
#: makes a run not the paper's row.
ALLOWED_OVERRIDES = frozenset(config_lib.keys_flagged(config_lib.NEUTRAL)
                              + config_lib.keys_flagged(config_lib.JUDGED))


class RunError(RuntimeError):
    """A run directory cannot be used as asked (unreadable snapshot, another model)."""


class RunInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C; the message says where and how to resume."""


# ------------------------------------------------------------------ where runs live

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


def run_dir(cfg, root=RUNS_ROOT):
    """The directory of a run of ``cfg`` (smoke runs are kept apart; runs on synthetic
    data are named after the dataset their row stands for: ``synthetic-cifar10``)."""
    parts = ['smoke'] if cfg.get('smoke') else []
    data = cfg['data']['dataset']
    if data == 'synthetic':
        data = 'synthetic-%s' % (stands_for(cfg, cfg.get('_sources', ())) or 'unknown')
    parts += [cfg['experiment'], data, cfg['row'], 'seed%d' % cfg['train']['seed']]
    return os.path.join(root, *parts)


def write_config(out, cfg):
    """Create the run directory ``out`` and write the resolved ``config.yaml``: a first
    comment line naming the files and overrides it was merged from, the config, and
    the same list as ``_sources`` (which validation ignores)."""
    os.makedirs(out, exist_ok=True)
    sources = list(cfg.get('_sources', []))
    with open(os.path.join(out, 'config.yaml'), 'w') as f:
        f.write('# resolved from: %s\n' % ', '.join(sources))
        f.write(config_lib.dump(cfg))
        f.write(yaml.safe_dump({'_sources': sources}, sort_keys=False))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(o):
    try:
        import numpy
        if isinstance(o, numpy.generic):
            return o.item()
        if isinstance(o, numpy.ndarray):
            return o.tolist()
    except ImportError:
        pass
    raise TypeError('not JSON serializable: %r' % (o,))


def snapshots(out):
    """The trainer snapshots in ``out``, oldest first (by the number in the name)."""
    if not os.path.isdir(out):
        return []
    found = [(int(m.group(1)), os.path.join(out, f)) for f in os.listdir(out)
             for m in [SNAPSHOT_RE.match(f)] if m]
    return [p for _, p in sorted(found)]


# --------------------------------------------------------------------- summaries

def checkpoint_epoch(fraction, epochs):
    """The epoch that closes ``fraction`` of ``epochs``: the first one at or after it
    (25 % of 2 epochs is epoch 1, of 100 epochs epoch 25), at least 1."""
    return max(1, int(math.ceil(fraction * epochs - 1e-9)))


def max_accuracy_at(log, fractions, epochs):
    """{percent: max test accuracy (%) over the epochs <= :func:`checkpoint_epoch`}."""
    out = {}
    for f in fractions:
        limit = checkpoint_epoch(f, epochs)
        accs = [e[TEST_ACC] for e in log if TEST_ACC in e and e['epoch'] <= limit]
        out[str(int(round(100 * f)))] = 100.0 * max(accs) if accs else None
    return out


def steps_to_accuracy(log, target_percent):
    """Gradient updates at the first evaluation with test accuracy >= target (%), or
    None if never reached."""
    for e in log:
        if TEST_ACC in e and 100.0 * e[TEST_ACC] >= target_percent - 1e-9:
            return int(e['iteration'])
    return None


def classifier_fields(cfg, log, finished=None, iterations=None, epochs_done=None):
    """What a classifier run measures, for :func:`summarize`: its processes, progress and
    test accuracies (``finished`` / ``iterations`` / ``epochs_done``: the trainer's own
    state; default: read off the log)."""
    epochs = cfg['train']['epochs']
    accs = [e[TEST_ACC] for e in log if TEST_ACC in e]
    target = cfg['train'].get('target_accuracy')
    done_epochs = epochs_done if epochs_done is not None else (log[-1]['epoch'] if log else 0)
    if finished is None:
        finished = bool(log) and done_epochs >= math.floor(epochs)
    return {
        'world_size': cfg.get('world_size', 1),
        'communicator': cfg.get('communicator'),
        'per_rank_batch_size': cfg.get('per_rank_batch_size') or cfg['data']['batch_size'],
        'epochs_planned': epochs,
        'epochs_done': done_epochs,
        'iterations': iterations if iterations is not None else
        (log[-1]['iteration'] if log else 0),
        'finished': bool(finished),
        'max_test_accuracy': max_accuracy_at(log, cfg['train']['checkpoints'], epochs),
        'best_test_accuracy': 100.0 * max(accs) if accs else None,
        'final_test_accuracy': 100.0 * accs[-1] if accs else None,
        'final_test_loss': next((e[TEST_LOSS] for e in reversed(log) if TEST_LOSS in e), None),
        'target_accuracy': target,
        'steps_to_target': steps_to_accuracy(log, target) if target is not None else None,
    }


def fid_curve(log):
    """[(step, fid)] of the evaluations in a GAN run's LogReport log."""
    return [(int(e['iteration']), float(e[FID_KEY])) for e in log
            if e.get(FID_KEY) is not None and math.isfinite(e[FID_KEY])]


def steps_to_fid(curve, target):
    """First evaluated step with FID <= target (None if never)."""
    for step, value in curve:
        if value <= target + 1e-12:
            return step
    return None


def interpolated_steps_to_fid(curve, target):
    """Step at which the piecewise-linear FID curve first reaches ``target`` (the paper's
    "25K" lies between evaluations, read off its curve); None if never."""
    prev = None
    for step, value in curve:
        if value <= target + 1e-12:
            if prev is None or prev[1] == value:
                return float(step)
            s0, v0 = prev
            return s0 + (v0 - target) / (v0 - value) * (step - s0)
        prev = (step, value)
    return None


def summarize(cfg, log, fields, *, dataset_source, backend, device_name, wall_time_s, env,
              dataset_size=None):
    """The ``summary.json`` of a run: what every run records (its row, data, seed,
    hardware, commit, wall time) around ``fields``, what its kind of run measures
    (:func:`classifier_fields`, :func:`experiments.gan.summary_fields`), with the verdict
    of :func:`assess` (:func:`judged`).

    ``dataset_size``: ``{'train': n, 'test': m}`` of the data it trained on.
    """
    summary = {
        'experiment': cfg['experiment'],
        'row': cfg['row'],
        'dataset': cfg['data']['dataset'],
        'paper_dataset': stands_for(cfg, cfg.get('_sources', ())),
        'dataset_source': dataset_source,
        'dataset_size': dataset_size,
        'smoke': bool(cfg.get('smoke')),
        'seed': cfg['train']['seed'],
        **fields,
        'backend': backend,
        'device': device_name,
        'git_commit': env.get('git_commit'),
        'wall_time_s': wall_time_s,
        'environment': env,
    }
    return judged(cfg, log, summary)


def judged(cfg, log, summary):
    """``summary`` with the verdict of :func:`assess` on the record it belongs to
    (``comparable_to_paper``, ``not_comparable_reasons``), for readers of the JSON."""
    verdict = assess(Run.from_record(cfg, log, summary))
    summary['comparable_to_paper'] = verdict.comparable
    summary['not_comparable_reasons'] = list(verdict.reasons)
    return summary


# ------------------------------------------------------------------ reading back

class Run:
    """A finished or partial run read back from its directory."""

    def __init__(self, path):
        self.path = path
        config_path = os.path.join(path, 'config.yaml')
        if not os.path.isfile(config_path):
            raise FileNotFoundError('no run in %s (it has no config.yaml)' % path)
        with open(config_path) as f:
            text = f.read()
        self.config = config_lib.yaml_load(text) or {}
        self.sources = list(self.config.pop('_sources', None) or _header_sources(text))
        log_path = os.path.join(path, 'log.json')
        self.log = read_json(log_path) if os.path.exists(log_path) else []
        sum_path = os.path.join(path, 'summary.json')
        self.summary = read_json(sum_path) if os.path.exists(sum_path) else None

    @classmethod
    def from_record(cls, config, log, summary, path=None):
        """A run from its parts in memory (a record being written)."""
        run = cls.__new__(cls)
        run.path = path
        run.config = {k: v for k, v in config.items() if not k.startswith('_')}
        run.sources = list(config.get('_sources', ()))
        run.log = log
        run.summary = summary
        return run

    @property
    def key(self):
        return (self.config['experiment'], self.config['data']['dataset'], self.config['row'])

    @property
    def snapshots(self):
        return snapshots(self.path) if self.path else []

    def __repr__(self):
        return 'Run(%r)' % self.path


def _header_sources(text):
    """The sources named on the ``# resolved from:`` line of an older config.yaml."""
    first = text.split('\n', 1)[0]
    if not first.startswith('# resolved from:'):
        return []
    return [s.strip() for s in first[len('# resolved from:'):].split(', ') if s.strip()]


def find_runs(root=RUNS_ROOT, experiment=None, dataset=None, paper_dataset=None):
    """Every run directory (one holding config.yaml) below ``root``, optionally only
    those of an experiment, trained on ``dataset``, or standing for ``paper_dataset``
    (:func:`stands_for`)."""
    runs = []
    for cfg in sorted(glob.glob(os.path.join(root, '**', 'config.yaml'), recursive=True)):
        run = Run(os.path.dirname(cfg))
        if experiment and run.config.get('experiment') != experiment:
            continue
        if dataset and run.config['data']['dataset'] != dataset:
            continue
        if paper_dataset and stands_for(run.config, run.sources) != paper_dataset:
            continue
        runs.append(run)
    return runs


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
        """The verdict a summary carries (:func:`judged` puts it there as the summary is
        made): a run's status and comparability to the paper, without reading its
        record back from disk (its cohort is not recorded: :func:`assess` tells it)."""
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
    """The verdict on a run (a :class:`Run` or its directory): an :class:`Assessment`.

    A run is comparable to the paper when it trained the paper's row as configured in
    ``configs/`` (no smoke preset, no ``--set`` that changes the setting) on real CIFAR
    of the paper's size (50,000 training / 10,000 test images, Sec. 4.1) for the paper's
    epochs (DCGAN: generator updates), and, for DCGAN, measured FID with the standard
    FID network.  Every way it falls short is a reason.  Whether it has finished is its
    status, judged apart.
    """
    if isinstance(run, str):
        run = Run(run)
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


# --------------------------------------------------------------- starting a run

@dataclasses.dataclass
class Start:
    """What :func:`prepare_run` decided: ``action`` is ``'train'`` (from scratch),
    ``'resume'`` (from the first readable of ``snapshots``, newest first) or ``'skip'``
    (a finished run; ``summary`` is its summary).  ``message``: one line for the user
    (or None)."""
    action: str
    snapshots: list
    message: object = None
    summary: object = None
    explicit: bool = False
    clear: bool = False


def stored_config(out):
    """The validated config of the run in ``out`` (None if it has no config.yaml)."""
    path = os.path.join(out, 'config.yaml')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        raw = config_lib.yaml_load(f) or {}
    try:
        return config_lib.validate(raw, [path])
    except config_lib.ConfigError as e:
        raise config_lib.ConfigError(
            '%s holds a run whose config.yaml no longer validates (%s): pass --force to '
            'start that run over with this config, or --out another directory'
            % (out, e)) from None


def _short(v, width=40):
    text = repr(v)
    return text if len(text) <= width else text[:width - 3] + '...'


def describe_differences(diffs, limit=6):
    """``'optimizer.lr (run: 0.01, now: 0.02), ...'``."""
    parts = ['%s (run: %s, now: %s)' % (k, _short(a), _short(b)) for k, a, b in diffs[:limit]]
    if len(diffs) > limit:
        parts.append('and %d more' % (len(diffs) - limit))
    return ', '.join(parts)


def prepare_run(cfg, out, resume='auto', force=False):
    """Decide what training ``cfg`` into ``out`` does, the same for every entry point.

    * ``force``: start over, removing what an earlier run wrote there.
    * ``resume`` a snapshot path: resume from it (the run's config must match).
    * ``resume`` ``'auto'`` (or None): a finished run is skipped; an interrupted one
      resumes from its latest readable snapshot; otherwise training starts from scratch.

    Resuming or skipping needs the config of ``out`` (its config.yaml) to match
    ``cfg`` up to :data:`RESUME_IGNORED`; otherwise a
    :class:`~experiments.config.ConfigError` names the differing keys.
    """
    snaps = snapshots(out)
    summary_path = os.path.join(out, 'summary.json')
    summary = read_json(summary_path) if os.path.isfile(summary_path) else None
    has_log = os.path.isfile(os.path.join(out, 'log.json'))
    status = run_status(summary, has_log, snaps)
    if force:
        if status != NOT_STARTED:
            return Start('train', [], '--force: the earlier records and snapshots in %s are '
                         'removed; training from scratch' % out, clear=True)
        return Start('train', [])
    explicit = resume not in (None, 'auto')
    if explicit and not os.path.isfile(resume):
        raise RunError('--resume: no snapshot at %s' % resume)
    if status == NOT_STARTED and not explicit:
        return Start('train', [])
    stored = stored_config(out)
    diffs = config_lib.differences(stored, cfg, RESUME_IGNORED) if stored else []
    if diffs:
        if status == FINISHED:
            keep = 'pass --force to discard it and train this config from scratch'
        else:
            keep = ('%s, or pass --force to discard it and train this config from scratch'
                    % resume_advice(stored, out, diffs))
        raise config_lib.ConfigError(
            '%s holds %s run of another config: %s; %s, or use --out another directory'
            % (out, 'a finished' if status == FINISHED else 'an interrupted',
               describe_differences(diffs), keep))
    if explicit:
        return Start('resume', [resume], explicit=True)
    if status == FINISHED:
        return Start('skip', [], 'finished run in %s (--force to retrain)' % out,
                     summary=summary)
    if snaps:
        return Start('resume', list(reversed(snaps)))
    return Start('train', [], 'no snapshot to resume in %s: training from scratch' % out,
                 clear=True)


def resume_advice(stored, out, diffs):
    """How to resume the run of config ``stored`` in ``out``: as many processes as it
    had (``mpiexec -n P``) when that differs, else its own config."""
    keys = {k for k, _, _ in diffs}
    if keys & {'world_size', 'communicator'}:
        size, name = stored.get('world_size', 1), stored.get('communicator')
        if size > 1 or name:
            return ('resume it as it was run: mpiexec -n %d python -m experiments.train '
                    '... --communicator %s' % (size, name or 'naive'))
        return 'resume it as it was run: one process, without mpiexec or --communicator'
    return 'resume it with its own config (%s)' % os.path.join(out, 'config.yaml')


def begin(out, cfg, start, log=print):
    """Act on ``start`` once a run is known to be able to start: clear what an earlier
    run left in ``out`` if it starts over (else only the leftovers of an interrupted
    write), say so, and write ``config.yaml``."""
    if start.clear:
        clear_run(out)
    else:
        gone = clear_leftovers(out)
        if gone:
            log('removed what an interrupted write left in %s: %s' % (out, ', '.join(gone)))
    if start.message:
        log(start.message)
    write_config(out, cfg)


def clear_run(out):
    """Remove what a run wrote into ``out`` (:data:`RUN_FILES`, :data:`RUN_FOLDERS`,
    snapshots, :data:`LEFTOVERS`); config.yaml is rewritten by the next run."""
    others = glob.glob(os.path.join(glob.escape(out), 'snapshot_*.rank*'))  # other ranks'
    for path in snapshots(out) + others + [os.path.join(out, f) for f in RUN_FILES]:
        if os.path.isfile(path):
            os.remove(path)
    for folder in RUN_FOLDERS:
        if os.path.isdir(os.path.join(out, folder)):
            shutil.rmtree(os.path.join(out, folder))
    clear_leftovers(out)


def clear_leftovers(out):
    """Remove the temporary files and folders a killed run left in ``out``
    (:data:`LEFTOVERS`); returns their names."""
    found = sorted({p for pattern in LEFTOVERS
                    for p in glob.glob(os.path.join(glob.escape(out), pattern))})
    for path in found:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
    return [os.path.basename(p) for p in found]


def _try_load(trainer, path):
    """Load the snapshot file ``path`` into ``trainer``: None when it loaded, else
    ``(kind, why)`` with kind ``'missing'``, ``'unreadable'`` or ``'unfit'`` (it does
    not fit the trainer: another model, config or version of the code)."""
    import chainer
    if not os.path.isfile(path):
        return 'missing', 'is missing'
    try:
        chainer.serializers.load_npz(path, trainer)
    except KeyError as e:
        return 'unfit', 'has no %s' % e
    except Exception as e:      # truncated or corrupted npz: zip, zlib, numpy errors
        return 'unreadable', 'cannot be read (%s: %s)' % (type(e).__name__, e)
    return None


def load_snapshot(trainer, start, log=print, par=None):
    """Load into ``trainer`` the newest of ``start.snapshots`` that every process can
    load (``par``: a :class:`experiments.parallel.Parallel`; each process loads its own
    file, ``snapshot_epoch_<e>.rank<r>`` on rank r), saying when it passes over one and
    why (a file missing on one process, truncated or corrupted); returns its path (the
    name rank 0 reads), or None when there is nothing to resume.  A snapshot that does
    not fit the trainer (another model), an unreadable ``--resume`` snapshot, or no
    snapshot complete on every process raises :class:`RunError` on every process."""
    several = par is not None and par.size > 1
    own = par.own_snapshot if several else (lambda p: p)
    gather = par.allgather if several else (lambda x: [x])
    passed = []
    for path in start.snapshots:
        troubles = [(r, t) for r, t in enumerate(gather(_try_load(trainer, own(path))))
                    if t is not None]
        if not troubles:
            if passed:
                log('warning: %s; resuming from the previous snapshot, %s'
                    % ('; '.join(passed), os.path.basename(path)))
            return path
        why = ', '.join('%s %s' % (rank_file(path, r) if not several else
                                   os.path.basename(rank_file(path, r)), t[1])
                        for r, t in troubles)
        if any(t[0] == 'unfit' for _, t in troubles):
            raise RunError('%s does not fit this run\'s model or trainer (%s): it was '
                           'written by another config or version of the code; --force '
                           'starts the run over' % (path, why))
        if start.explicit:
            raise RunError('%s cannot be resumed (%s): the snapshot is missing on a '
                           'process, truncated or corrupted' % (path, why))
        passed.append('%s is not complete on every process (%s)'
                      % (os.path.basename(path), why) if several else why)
    if passed:
        raise RunError('no snapshot in %s can be resumed: %s; --force starts the run over'
                       % (os.path.dirname(start.snapshots[0]), '; '.join(passed)))
    return None


def rank_file(path, rank):
    """Rank ``rank``'s file of the snapshot rank 0 calls ``path``
    (``snapshot_epoch_<e>.rank<r>``; rank 0's is ``path`` itself)."""
    return path if rank == 0 else '%s.rank%d' % (path, rank)


def complete_snapshots(out, size=1):
    """The snapshots in ``out`` (rank 0's names, oldest first) of which all ``size``
    processes wrote their file."""
    return [p for p in snapshots(out)
            if all(os.path.isfile(rank_file(p, r)) for r in range(1, size))]
