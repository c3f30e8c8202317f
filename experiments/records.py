"""Run records: where a run writes, what ``summary.json`` holds, and reading runs back.

A run directory (``results/runs/<experiment>/<dataset>/<row>/seed<k>/``; smoke runs
under ``results/runs/smoke/...``) holds ``config.yaml`` (the resolved config),
``log.json`` (Chainer's LogReport: one entry per epoch), ``summary.json`` and the
trainer snapshots ``snapshot_epoch_<e>``.
"""
import glob
import json
import math
import os

import yaml

from experiments import environment

RUNS_ROOT = os.path.join(environment.REPO_ROOT, 'results', 'runs')

TEST_ACC = 'validation/main/accuracy'
TEST_LOSS = 'validation/main/loss'


def config_dataset(cfg):
    """The dataset folder of the row config (``configs/<table>/<dataset>/<row>.yaml``),
    i.e. the paper dataset the row stands for, even when the run used other data."""
    for src in reversed(cfg.get('_sources', [])):
        parts = src.replace(os.sep, '/').split('/')
        if len(parts) >= 3 and parts[0] == 'configs' and parts[-1] != 'base.yaml' \
                and parts[1] != 'presets':
            return parts[-2]
    return cfg['data']['dataset']


def run_dir(cfg, root=RUNS_ROOT):
    """The directory of a run of ``cfg`` (smoke runs are kept apart; runs on synthetic
    data are named after the dataset their row stands for: ``synthetic-cifar10``)."""
    parts = ['smoke'] if cfg.get('smoke') else []
    data = cfg['data']['dataset']
    if data == 'synthetic':
        data = 'synthetic-%s' % config_dataset(cfg)
    parts += [cfg['experiment'], data, cfg['row'], 'seed%d' % cfg['train']['seed']]
    return os.path.join(root, *parts)


def write_config(out, cfg):
    """Create the run directory ``out`` and write the resolved ``config.yaml`` (its first
    line names the files and overrides it was merged from)."""
    from experiments import config as config_lib
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'config.yaml'), 'w') as f:
        f.write('# resolved from: %s\n' % ', '.join(cfg.get('_sources', [])))
        f.write(config_lib.dump(cfg))


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


def max_accuracy_at(log, fractions, epochs):
    """{percent: max test accuracy (%) over the epochs <= round(f * epochs)}."""
    out = {}
    for f in fractions:
        limit = int(round(f * epochs))
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


def summarize(cfg, log, *, dataset_source, backend, device_name, wall_time_s, env):
    """The ``summary.json`` of a run from its config and LogReport entries."""
    epochs = cfg['train']['epochs']
    accs = [e[TEST_ACC] for e in log if TEST_ACC in e]
    target = cfg['train'].get('target_accuracy')
    done_epochs = log[-1]['epoch'] if log else 0
    return {
        'experiment': cfg['experiment'],
        'row': cfg['row'],
        'dataset': cfg['data']['dataset'],
        'config_dataset': config_dataset(cfg),
        'dataset_source': dataset_source,
        'smoke': bool(cfg.get('smoke')),
        'comparable_to_paper': not cfg.get('smoke') and cfg['data']['dataset'] != 'synthetic'
                               and cfg['data'].get('subset') is None,
        'seed': cfg['train']['seed'],
        'epochs_planned': epochs,
        'epochs_done': done_epochs,
        'iterations': log[-1]['iteration'] if log else 0,
        'finished': bool(log) and done_epochs >= math.floor(epochs),
        'max_test_accuracy': max_accuracy_at(log, cfg['train']['checkpoints'], epochs),
        'best_test_accuracy': 100.0 * max(accs) if accs else None,
        'final_test_accuracy': 100.0 * accs[-1] if accs else None,
        'final_test_loss': next((e[TEST_LOSS] for e in reversed(log) if TEST_LOSS in e), None),
        'target_accuracy': target,
        'steps_to_target': steps_to_accuracy(log, target) if target is not None else None,
        'backend': backend,
        'device': device_name,
        'git_commit': env.get('git_commit'),
        'wall_time_s': wall_time_s,
        'environment': env,
    }


class Run:
    """A finished or partial run read back from its directory."""

    def __init__(self, path):
        self.path = path
        self.config = yaml.safe_load(open(os.path.join(path, 'config.yaml')))
        log_path = os.path.join(path, 'log.json')
        self.log = read_json(log_path) if os.path.exists(log_path) else []
        sum_path = os.path.join(path, 'summary.json')
        self.summary = read_json(sum_path) if os.path.exists(sum_path) else None

    @property
    def key(self):
        return (self.config['experiment'], self.config['data']['dataset'], self.config['row'])

    def __repr__(self):
        return 'Run(%r)' % self.path


def find_runs(root=RUNS_ROOT, experiment=None, dataset=None, config_dataset=None):
    """Every run directory (one holding config.yaml) below ``root``, optionally only
    those of an experiment, trained on ``dataset``, or of rows of ``config_dataset``."""
    runs = []
    for cfg in sorted(glob.glob(os.path.join(root, '**', 'config.yaml'), recursive=True)):
        run = Run(os.path.dirname(cfg))
        if experiment and run.config.get('experiment') != experiment:
            continue
        if dataset and run.config['data']['dataset'] != dataset:
            continue
        if config_dataset and (run.summary or {}).get('config_dataset',
                                                      run.config['data']['dataset']) \
                != config_dataset:
            continue
        runs.append(run)
    return runs
