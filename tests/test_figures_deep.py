"""Figures 4, 5, 8 and 9 (experiments/figures/, scripts/figures.py) from SYNTHETIC
FIXTURE run directories: nothing here trains a deep model.  The fixtures are written
by hand -- config.yaml from the real row configs (``load_config`` + ``dump``, with
``data.dataset=synthetic`` so that every figure drawn from them is marked not
comparable), a made-up log.json with the keys LogReport writes, summary.json from
``experiments.runs.summarize`` and, for the MN-4 run, made-up mixtures/*.npz in the
format of ``train.SaveMixtures`` -- so the figures' numbers can be checked against them.  The
Table 4 MN-4 configs are checked to save the mixtures of an MN layer (model built, not
trained).  Every figure's not-comparable notice comes from the one
``selection.comparability``."""
import mixnorm._compat  # noqa: F401  (NumPy-2 shim before any chainer import)

import math
import os

import numpy as np
import pytest

import mixnorm
from experiments import config as C, figures, metrics, models, rundir, train
from experiments.runs import summarize
from experiments.figures import inception, selection, style
from experiments.figures.curves import WINDOW, windowed_mean, windowed_std
from scripts import figures as cli
from figure_checks import check_files

EPOCHS = 12                 # planned epochs of every fixture run
ITERS_PER_EPOCH = 10
LAYER = 'inc2/0/2/4/bn'
SYNTHETIC_NOTE = 'synthetic test fixture (hand-written, no training)'


def _sites():
    model = models.build_model('inception_v3', 10)
    return model.normalization_sites()


SITES = _sites()
MN4_PATHS = SITES['inc2/0'] + SITES['inc3/0']          # the 10 MN modules of MN-4
MN1_PATHS = SITES['red1'] + SITES['red2']


# ------------------------------------------------------------ synthetic fixtures

