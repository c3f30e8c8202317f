"""Reading runs back, and the record a run leaves: ``summary.json``.

:class:`Run` is a run directory read back (its config, the files and overrides it was
merged from, its log and summary); :func:`find_runs` finds them.  Each run is assessed
once (:attr:`Run.assessment`, :func:`experiments.verdict.assess`); tables, figures and
reports ask the run.  :func:`summarize` writes what every run records around what its
kind of run measures, with the verdict (:func:`judged`).
"""
import functools
import glob
import os

from experiments import config as config_lib
from experiments import rundir
from experiments import verdict


# ------------------------------------------------------------------ reading back

#: What the verdict on a run is read from: replacing one asks for the verdict anew.
RECORD_PARTS = ('path', 'config', 'sources', 'log', 'summary')


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
        self.log = rundir.read_json(log_path) if os.path.exists(log_path) else []
        sum_path = os.path.join(path, 'summary.json')
        self.summary = rundir.read_json(sum_path) if os.path.exists(sum_path) else None

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
        return rundir.snapshots(self.path) if self.path else []

    @functools.cached_property
    def assessment(self):
        """The verdict on this run (:func:`experiments.verdict.assess`), decided when
        first asked and kept until a part of its record is replaced: every table, figure
        and report of a run reads this one."""
        return verdict.assess(self)

    def __setattr__(self, name, value):
        if name in RECORD_PARTS:
            self.__dict__.pop('assessment', None)
        super().__setattr__(name, value)

    def __repr__(self):
        return 'Run(%r)' % self.path


def assess(run):
    """The verdict on ``run`` (a :class:`Run`, its directory, or any record
    :func:`experiments.verdict.assess` takes): a :class:`Run`'s own
    :attr:`~Run.assessment`."""
    if isinstance(run, (str, os.PathLike)):
        run = Run(os.fspath(run))
    return run.assessment if isinstance(run, Run) else verdict.assess(run)


def _header_sources(text):
    """The sources named on the ``# resolved from:`` line of an older config.yaml."""
    first = text.split('\n', 1)[0]
    if not first.startswith('# resolved from:'):
        return []
    return [s.strip() for s in first[len('# resolved from:'):].split(', ') if s.strip()]


def find_runs(root=rundir.RUNS_ROOT, experiment=None, dataset=None, paper_dataset=None):
    """Every run directory (one holding config.yaml) below ``root``, optionally only
    those of an experiment, trained on ``dataset``, or standing for ``paper_dataset``
    (:func:`experiments.verdict.stands_for`)."""
    runs = []
    for cfg in sorted(glob.glob(os.path.join(root, '**', 'config.yaml'), recursive=True)):
        run = Run(os.path.dirname(cfg))
        if experiment and run.config.get('experiment') != experiment:
            continue
        if dataset and run.config['data']['dataset'] != dataset:
            continue
        if paper_dataset and verdict.stands_for(run.config, run.sources) != paper_dataset:
            continue
        runs.append(run)
    return runs


# --------------------------------------------------------------------- summaries

def summarize(cfg, log, fields, *, dataset_source, backend, device_name, wall_time_s, env,
              dataset_size=None):
    """The ``summary.json`` of a run: what every run records (its row, data, seed,
    hardware, commit, wall time) around ``fields``, what its kind of run measures
    (:func:`experiments.metrics.classifier_fields`,
    :func:`experiments.gan.summary_fields`), with its verdict (:func:`judged`).

    ``dataset_size``: ``{'train': n, 'test': m}`` of the data it trained on.
    """
    summary = {
        'experiment': cfg['experiment'],
        'row': cfg['row'],
        'dataset': cfg['data']['dataset'],
        'paper_dataset': verdict.stands_for(cfg, cfg.get('_sources', ())),
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
    """``summary`` with the verdict of :func:`experiments.verdict.assess` on the record it
    belongs to
    (``comparable_to_paper``, ``not_comparable_reasons``), for readers of the JSON."""
    judgement = Run.from_record(cfg, log, summary).assessment
    summary['comparable_to_paper'] = judgement.comparable
    summary['not_comparable_reasons'] = list(judgement.reasons)
    return summary
