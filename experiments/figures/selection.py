"""Which runs a figure draws, and whether they are comparable to the paper.

:func:`comparability` is the one place the figures decide whether a run is comparable
to the paper, and why not.  Everything else here reads its answer: the notice in a
figure's title (:func:`warning_for`), the choice among the runs of a row
(:func:`pick_runs`) and among candidate runs (:func:`preference`).  Also here: the paper
dataset a run stands for, reading the runs of a figure, and the commands that make the
runs a figure misses.
"""
import os

from experiments import metrics, rundir, verdict
from experiments.runs import Run, assess, find_runs

REPRODUCE = 'python scripts/reproduce.py'
TRAIN_COMMAND_EXPERIMENTS = ('densenet',)   # no reproduce.py rows: one train command/row
SMOKE = 'smoke preset'
SYNTHETIC = 'synthetic data, not CIFAR'
NO_RECORD = 'provenance not recorded (saved tensor)'


# ------------------------------------------------------------------ comparability

def comparability(run):
    """``(comparable, reasons)``: whether ``run`` (a :class:`experiments.runs.Run`)
    is comparable to the paper, and the reasons when it is not, as its one verdict
    (:attr:`experiments.runs.Run.assessment`) says for every table and figure.  ``None``
    stands for data without a run record (a saved tensor), which cannot be shown
    comparable.
    """
    if run is None:
        return False, [NO_RECORD]
    v = assess(run)
    return v.comparable, list(v.reasons)


def _rank(reasons):
    """Fewest reasons not to compare first; real data before synthetic."""
    return len(reasons), SYNTHETIC in reasons


def preference(run):
    """Sort key among candidate runs: the paper-setting runs first, then the runs with
    the fewest reasons not to compare, real data before synthetic."""
    return _rank(comparability(run)[1])


def warning_for(runs):
    """The title notice for a figure drawn from ``runs`` (None for data without a run
    record); None if every one is comparable to the paper."""
    reasons = []
    for run in runs:
        for r in comparability(run)[1]:
            if r not in reasons:
                reasons.append(r)
    if not reasons:
        return None
    head = 'SMOKE RUN' if SMOKE in reasons else 'NOT A PAPER-SETTING RUN'
    return '%s - not comparable to the paper (%s)' % (head, '; '.join(reasons))


# ------------------------------------------------------------------------- runs

def paper_dataset(run):
    """The paper dataset a run stands for (:func:`experiments.verdict.stands_for`)."""
    return verdict.stands_for(run.config, run.sources)


def collect_runs(root, experiment='table2'):
    """{(paper dataset, row): [Run, ...]} of the runs of ``experiment`` under ``root``."""
    out = {}
    for run in find_runs(root, experiment=experiment):
        ds = paper_dataset(run)
        if ds is not None:
            out.setdefault((ds, run.config['row']), []).append(run)
    return out


def planned_length(run):
    """The planned length of a run: generator updates of a GAN run, else epochs."""
    return (run.config.get('gan') or {}).get('updates') or run.config['train']['epochs']


def pick_runs(runs, reports=metrics.TEST_ACC):
    """The runs a curve is drawn from (only runs whose log reports ``reports`` count):
    the paper-setting runs if there are any, else the runs of one kind -- the kind with
    the fewest reasons not to compare (real data before synthetic), then the most seeds
    -- so that smoke, subset and synthetic runs of a row are never averaged together."""
    groups = {}
    for r in runs:
        if any(reports in e for e in r.log):
            key = (tuple(comparability(r)[1]), planned_length(r))
            groups.setdefault(key, []).append(r)
    if not groups:
        return []
    best = min(groups, key=lambda k: (_rank(k[0]), -len(groups[k]), -k[1], k))
    return sorted(groups[best], key=lambda r: (r.config['train']['seed'], r.path))


def read_runs(paths, experiment):
    """The runs at ``paths`` (a list, or directories separated by commas), each checked
    to be a run of ``experiment``."""
    if isinstance(paths, str):
        paths = [p for p in paths.split(',') if p]
    runs = []
    for path in paths:
        if not os.path.isfile(os.path.join(path, 'config.yaml')):
            raise FileNotFoundError('%s is not a run directory (no config.yaml)' % path)
        run = Run(path)
        if run.config.get('experiment') != experiment:
            raise ValueError('%s is a run of %s, not of %s' % (
                path, run.config.get('experiment'), experiment))
        runs.append(run)
    return runs


# --------------------------------------------------------------- missing runs

def runs_root_option(runs_root, flag='--runs-root'):
    """``' --runs-root DIR'`` when the runs live elsewhere than results/runs, else ''."""
    if runs_root and os.path.abspath(runs_root) != os.path.abspath(rundir.RUNS_ROOT):
        return ' %s %s' % (flag, runs_root)
    return ''


def reproduce_command(dataset, rows, runs_root=None, experiment='table2'):
    return '%s %s --dataset %s --rows %s%s' % (REPRODUCE, experiment, dataset, ','.join(rows),
                                               runs_root_option(runs_root))


def train_command(experiment, dataset, row, runs_root=None, seed=0):
    """``python -m experiments.train configs/<experiment>/<dataset>/<row>.yaml`` (for
    experiments without a reproduce.py command: DenseNet), with ``--out`` when the runs
    go elsewhere than results/runs."""
    cmd = 'python -m experiments.train configs/%s/%s/%s.yaml' % (experiment, dataset, row)
    if runs_root_option(runs_root):
        cmd += ' --out %s' % os.path.join(runs_root, experiment, dataset, row, 'seed%d' % seed)
    return cmd


def commands_for_runs(keys, runs_root):
    """The commands that make the runs ``keys`` [(experiment, dataset, row)]: one
    reproduce.py command per (experiment, dataset), or a train command per row."""
    groups = {}
    for exp, ds, row in keys:
        groups.setdefault((exp, ds), []).append(row)
    out = []
    for (exp, ds), rows in groups.items():
        if exp in TRAIN_COMMAND_EXPERIMENTS:
            out += [train_command(exp, ds, row, runs_root) for row in rows]
        else:
            out.append(reproduce_command(ds, rows, runs_root, exp))
    return out