def fake_log(seed, offset, mn_paths=(), k=5, epochs=EPOCHS):
    """A plausible LogReport list: errors and losses decreasing with noise, lr decay,
    and ``mn/<path>/components`` in [1, k] for every MN path (SYNTHETIC FIXTURE)."""
    rs = np.random.RandomState(seed)
    log = []
    for e in range(1, epochs + 1):
        test_err = 0.2 + offset + 0.6 * math.exp(-e / 4.0) + 0.01 * rs.randn()
        train_err = test_err - 0.05 - 0.01 * e
        entry = {'epoch': e, 'iteration': e * ITERS_PER_EPOCH,
                 'main/loss': 3.0 * train_err + 0.02 * rs.rand(),
                 'main/accuracy': 1.0 - train_err,
                 'validation/main/loss': 3.0 * test_err + 0.02 * rs.rand(),
                 'validation/main/accuracy': 1.0 - test_err,
                 'lr': 0.001 * 0.93 ** (e // 4), 'elapsed_time': 1.5 * e}
        for i, p in enumerate(mn_paths):
            entry['mn/%s/components' % p] = float(
                np.clip(k - 0.4 * (i % 3) * e / epochs + 0.1 * rs.randn(), 1, k))
        log.append(entry)
    return log


def write_run(root, experiment, dataset, row, log, seed=0, presets=(), overrides=()):
    """A run directory of a row config, as ``train.run`` lays it out, without training
    (SYNTHETIC FIXTURE): config.yaml, log.json, summary.json."""
    path = os.path.join(C.CONFIG_ROOT, experiment, dataset, row + '.yaml')
    cfg = C.load_config(path, presets, ['data.dataset=synthetic', 'train.epochs=%d' % EPOCHS,
                                        'train.seed=%d' % seed] + list(overrides))
    out = rundir.run_dir(cfg, root=root)
    os.makedirs(out)
    with open(os.path.join(out, 'config.yaml'), 'w') as f:
        f.write('# resolved from: %s\n' % ', '.join(cfg['_sources']))
        f.write(C.dump(cfg))
    rundir.write_json(os.path.join(out, 'log.json'), log)
    summary = summarize(cfg, log, metrics.classifier_fields(cfg, log),
                                dataset_source=SYNTHETIC_NOTE, backend='numpy',
                                device_name='none', wall_time_s=0.0, env={})
    rundir.write_json(os.path.join(out, 'summary.json'), summary)
    return out


def write_mixtures(run, layer=LAYER, channels=192, k=5):
    """mixtures/<layer>_iter<k>.npz at 20..100% of the planned iterations, in the format
    of ``train.SaveMixtures`` (SYNTHETIC FIXTURE): components drift apart and their
    weights become less uniform; the 60% fit has lost a component (K' = 4)."""
    rs = np.random.RandomState(7)
    total = EPOCHS * ITERS_PER_EPOCH
    os.makedirs(os.path.join(run, 'mixtures'))
    saved = {}
    for f in (0.2, 0.4, 0.6, 0.8, 1.0):
        it = int(round(f * total))
        kk = 4 if f == 0.6 else k
        w = np.linspace(1.0, 1.0 - 0.8 * f, kk) + 0.05 * rs.rand(kk)
        w = np.sort(w / w.sum())[::-1]
        means = (np.arange(kk)[:, None] - kk / 2.0) * (0.5 + 2 * f) + 0.3 * rs.randn(kk, channels)
        var = (0.2 + rs.rand(kk, channels)) ** 2
        np.savez(os.path.join(run, 'mixtures', '%s_iter%d.npz' % (layer.replace('/', '-'), it)),
                 weights=w.astype(np.float32), means=means.astype(np.float32),
                 variances=var.astype(np.float32), iteration=it, layer=layer)
        saved[it] = (w, means, var)
    return saved


@pytest.fixture(scope='module')
def fake_runs(tmp_path_factory):
    """SYNTHETIC FIXTURE run tree: Table 4 (CIFAR-10 BN-1, MN-4 x 2 seeds; CIFAR-100
    BN-1, MN-4 with mixtures, BN-5, MN-5 stopped at epoch 8), Table 6 policy 1 only,
    DenseNet L=40 only (L=100 missing)."""
    root = str(tmp_path_factory.mktemp('synthetic_fixture_runs'))
    runs = {}
    runs['c10 BN-1'] = write_run(root, 'table4', 'cifar10', 'BN-1', fake_log(0, 0.05))
    runs['c10 MN-4'] = write_run(root, 'table4', 'cifar10', 'MN-4',
                                 fake_log(1, 0.0, MN4_PATHS))
    runs['c10 MN-4 s1'] = write_run(root, 'table4', 'cifar10', 'MN-4',
                                    fake_log(2, 0.02, MN4_PATHS), seed=1)
    runs['c100 BN-1'] = write_run(root, 'table4', 'cifar100', 'BN-1', fake_log(3, 0.25))
    runs['c100 MN-4'] = write_run(root, 'table4', 'cifar100', 'MN-4',
                                  fake_log(4, 0.2, MN4_PATHS))
    runs['c100 BN-5'] = write_run(root, 'table4', 'cifar100', 'BN-5', fake_log(5, 0.3))
    runs['c100 MN-5'] = write_run(root, 'table4', 'cifar100', 'MN-5',
                                  fake_log(6, 0.25, MN4_PATHS, epochs=8))
    runs['BN-policy1'] = write_run(root, 'table6', 'cifar100', 'BN-policy1', fake_log(7, 0.2))
    runs['MN-policy1'] = write_run(root, 'table6', 'cifar100', 'MN-policy1',
                                   fake_log(8, 0.18, SITES['inc2/1'] + SITES['inc3/0'], k=3))
    runs['BN-L40'] = write_run(root, 'densenet', 'cifar100', 'BN-L40', fake_log(9, 0.1))
    runs['MN-L40'] = write_run(root, 'densenet', 'cifar100', 'MN-L40',
                               fake_log(10, 0.08, ['transition1/bn', 'transition2/bn',
                                                   'final_bn']))
    mixtures = write_mixtures(runs['c100 MN-4'])
    return root, runs, mixtures


def logged(run, key):
    return [e[key] for e in rundir.read_json(os.path.join(run, 'log.json')) if key in e]


# ------------------------------------------------------------------------ configs

@pytest.mark.parametrize('dataset,n_classes', [('cifar10', 10), ('cifar100', 100)])
def test_table4_mn4_saves_the_mixtures_of_an_mn_layer(dataset, n_classes, tmp_path):
    cfg = C.load_config(os.path.join(C.CONFIG_ROOT, 'table4', dataset, 'MN-4.yaml'))
    assert cfg['train']['save_mixtures'] == [LAYER]
    model = models.build_model('inception_v3', n_classes, **cfg['model']['kwargs'])
    mn = cfg['mn']
    replaced = mixnorm.replace_batch_normalization(
        model, mn['layers'], n_components=mn['n_components'], em_iters=mn['em_iters'])
    links = [p.lstrip('/') for p, link in model.namedlinks(skipself=True)
             if isinstance(link, mixnorm.MixtureNormalization)]
    assert LAYER in links and LAYER in replaced
    assert sorted(links) == sorted(MN4_PATHS) and len(links) == 10     # Figure 9's 10
    assert all(l.startswith(inception.FIG9_PREFIXES) for l in links)
    ext = train.SaveMixtures(model, cfg['train']['save_mixtures'], 1000, str(tmp_path))
    assert [p for p, _ in ext.links] == [LAYER] and ext.at == [200, 400, 600, 800, 1000]


# ------------------------------------------------------------------------ helpers

@pytest.mark.parametrize('window', [1, 3, 10])
def test_windowed_mean_matches_direct_computation(window):
    y = np.random.RandomState(window).randn(23).cumsum()
    y[[4, 11]] = np.nan
    got = windowed_mean(y, window)
    for i in range(len(y)):
        lo, hi = max(0, i - window // 2), min(len(y), i - window // 2 + window)
        w = [v for v in y[lo:hi] if np.isfinite(v)]
        if w:
            assert got[i] == pytest.approx(np.mean(w), abs=1e-12), i
        else:                                       # window 1 on a missing epoch
            assert np.isnan(got[i]), i
    with pytest.raises(ValueError):
        windowed_mean(y, 0)


# ----------------------------------------------------------------------- Figure 4

def test_fig4_inception_test_error(fake_runs, tmp_path, capsys):
    root, runs, _ = fake_runs
    result = cli.main(['fig4', '--runs-root', root, '--out', str(tmp_path)])
    meta = check_files(result, 'fig4', tmp_path)
    assert result.warning.startswith('NOT A PAPER-SETTING RUN') and \
        'synthetic data' in result.warning and meta['warning'] == result.warning
    assert [p['title'][:3] for p in meta['panels']] == ['(a)', '(b)', '(c)', '(d)']
    assert [p['curves'] for p in meta['panels']] == [
        ['BN-1', 'MN-1', 'MN-2', 'MN-3', 'MN-4'], ['BN-1', 'MN-1', 'MN-2', 'MN-4'],
        ['BN-5', 'MN-5'], ['BN-policy1', 'MN-policy1', 'BN-policy2', 'MN-policy2']]
    curves = {(c['experiment'], c['dataset'], c['row']): c for c in meta['curves']}
    assert set(curves) == {('table4', 'cifar10', 'BN-1'), ('table4', 'cifar10', 'MN-4'),
                           ('table4', 'cifar100', 'BN-1'), ('table4', 'cifar100', 'MN-4'),
                           ('table4', 'cifar100', 'BN-5'), ('table4', 'cifar100', 'MN-5'),
                           ('table6', 'cifar100', 'BN-policy1'),
                           ('table6', 'cifar100', 'MN-policy1')}
    # the CIFAR-10 MN-4 curve is the mean over its two seeds
    mn4 = curves['table4', 'cifar10', 'MN-4']
    a, b = (logged(runs[k], 'validation/main/accuracy') for k in ('c10 MN-4', 'c10 MN-4 s1'))
    want = [100 * (1 - (x + y) / 2) for x, y in zip(a, b)]
    assert mn4['seeds'] == [0, 1] and mn4['test_error'] == pytest.approx(want, abs=1e-3)
    assert mn4['windowed_std'] == pytest.approx(
        windowed_std(want, WINDOW), abs=1e-3)
    assert mn4['label'].startswith('MN-4 (inc2/0+inc3/0, K 5, EM 2) [2 seeds')
    mn5 = curves['table4', 'cifar100', 'MN-5']
    assert mn5['epochs'] == list(range(1, 9)) and '8/12 ep' in mn5['label']
    assert curves['table6', 'cifar100', 'BN-policy1']['label'].startswith(
        'BN-policy1 (lr x0.1 at 50/75%)')
    # missing rows are listed with the commands of their own experiment
    assert ('cifar10', 'MN-1') in result.missing and ('cifar100', 'BN-policy2') in result.missing
    assert result.commands == [
        'python scripts/reproduce.py table4 --dataset cifar10 --rows MN-1,MN-2,MN-3 '
        '--runs-root %s' % root,
        'python scripts/reproduce.py table4 --dataset cifar100 --rows MN-1,MN-2 '
        '--runs-root %s' % root,
        'python scripts/reproduce.py table6 --dataset cifar100 --rows BN-policy2,MN-policy2 '
        '--runs-root %s' % root]
    assert result.commands[2] in capsys.readouterr().out


# ----------------------------------------------------------------------- Figure 5

def test_fig5_densenet_four_panels(fake_runs, tmp_path):
    root, runs, _ = fake_runs
    result = figures.draw('fig5', root, str(tmp_path))
    meta = check_files(result, 'fig5', tmp_path)
    assert meta['window'] == 3 and 'synthetic data' in meta['warning']
    got = {(c['metric'], c['row']): c for c in meta['curves']}
    assert set(got) == {(m, r) for m in ('train_error', 'train_loss', 'test_error',
                                         'test_loss') for r in ('BN-L40', 'MN-L40')}
    for row in ('BN-L40', 'MN-L40'):
        run = runs[row]
        for metric, key, f in (('train_error', 'main/accuracy', lambda a: 100 * (1 - a)),
                               ('train_loss', 'main/loss', lambda v: v),
                               ('test_error', 'validation/main/accuracy', lambda a: 100 * (1 - a)),
                               ('test_loss', 'validation/main/loss', lambda v: v)):
            c = got[metric, row]
            want = [f(v) for v in logged(run, key)]
            assert c[metric] == pytest.approx(want, abs=1e-3), (metric, row)
            assert c['windowed_std'] == pytest.approx(windowed_std(want, 3), abs=1e-3)
    assert sorted(result.missing) == [('cifar100', 'BN-L100'), ('cifar100', 'MN-L100')]
    assert result.commands == [
        'python -m experiments.train configs/densenet/cifar100/%s.yaml --out %s' % (
            row, os.path.join(root, 'densenet', 'cifar100', row, 'seed0'))
        for row in ('BN-L100', 'MN-L100')]


# ----------------------------------------------------------------------- Figure 8

def test_fig8_mixture_components(fake_runs, tmp_path):
    root, runs, saved = fake_runs
    result = cli.main(['fig8', '--runs-root', root, '--out', str(tmp_path), '--seed', '3'])
    meta = check_files(result, 'fig8', tmp_path)          # found the CIFAR-100 MN-4 run
    assert meta['run'] == runs['c100 MN-4'] and meta['layer'] == LAYER
    assert 'synthetic data' in meta['warning'] and meta['n_channels_total'] == 192
    channels = meta['channels']
    assert len(channels) == 6 and channels == sorted(channels)
    assert channels == np.sort(np.random.RandomState(3).choice(192, 6, replace=False)).tolist()
    assert meta['planned_iterations'] == EPOCHS * ITERS_PER_EPOCH
    assert [r['iteration'] for r in meta['rows']] == sorted(saved)
    assert [r['fraction'] for r in meta['rows']] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    for r in meta['rows']:
        w, means, var = saved[r['iteration']]
        assert r['weights'] == pytest.approx(w, rel=1e-6)
        assert np.allclose(r['means'], means[:, channels], atol=1e-5)
        assert np.allclose(r['variances'], var[:, channels], rtol=1e-5)
    assert [len(r['weights']) for r in meta['rows']] == [5, 5, 4, 5, 5]
    # a mixture file is read back sorted by weight, heaviest first
    mix = inception.load_mixture(inception.mixture_files(runs['c100 MN-4'])[0][1])
    assert (np.diff(mix['weights']) <= 0).all() and mix['means'].shape == (5, 192)
    assert inception.rank_colors(5) == list(style.COMPONENT_COLORS)


def test_fig8_without_mixtures_fails_clearly(fake_runs, tmp_path):
    root, runs, _ = fake_runs
    with pytest.raises(FileNotFoundError, match='save_mixtures'):
        figures.draw('fig8', root, str(tmp_path), run_dir=runs['c10 MN-4'])
    with pytest.raises(SystemExit, match='no saved mixtures of inc2/0/2/4/bn'):
        cli.main(['fig8', '--run-dir', runs['c10 MN-4'], '--out', str(tmp_path)])
    # an MN-4 run of CIFAR-100 without mixtures (made before save_mixtures): a note
    other = str(tmp_path / 'runs')
    write_run(other, 'table4', 'cifar100', 'MN-4', fake_log(0, 0.2, MN4_PATHS))
    result = figures.draw('fig8', other, str(tmp_path / 'out'))
    assert not result.rendered and result.missing == [('cifar100', 'MN-4')]
    assert 'without saved mixtures' in result.notes[0]
    bad = tmp_path / 'bad.npz'
    np.savez(str(bad), weights=np.ones(2), means=np.zeros((3, 4)), variances=np.ones((3, 4)))
    with pytest.raises(ValueError, match='expected weights'):
        inception.load_mixture(str(bad))


# ----------------------------------------------------------------------- Figure 9

def test_fig9_effective_components(fake_runs, tmp_path):
    root, runs, _ = fake_runs
    result = cli.main(['fig9', '--runs-root', root, '--out', str(tmp_path), '--window', '3'])
    meta = check_files(result, 'fig9', tmp_path)
    assert not result.missing and 'synthetic data' in meta['warning']
    by = {(c['dataset'], c['module']): c for c in meta['curves']}
    assert sorted(m for d, m in by if d == 'cifar100') == sorted(MN4_PATHS)
    assert sorted(m for d, m in by if d == 'cifar10') == sorted(MN4_PATHS)
    for p in MN4_PATHS:
        key = 'mn/%s/components' % p
        c = by['cifar100', p]                              # one seed: the logged values
        want = logged(runs['c100 MN-4'], key)
        assert c['key'] == key and c['components'] == pytest.approx(want, abs=1e-9)
        assert c['smoothed'] == pytest.approx(windowed_mean(want, 3), abs=1e-9)
        assert c['windowed_std'] == pytest.approx(windowed_std(want, 3), abs=1e-9)
        c = by['cifar10', p]                               # two seeds: their mean
        a, b = logged(runs['c10 MN-4'], key), logged(runs['c10 MN-4 s1'], key)
        assert c['components'] == pytest.approx([(x + y) / 2 for x, y in zip(a, b)])
        assert c['seeds'] == [0, 1]


def test_fig9_falls_back_to_every_mn_module(fake_runs, tmp_path):
    """A row without MN under inc2/0 and inc3/0 (MN-1: red1, red2) shows every MN module
    and says so; the dataset without a run is listed with its command."""
    root = str(tmp_path / 'runs')
    write_run(root, 'table4', 'cifar10', 'MN-1', fake_log(0, 0.0, MN1_PATHS, k=3))
    result = figures.draw('fig9', root, str(tmp_path), row='MN-1')
    meta = check_files(result, 'fig9', tmp_path)
    assert sorted(c['module'] for c in meta['curves']) == sorted(MN1_PATHS)
    assert any('no MN module under inc2/0 or inc3/0' in n for n in result.notes)
    assert result.missing == [('cifar100', 'MN-1')]
    assert result.commands == ['python scripts/reproduce.py table4 --dataset cifar100 '
                               '--rows MN-1 --runs-root %s' % root]


# ---------------------------------------------------------------------------- all

def test_all_lists_missing_deep_figures_with_commands(tmp_path, capsys):
    out = tmp_path / 'figs'
    results = {r.name: r for r in cli.main(['all', '--runs-root', str(tmp_path / 'none'),
                                            '--out', str(out)])}
    assert {'fig4', 'fig5', 'fig8', 'fig9'} <= set(results)
    assert not any(r.rendered for r in results.values()) and not out.exists()
    text = capsys.readouterr().out
    none = str(tmp_path / 'none')
    for line in ('fig4: MISSING', 'fig5: MISSING', 'fig8: MISSING', 'fig9: MISSING',
                 'python scripts/reproduce.py table4 --dataset cifar10 '
                 '--rows BN-1,MN-1,MN-2,MN-3,MN-4 --runs-root %s' % none,
                 'python scripts/reproduce.py table4 --dataset cifar100 '
                 '--rows BN-1,MN-1,MN-2,MN-4,BN-5,MN-5 --runs-root %s' % none,
                 'python scripts/reproduce.py table6 --dataset cifar100 '
                 '--rows BN-policy1,MN-policy1,BN-policy2,MN-policy2',
                 'python -m experiments.train configs/densenet/cifar100/BN-L40.yaml',
                 'python -m experiments.train configs/densenet/cifar100/MN-L100.yaml',
                 'python scripts/reproduce.py table4 --dataset cifar100 --rows MN-4 '
                 '--runs-root %s' % none,
                 'python scripts/reproduce.py table4 --dataset cifar10 --rows MN-4 '
                 '--runs-root %s' % none):
        assert line in text, line
    assert selection.train_command('densenet', 'cifar100', 'MN-L40') == \
        'python -m experiments.train configs/densenet/cifar100/MN-L40.yaml'
    for fig in ('fig4', 'fig5', 'fig8', 'fig9'):                # single figures fail
        with pytest.raises(SystemExit):
            cli.main([fig, '--runs-root', none, '--out', str(out)])


def test_all_draws_the_deep_figures_of_existing_runs(fake_runs, tmp_path, capsys):
    root, _, _ = fake_runs
    results = {r.name: r for r in cli.main(['all', '--runs-root', root,
                                             '--out', str(tmp_path)])}
    assert all(results[f].rendered for f in ('fig4', 'fig5', 'fig8', 'fig9'))
    assert not any(results[f].rendered for f in ('fig1', 'fig2', 'fig3'))  # no table2 runs
    text = capsys.readouterr().out
    for f in ('fig4', 'fig5', 'fig8', 'fig9'):
        assert '%s: wrote' % f in text
    assert 'incomplete, missing runs: cifar100 BN-L100, cifar100 MN-L100' in text
    assert text.count('not comparable to the paper (synthetic data, not CIFAR') >= 4


def test_every_notice_comes_from_comparability(fake_runs, tmp_path, monkeypatch):
    """The figures decide comparability in one place: what ``selection.comparability``
    answers is what every figure's title says."""
    root, _, _ = fake_runs
    monkeypatch.setattr(selection, 'comparability', lambda run: (True, []))
    results = {r.name: r for r in figures.all_figures(root, str(tmp_path / 'a'),
                                                      log=lambda text: None)}
    drawn = [n for n in ('fig4', 'fig5', 'fig8', 'fig9') if results[n].rendered]
    assert drawn == ['fig4', 'fig5', 'fig8', 'fig9']
    assert all(results[n].warning is None for n in drawn)      # synthetic, yet "comparable"
    monkeypatch.setattr(selection, 'comparability', lambda run: (False, ['stand-in reason']))
    for r in figures.all_figures(root, str(tmp_path / 'b'), log=lambda text: None):
        if r.rendered:
            assert r.warning == ('NOT A PAPER-SETTING RUN - not comparable to the paper '
                                 '(stand-in reason)'), r.name
