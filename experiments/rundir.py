"""A run directory's life: where a run writes, what training into it does (train,
resume, or skip a finished run), starting it over, and the trainer snapshots it holds,
with their agreement across the processes of a data-parallel run.

A run directory (``results/runs/<experiment>/<dataset>/<row>/seed<k>/``; smoke runs
under ``results/runs/smoke/...``) holds ``config.yaml`` (the resolved config and the
files and overrides it was merged from), ``log.json`` (Chainer's LogReport),
``summary.json`` (:func:`experiments.runs.summarize`) and the trainer snapshots
``snapshot_epoch_<e>`` (GAN runs: ``snapshot_iter_<k>``; the other processes of a
data-parallel run ``snapshot_epoch_<e>.rank<r>``).

:func:`prepare_run` decides what training into a run directory should do, for every
entry point; :func:`begin` acts on it; :func:`load_snapshot` resumes from the newest
snapshot every process can load.  Reading runs back is :mod:`experiments.runs`.
"""
import dataclasses
import glob
import json
import os
import re
import shutil

import yaml

from experiments import config as config_lib
from experiments import environment
from experiments import verdict
from experiments.verdict import FINISHED, NOT_STARTED

RUNS_ROOT = os.path.join(environment.REPO_ROOT, 'results', 'runs')

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


class RunError(RuntimeError):
    """A run directory cannot be used as asked (unreadable snapshot, another model)."""


class RunInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C; the message says where and how to resume."""


def run_dir(cfg, root=RUNS_ROOT):
    """The directory of a run of ``cfg`` (smoke runs are kept apart; runs on synthetic
    data are named after the dataset their row stands for: ``synthetic-cifar10``)."""
    parts = ['smoke'] if cfg.get('smoke') else []
    data = cfg['data']['dataset']
    if data == 'synthetic':
        data = 'synthetic-%s' % (verdict.stands_for(cfg, cfg.get('_sources', ())) or 'unknown')
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
    status = verdict.run_status(summary, has_log, snaps)
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
