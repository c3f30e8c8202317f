"""Figures 1-3 (experiments/figures/, scripts/figures.py) from tiny synthetic runs:
files are valid PNG/PDF, missing runs are listed with the commands that make them,
the windowed std and seed means are right, bad inputs fail clearly, and no training
module imports the figures (or matplotlib)."""
import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

import mixnorm
from experiments import config as C, environment, figures, rundir, train
from experiments.runs import Run, assess
from experiments.figures import activations, curves, selection
from scripts import figures as cli
from figure_checks import capture_figures, check_files, png_size

T2 = os.path.join(C.CONFIG_ROOT, 'table2')
TINY = ['data.dataset=synthetic', 'data.subset=[16, 8]', 'data.batch_size=8',
        'train.epochs=2', 'train.snapshot_every=1']


@pytest.fixture(scope='module')
def tiny_runs(tmp_path_factory):
    """BN-2 and MN-2 of the CIFAR-100 table (synthetic data, 2 epochs, a snapshot after
    each), plus a copy of BN-2 as seed 1 with a shifted log (to check the mean over
    seeds)."""
    root = str(tmp_path_factory.mktemp('runs'))
    paths = {}
    for row in ('BN-2', 'MN-2'):
        cfg = C.load_config(os.path.join(T2, 'cifar100', row + '.yaml'), ['smoke'], TINY)
        paths[row] = rundir.run_dir(cfg, root=root)
        train.run(cfg, out=paths[row], progress=False)
    seed1 = paths['BN-2'].replace('seed0', 'seed1')
    os.makedirs(seed1)
    with open(os.path.join(paths['BN-2'], 'config.yaml')) as f:
        first, rest = f.readline(), yaml.safe_load(f)
    rest['train']['seed'] = 1
    with open(os.path.join(seed1, 'config.yaml'), 'w') as f:
        f.write(first + yaml.safe_dump(rest))
    log = rundir.read_json(os.path.join(paths['BN-2'], 'log.json'))
    for e in log:
        e['validation/main/accuracy'] = max(0.0, e['validation/main/accuracy'] - 0.1)
    rundir.write_json(os.path.join(seed1, 'log.json'), log)
    return root, paths


# ---------------------------------------------------------------------- helpers

@pytest.mark.parametrize('window', [1, 3, 10])
def test_windowed_std_matches_direct_computation(window):
    y = np.random.RandomState(window).randn(37).cumsum()
    y[[5, 20]] = np.nan
    got = curves.windowed_std(y, window)
    for i in range(len(y)):
        lo, hi = max(0, i - window // 2), min(len(y), i - window // 2 + window)
        w = [v for v in y[lo:hi] if np.isfinite(v)]
        assert got[i] == pytest.approx(np.std(w) if len(w) > 1 else 0.0, abs=1e-12), i
    assert curves.windowed_std([3.0] * 12, 10) == pytest.approx(np.zeros(12))
    with pytest.raises(ValueError):
        curves.windowed_std(y, 0)


def test_error_curve_means_over_seeds():
    a = [{'epoch': 1, 'validation/main/accuracy': 0.5},
         {'epoch': 2, 'validation/main/accuracy': 0.6}, {'epoch': 3}]
    b = [{'epoch': 1, 'validation/main/accuracy': 0.7}]
    epochs, err, n = curves.error_curve([a, b])
    assert epochs.tolist() == [1, 2] and n.tolist() == [2, 1]
    assert err == pytest.approx([40.0, 40.0])
    grid, full = curves.on_epoch_grid(np.array([1, 3]), np.array([1.0, 2.0]))
    assert grid.tolist() == [1, 2, 3] and np.isnan(full[1]) and full[2] == 2.0


def test_component_marginals_integrate_to_mixture():
    gmm = mixnorm.GMM(np.array([0.3, 0.7]), np.array([[0.0, 1.0], [3.0, -1.0]]),
                              np.array([[1.0, 0.5], [0.25, 2.0]]))
    x = np.linspace(-10, 15, 20001)
    comps = activations.component_marginals(gmm, 1, x)
    assert np.trapezoid(comps, x, axis=1) == pytest.approx([0.3, 0.7], abs=1e-6)
    assert comps[1].argmax() == np.abs(x + 1.0).argmin()


def _fake_run(root, name, dataset, seed, smoke, subset, source_ds='cifar100', epochs=2):
    path = os.path.join(str(root), name)
    os.makedirs(path)
    cfg = {'experiment': 'table2', 'row': 'BN-2', 'smoke': smoke,
           'data': {'dataset': dataset, 'subset': subset},
           'train': {'seed': seed, 'epochs': epochs}, 'model': {'name': 'cifar_cnn'}}
    with open(os.path.join(path, 'config.yaml'), 'w') as f:
        f.write('# resolved from: configs/table2/%s/BN-2.yaml\n' % source_ds)
        f.write(yaml.safe_dump(cfg))
    rundir.write_json(os.path.join(path, 'log.json'),
                       [{'epoch': 1, 'validation/main/accuracy': 0.5}])
    if subset is None and dataset != 'synthetic':
        rundir.write_json(os.path.join(path, 'summary.json'),
                           {'dataset_size': {'train': 50000, 'test': 10000}})
    return Run(path)


def test_runs_of_different_kinds_are_not_averaged(tmp_path):
    synth = [_fake_run(tmp_path, 's%d' % i, 'synthetic', i, True, [16, 8]) for i in range(3)]
    real = _fake_run(tmp_path, 'real', 'cifar100', 0, True, [512, 256])
    assert selection.pick_runs(synth + [real]) == [real]      # real data before synthetic
    full = _fake_run(tmp_path, 'full', 'cifar100', 4, False, None, epochs=100)
    assert selection.pick_runs(synth + [real, full]) == [full]
    assert selection.pick_runs(synth) == synth
    assert selection.paper_dataset(synth[0]) == 'cifar100'   # from the config's sources
    assert selection.paper_dataset(_fake_run(tmp_path, 'c10', 'synthetic', 0, True, None,
                                             source_ds='cifar10')) == 'cifar10'
    assert selection.comparability(full) == (True, [])
    assert selection.comparability(real) == (False, list(assess(real).reasons))
    assert 'smoke preset' in selection.comparability(real)[1]
    assert selection.warning_for([full]) is None
    assert selection.warning_for([real]).startswith(
        'SMOKE RUN - not comparable to the paper (smoke preset; ')
    short = _fake_run(tmp_path, 'short', 'cifar100', 5, False, None, epochs=1)
    assert selection.comparability(short) == (False, ['1 epoch (the paper: 100)'])


# ---------------------------------------------------------------------- Figures 2, 3

def test_all_lists_missing_figures_with_commands(tmp_path, capsys):
    out = tmp_path / 'figs'
    results = cli.main(['all', '--runs-root', str(tmp_path / 'none'), '--out', str(out)])
    assert [r.name for r in results] == ['fig2', 'fig3', 'fig1', 'fig4', 'fig5', 'fig8', 'fig9',
                                        'fig6', 'fig7', 'fmnist', 'fmnist_placement']
    assert not any(r.rendered for r in results) and not out.exists()
    text = capsys.readouterr().out
    for line in ('fig2: MISSING', 'fig3: MISSING', 'fig1: MISSING',
                 'python scripts/reproduce.py table2 --dataset cifar10 '
                 '--rows BN-1,MN-1,BN-2,MN-2,BN-3,MN-3,BN-4,MN-4',
                 'python scripts/reproduce.py table2 --dataset cifar100 '
                 '--rows BN-2,MN-2,MN-5,MN-6,MN-7,MN-8',
                 'python scripts/figures.py fig1 --runs-root %s' % (tmp_path / 'none')):
        assert line in text, line
    assert selection.reproduce_command('cifar100', ['MN-5', 'MN-6']) == \
        'python scripts/reproduce.py table2 --dataset cifar100 --rows MN-5,MN-6'
    with pytest.raises(SystemExit):                      # a single figure without runs
        cli.main(['fig3', '--runs-root', str(tmp_path / 'none'), '--out', str(out)])


def test_all_renders_existing_figures(tiny_runs, tmp_path, capsys):
    root, paths = tiny_runs
    results = {r.name: r for r in cli.main(['all', '--runs-root', root, '--n-images', '4',
                                             '--out', str(tmp_path)])}
    assert all(results[f].rendered for f in ('fig1', 'fig2', 'fig3'))
    text = capsys.readouterr().out
    assert 'SMOKE RUN' in text and 'incomplete, missing runs: cifar100 MN-5' in text

    r2 = results['fig2']
    meta = check_files(r2, 'fig2', tmp_path, min_png_bytes=10000)
    assert r2.warning.startswith('SMOKE RUN - not comparable to the paper')
    assert 'synthetic data' in r2.warning and meta['warning'] == r2.warning
    curves = {c['row']: c for c in meta['curves']}
    assert set(curves) == {'BN-2', 'MN-2'}                  # synthetic runs of cifar100 rows
    assert all(c['dataset'] == 'cifar100' for c in curves.values())
    bn = curves['BN-2']
    assert bn['seeds'] == [0, 1] and bn['seeds_per_epoch'] == [2, 2]
    log = rundir.read_json(os.path.join(paths['BN-2'], 'log.json'))
    want = [100 * (1 - e['validation/main/accuracy']) + 5.0 for e in log]  # seed 1: -10 pts
    assert bn['test_error'] == pytest.approx(want, abs=1e-3)
    assert bn['windowed_std'] == pytest.approx([np.std(want)] * 2, abs=1e-3)
    assert ('cifar10', 'BN-1') in r2.missing and ('cifar100', 'MN-4') in r2.missing
    assert ('cifar100', 'BN-2') not in r2.missing

    r3 = results['fig3']
    check_files(r3, 'fig3', tmp_path)
    assert sorted(r3.missing) == [('cifar100', r) for r in ('MN-5', 'MN-6', 'MN-7', 'MN-8')]
    assert r3.commands == ['python scripts/reproduce.py table2 --dataset cifar100 '
                           '--rows MN-5,MN-6,MN-7,MN-8 --runs-root %s' % root]
    assert r3.commands[0] in text

    meta = check_files(results['fig1'], 'fig1', tmp_path)     # snapshot found by itself
    assert meta['source']['row'] == 'BN-2' and meta['source']['epoch'] == 2
    assert meta['shape'] == [4, 128, 16, 16] and meta['warning'].startswith('SMOKE RUN')


# ------------------------------------------------------------------ import direction

def test_training_modules_import_neither_figures_nor_matplotlib():
    """configs -> train -> runs -> figures: importing a trainer pulls in no figure code
    and no matplotlib backend."""
    code = ('import sys, experiments.gan, experiments.train; '
            'bad = sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib" '
            'or m.startswith("experiments.figures")); '
            'assert not bad, bad')
    done = subprocess.run([sys.executable, '-c', code], cwd=environment.REPO_ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_figure_is_in_the_registry():
    assert sorted(figures.FIGURES) == ['fig%d' % i for i in range(1, 10)] + [
        'fmnist', 'fmnist_placement']
    assert sorted(figures.ALL_ORDER) == sorted(figures.FIGURES)
    with pytest.raises(ValueError, match='unknown figure'):
        figures.draw('fig10')


# --------------------------------------------------------------------------- Figure 1

def test_fig1_from_snapshot(tiny_runs, tmp_path, capsys):
    _, paths = tiny_runs
    snap = os.path.join(paths['MN-2'], 'snapshot_epoch_2')     # MN link loads too
    acts, info = activations.conv2_activations(snap, n_images=8, seed=3)
    assert acts.shape == (8, 128, 16, 16) and acts.dtype == np.float32
    assert np.isfinite(acts).all() and acts.std() > 0
    assert info['row'] == 'MN-2' and info['epoch'] == 2 and info['dataset'] == 'synthetic'
    again, _ = activations.conv2_activations(snap, n_images=8, seed=3)
    np.testing.assert_array_equal(acts, again)
    cli.main(['fig1', '--snapshot', snap, '--out', str(tmp_path), '--n-images', '4',
              '--channels', '3', '--em-iters', '2'])
    meta = json.load(open(os.path.join(str(tmp_path), 'fig1.json')))
    assert len(meta['channels']) == 3 and meta['shape'] == [4, 128, 16, 16]
    assert {s['method'] for s in meta['stats']} == {'BN', 'MN:2', 'MN:3'}
    assert meta['warning'].startswith('SMOKE RUN')
    png_size(os.path.join(str(tmp_path), 'fig1.png'))
    assert 'fig1: wrote' in capsys.readouterr().out


def test_fig1_draws_the_last_snapshot_with_labelled_x_axes(tiny_runs, tmp_path,
                                                         monkeypatch):
    root, paths = tiny_runs
    snaps = sorted(p for p in os.listdir(paths['BN-2']) if p.startswith('snapshot_epoch_'))
    assert snaps == ['snapshot_epoch_1', 'snapshot_epoch_2']
    assert activations.find_snapshot(root) == os.path.join(paths['BN-2'], 'snapshot_epoch_2')
    seen = capture_figures(monkeypatch)
    result = cli.main(['fig1', '--runs-root', root, '--out', str(tmp_path), '--n-images',
                       '4', '--em-iters', '2'])                 # no --snapshot: found
    meta = check_files(result, 'fig1', tmp_path)
    assert meta['source']['epoch'] == 2 and 'epoch 2 of 2' in meta['what']
    assert meta['source']['snapshot'] == os.path.join(paths['BN-2'], 'snapshot_epoch_2')
    axes = seen[-1]['axes']
    assert seen[-1]['name'] == 'fig1' and len(axes) == 2 * 3 * 4   # (BN, MN:2, MN:3) x 4
    assert [a['xlabel'] for a in axes[:8]] == [activations.BEFORE_XLABEL] * 4 + \
        [activations.AFTER_XLABEL] * 4                               # row by row
    assert all(a['xlabel'] for a in axes)


def test_fig1_from_saved_activations(tmp_path):
    rs = np.random.RandomState(0)
    mode = rs.rand(6, 1, 8, 8) < 0.4                     # two modes shared by all channels
    acts = np.where(mode, 4.0 + 0.5 * rs.randn(6, 5, 8, 8), rs.randn(6, 5, 8, 8))
    path = str(tmp_path / 'acts.npy')
    np.save(path, acts.astype(np.float32))
    result = cli.main(['fig1', '--activations', path, '--out', str(tmp_path), '--seed', '1',
                       '--channels', '2', '--name', 'fig1_npy'])
    meta = check_files(result, 'fig1_npy', tmp_path)
    assert meta['shape'] == [6, 5, 8, 8] and len(meta['channels']) == 2
    assert 'provenance not recorded' in meta['warning']
    stats = {(s['channel'], s['method']): s for s in meta['stats']}
    for c in meta['channels']:   # on bimodal data the mixtures fit far better than BN
        assert stats[c, 'MN:2']['mean_log_density'] > stats[c, 'BN']['mean_log_density'] + 0.1
        assert stats[c, 'MN:2']['components'] == 2


def test_fig1_missing_inputs_fail_clearly(tiny_runs, tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / 'run' / 'snapshot_epoch_7')
    with pytest.raises(FileNotFoundError, match='snapshot not found: .*snapshot_epoch_7'):
        activations.conv2_activations(missing)
    with pytest.raises(SystemExit) as e:
        cli.main(['fig1', '--snapshot', missing])
    assert 'snapshot not found' in str(e.value)
    with pytest.raises(SystemExit, match='shape'):
        bad = str(tmp_path / 'bad.npy')
        np.save(bad, np.zeros((4, 3)))
        cli.main(['fig1', '--activations', bad, '--out', str(tmp_path)])
    # a snapshot without its config, and a CIFAR run whose data are absent
    _, paths = tiny_runs
    lone = tmp_path / 'lone'
    lone.mkdir()
    shutil.copy(os.path.join(paths['BN-2'], 'snapshot_epoch_2'), str(lone))
    with pytest.raises(FileNotFoundError, match='--run-dir'):
        activations.conv2_activations(str(lone / 'snapshot_epoch_2'))
    with open(os.path.join(paths['BN-2'], 'config.yaml')) as f:
        cfg = yaml.safe_load(f)
    cfg['data'].update(dataset='cifar100', subset=None, data_dir=str(tmp_path / 'nodata'))
    (lone / 'config.yaml').write_text(yaml.safe_dump(cfg))
    import chainer
    monkeypatch.setattr(chainer.dataset, 'get_dataset_root', lambda: str(tmp_path / 'cache'))
    with pytest.raises(FileNotFoundError, match='(?s)test images of cifar100.*--data-dir'):
        activations.conv2_activations(str(lone / 'snapshot_epoch_2'))
