"""Fashion-MNIST through the whole kit: the models take its one channel, a run on small
IDX files records both test accuracies (inference and batch statistics) and says it is
not the paper's data, BN and MN runs trained the same way are comparable with each
other (``run_records.assess``) and ``compare.compare_pairs`` measures the paper's
acceleration on them; one smoke row trains on the real files where the Debian package
is installed."""
import copy
import gzip
import json
import os
import subprocess

import numpy as np
import pytest

import chainer

from experiments import (compare, config as C, data, metrics as metrics_lib, models, pipeline,
                         reproduce, rundir, runs as run_records, train, verdict)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T2F = os.path.join(C.CONFIG_ROOT, 'table2', 'fashion-mnist')
T2C = os.path.join(C.CONFIG_ROOT, 'table2', 'cifar10')


def idx_bytes(arr):
    arr = np.ascontiguousarray(arr, np.uint8)
    return (b'\x00\x00\x08' + bytes([arr.ndim]) + np.array(arr.shape, '>u4').tobytes()
            + arr.tobytes())


@pytest.fixture(scope='module')
def idx_dir(tmp_path_factory):
    """Tiny learnable Fashion-MNIST in the official IDX files (gzipped): class k is a
    bright bar at a class-specific row on a black background."""
    folder = tmp_path_factory.mktemp('fmnist')
    rs = np.random.RandomState(0)
    for split, n in (('train', 64), ('test', 32)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = (rs.rand(n, 28, 28) < 0.05).astype(np.uint8) * 60
        for i, k in enumerate(y):
            x[i, 2 + 2 * k:4 + 2 * k, 4:24] = 220
        im, lb = data.FMNIST_FILES[split]
        (folder / (im + '.gz')).write_bytes(gzip.compress(idx_bytes(x)))
        (folder / (lb + '.gz')).write_bytes(gzip.compress(idx_bytes(y)))
    return folder


TINY = ['data.batch_size=16', 'data.test_batch_size=16', 'train.epochs=2',
        'train.snapshot_every=1']


def fm_cfg(row, folder, extra=()):
    return C.load_config(os.path.join(T2F, row + '.yaml'), ['smoke'],
                         TINY + ['data.subset=[32, 16]', 'data.data_dir=%s' % folder]
                         + list(extra))


@pytest.fixture(scope='module')
def fm_runs(idx_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp('runs')
    out = {}
    for row in ('BN-2', 'MN-2'):
        cfg = fm_cfg(row, idx_dir)
        out[row] = rundir.run_dir(cfg, root=str(root))
        train.run(cfg, out=out[row], progress=False)
    return root, out


# -------------------------------------------------------------------------- models

@pytest.mark.parametrize('name, kwargs', [('cifar_cnn', {}),
                                          ('densenet', {'depth': 7, 'growth': 2})])
def test_classifiers_take_the_datasets_channels(name, kwargs):
    model = models.build_model(name, 10, in_channels=1, **kwargs)
    x = np.zeros((2, 1, 32, 32), np.float32)
    with chainer.using_config('train', False):
        assert model(x).shape == (2, 10)
    assert model.conv1.conv.W.shape[1] == 1 if name == 'cifar_cnn' else \
        model.conv1.W.shape[1] == 1


def test_inception_takes_one_channel():
    model = models.build_model('inception_v3', 10, in_channels=1)
    assert model.stem[0].conv.W.shape[1] == 1


def test_build_model_takes_the_channels_of_the_configs_dataset():
    cfg = C.load_config(os.path.join(T2F, 'MN-2.yaml'))
    clf = train.build_model(cfg, 10)
    assert clf.predictor.conv1.conv.W.shape == (64, 1, 5, 5)
    assert type(clf.predictor.conv3.bn).__name__ == 'MixtureNormalization'
    cifar = train.build_model(C.load_config(os.path.join(T2C, 'BN-2.yaml')), 10)
    assert cifar.predictor.conv1.conv.W.shape == (64, 3, 5, 5)


def test_configs_are_table2s_rows_on_fashion_mnist():
    for row in ('BN-1', 'BN-2', 'BN-3', 'BN-4', 'MN-1', 'MN-2', 'MN-3', 'MN-4'):
        f = C.load_config(os.path.join(T2F, row + '.yaml'))
        c = C.load_config(os.path.join(T2C, row + '.yaml'))
        assert f['data']['dataset'] == 'fashion-mnist'
        assert (f['data']['crop_pad'], f['data']['flip']) == (2, True)
        for key in ('model', 'optimizer', 'schedule', 'mn', 'train'):
            assert f[key] == c[key], (row, key)
        assert f['data']['batch_size'] == c['data']['batch_size'] == 256
    for preset in ('fmnist-cpu', 'fmnist-gpu'):
        cfg = C.load_config(os.path.join(T2F, 'MN-2.yaml'), [preset])
        assert not cfg.get('smoke')
    gpu = C.load_config(os.path.join(T2F, 'BN-2.yaml'), ['fmnist-gpu'])
    assert gpu['data']['subset'] is None
    assert 10000 % gpu['data']['test_batch_size'] == 0


# ------------------------------------------------------------- batch-stat evaluation

def _state(link):
    d = {}
    chainer.serializers.DictionarySerializer(d).save(link)
    return {k: np.array(v) for k, v in d.items()}


@pytest.mark.parametrize('row', ['BN-2', 'MN-2'])
def test_batch_statistics_evaluator_leaves_the_model_untouched(idx_dir, row):
    cfg = fm_cfg(row, idx_dir)
    ds = pipeline.load_data(cfg)
    clf = train.build_model(cfg, 10)
    clf(ds.train_x[:16], ds.train_y[:16])      # a training forward: queue, averages
    before = _state(clf)
    twin = copy.deepcopy(clf)
    it = chainer.iterators.SerialIterator(
        chainer.datasets.TupleDataset(ds.test_x, ds.test_y), 16, repeat=False,
        shuffle=False)
    result = train.BatchStatisticsEvaluator(it, clf)()
    after = _state(clf)
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    # the same numbers as training-mode forwards of a copy, batch by batch
    accs = []
    with chainer.using_config('train', True), chainer.no_backprop_mode():
        for s in range(0, ds.n_test, 16):
            y = twin.predictor(ds.test_x[s:s + 16])
            accs.append(float(chainer.functions.accuracy(y, ds.test_y[s:s + 16]).array))
    assert result['main/accuracy'] == pytest.approx(np.mean(accs))
    # inference statistics give another number (the running averages lag)
    it.reset()
    inf = chainer.training.extensions.Evaluator(it, clf)()
    assert 'main/accuracy' in inf


# ---------------------------------------------------------------- runs and records

def test_a_run_on_idx_files_records_both_accuracies_and_its_data(fm_runs, idx_dir):
    root, runs = fm_runs
    for row, path in runs.items():
        assert path.startswith(os.path.join(str(root), 'smoke', 'table2', 'fashion-mnist',
                                            row))
        log = json.load(open(os.path.join(path, 'log.json')))
        for e in log:
            for key in ('validation/main/accuracy', 'validation_batchstats/main/accuracy',
                        'validation_batchstats/main/loss'):
                assert key in e and np.isfinite(e[key]), (row, key)
        s = json.load(open(os.path.join(path, 'summary.json')))
        assert s['dataset'] == 'fashion-mnist' and s['paper_dataset'] == 'fashion-mnist'
        assert "Fashion-MNIST (not the paper's data)" in s['dataset_source']
        assert str(idx_dir) in s['dataset_source']
        assert s['dataset_size'] == {'train': 32, 'test': 16}
        assert s['comparable_to_paper'] is False
        assert "Fashion-MNIST, not the paper's data (CIFAR)" in s['not_comparable_reasons']
        cfg = C.yaml_load(open(os.path.join(path, 'config.yaml')))
        assert cfg['data']['crop_pad'] == 2 and cfg['data']['flip'] is True


def test_assess_keeps_the_two_comparabilities_apart(fm_runs):
    _, runs = fm_runs
    bn, mn = (run_records.assess(runs[r]) for r in ('BN-2', 'MN-2'))
    assert not bn.comparable and not mn.comparable          # to the paper
    assert bn.comparable_with(mn) and mn.comparable_with(bn)  # with each other
    assert bn.dataset == 'fashion-mnist'
    assert 'NOT COMPARABLE' in bn.label() and 'Fashion-MNIST' in bn.label()
    # a run trained another way (longer) is in another cohort, and says where it differs
    other = run_records.Run(runs['MN-2'])
    other.config = copy.deepcopy(other.config)
    other.config['train']['epochs'] = 3
    v = run_records.assess(other)
    assert not v.comparable_with(bn)
    assert [k for k, _, _ in v.cohort_differences(bn)] == ['train.epochs']


def _record(row, dataset, presets=(), sets=(), size=(50000, 10000), log=None,
            finished=True):
    folder = {'cifar10': T2C, 'fashion-mnist': T2F}[dataset]
    cfg = C.load_config(os.path.join(folder, row + '.yaml'), list(presets), list(sets))
    log = log or [{'epoch': 1, 'iteration': 10, metrics_lib.TEST_ACC: 0.5}]
    summary = run_records.summarize(cfg, log, metrics_lib.classifier_fields(cfg, log,
                                                                    finished=finished),
                                dataset_source='test', backend='numpy',
                                device_name='cpu', wall_time_s=1.0, env={},
                                dataset_size={'train': size[0], 'test': size[1]})
    return run_records.Run.from_record(cfg, log, summary)


def test_paper_runs_are_comparable_to_the_paper_and_with_each_other():
    bn, mn = run_records.assess(_record('BN-2', 'cifar10')), run_records.assess(
        _record('MN-2', 'cifar10'))
    assert bn.comparable and mn.comparable and bn.comparable_with(mn)
    # the same rows on Fashion-MNIST: with each other, never with the CIFAR runs
    fbn = run_records.assess(_record('BN-2', 'fashion-mnist', ['fmnist-cpu'],
                                 size=(2048, 512)))
    fmn = run_records.assess(_record('MN-4', 'fashion-mnist', ['fmnist-cpu'],
                                 size=(2048, 512)))
    assert fbn.comparable_with(fmn) and not fbn.comparable_with(bn)
    assert not fbn.comparable and any('preset fmnist-cpu' in r or 'subset' in r
                                      for r in fbn.reasons)
    # a different subset, preset or augmentation is another cohort
    for kw in (dict(presets=['fmnist-gpu'], size=(60000, 10000)),
               dict(presets=['fmnist-cpu'], sets=['data.flip=false'], size=(2048, 512)),
               dict(presets=['fmnist-cpu'], sets=['data.subset=[1024, 512]'],
                    size=(1024, 512))):
        assert not run_records.assess(_record('MN-2', 'fashion-mnist', **kw)).comparable_with(
            fbn), kw


# -------------------------------------------------------------------- comparison

def _log(accs, batch_accs, per_epoch=4):
    return [{'epoch': e, 'iteration': per_epoch * e, metrics_lib.TEST_ACC: a,
             compare.BATCH_ACC: b} for e, (a, b) in enumerate(zip(accs, batch_accs), 1)]


def test_compare_pairs_measures_the_acceleration_on_both_accuracies():
    runs = []
    for seed, (bn_acc, mn_acc) in enumerate([
            ([0.3, 0.6, 0.70, 0.80], [0.5, 0.75, 0.82, 0.83]),
            ([0.4, 0.6, 0.78, 0.80], [0.4, 0.81, 0.82, 0.84])]):
        for row, accs, batch in (('BN-2', bn_acc, [0.6, 0.7, 0.75, 0.80]),
                                 ('MN-2', mn_acc, [0.6, 0.8, 0.81, 0.82])):
            r = _record(row, 'fashion-mnist', ['fmnist-cpu'], ['train.seed=%d' % seed],
                        size=(2048, 512), log=_log(accs, batch))
            runs.append(r)
    recs = compare.compare_pairs(runs, 'fashion-mnist', 'table2')
    by = {(r['row'], r['accuracy']): r for r in recs}
    inf_bn, inf_mn = by[('BN-2', 'inference statistics')], by[('MN-2', 'inference statistics')]
    assert inf_bn['target'] == pytest.approx(80.0)            # mean of BN's bests
    assert inf_bn['steps'] == 16 and inf_bn['reached'] == '2/2'
    assert inf_mn['steps'] == pytest.approx((12 + 8) / 2) and inf_mn['reached'] == '2/2'
    assert inf_mn['reduction'] == pytest.approx(100 * (1 - 10 / 16))
    assert inf_mn['best'] == pytest.approx((83 + 84) / 2) and inf_mn['best_std'] is not None
    b_bn, b_mn = by[('BN-2', 'batch statistics')], by[('MN-2', 'batch statistics')]
    assert b_bn['target'] == pytest.approx(80.0) and b_bn['steps'] == 16
    assert b_mn['steps'] == 8 and b_mn['reduction'] == pytest.approx(50.0)
    assert all('NOT COMPARABLE' in r['status'] and 'not finished' not in r['status']
               for r in recs)
    # a run still training is counted, and its pair says so
    running = _record('MN-2', 'fashion-mnist', ['fmnist-cpu'], ['train.seed=2'],
                      size=(2048, 512), log=_log([0.5], [0.6]), finished=False)
    assert run_records.assess(running).status != verdict.FINISHED
    for r in compare.compare_pairs(runs + [running], 'fashion-mnist'):
        assert r['status'].startswith('NOT COMPARABLE (')
        assert r['status'].endswith('; 1 of 5 runs not finished'), r['status']
    text = compare.pairs_to_text(recs)
    assert 'inference statistics' in text and 'batch statistics' in text
    heading = compare.pairs_heading('fashion-mnist')
    assert 'NOT COMPARABLE to the paper' in heading and 'Fashion-MNIST' in heading
    # an MN row whose BN row was trained another way is not paired, and says why
    lone = [_record('MN-2', 'fashion-mnist', ['fmnist-cpu'], ['data.flip=false'],
                    size=(2048, 512), log=_log([0.5], [0.6]))]
    recs = compare.compare_pairs(runs[:1] + lone, 'fashion-mnist')
    assert len(recs) == 1 and 'no BN-2 run trained the same way' in recs[0]['metric']
    assert 'data.flip' in recs[0]['metric']


def test_reproduce_prints_the_pairs(fm_runs, capsys):
    root, _ = fm_runs
    args = type('A', (), dict(table='table2', dataset='fashion-mnist', no_train=True,
                              runs_root=str(root), synthetic=False, communicator=None))()
    recs = reproduce.reproduce(args)
    out = capsys.readouterr().out
    assert 'BN vs MN on Fashion-MNIST' in out and 'NOT COMPARABLE' in out
    assert {r['row'] for r in recs} == {'BN-2', 'MN-2'}


def test_make_reproduce_offers_fashion_mnist(tmp_path, monkeypatch):
    out = subprocess.run(['make', '-n', 'reproduce', 'DATA=fashion-mnist'], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert '--dataset fashion-mnist' in out and '--preset fmnist-cpu' in out
    assert '--rows BN-2,MN-2' in out and '--synthetic' not in out
    bad = subprocess.run(['make', '-n', 'reproduce', 'DATA=mnist'], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and 'DATA=fashion-mnist' in bad.stderr
    # without CIFAR, the error offers Fashion-MNIST before synthetic data
    monkeypatch.setattr(chainer.dataset.download, '_dataset_root', str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset('cifar10', tmp_path / 'no_cifar_here')
    msg = str(info.value)
    assert 0 <= msg.index('DATA=fashion-mnist') < msg.index('DATA=synthetic')


# ------------------------------------------------------------------ the real files

def _debian_files():
    return [os.path.join(data.DEBIAN_DIR, n + '.gz') for names in
            data.FMNIST_FILES.values() for n in names]


def _reproduce_main():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'reproduce_script', os.path.join(REPO, 'scripts', 'reproduce.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.skipif(not all(os.path.isfile(f) for f in _debian_files()),
                    reason='Fashion-MNIST is not installed under %s: the Debian package '
                           'dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist, '
                           'as root; .ci/run installs it where it can)' % data.DEBIAN_DIR)
def test_smoke_row_on_the_real_files(tmp_path, capsys):
    """The official files read as Fashion-MNIST should be, and MN-2 trains on them
    through the command line (smoke preset)."""
    ds = data.load_dataset('fashion-mnist')
    assert (ds.n_train, ds.n_test, ds.channels) == (60000, 10000, 1)
    assert np.bincount(ds.train_y).tolist() == [6000] * 10
    assert np.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.source.endswith(data.DEBIAN_DIR)
    raw0 = np.rint((ds.train_x[:, 0] * ds.std[0] + ds.mean[0]) * 255)
    assert (raw0[:, :2] == 0).all() and (raw0[:, :, -2:] == 0).all()   # the padding
    assert (raw0 == 0).mean() > 0.5                     # mostly black background
    _reproduce_main()(['table2', '--dataset', 'fashion-mnist', '--preset', 'smoke',
                       '--rows', 'MN-2', '--runs-root', str(tmp_path), '--no-progress'])
    out = capsys.readouterr().out
    assert 'BN vs MN on Fashion-MNIST' in out and 'no BN-2 run trained the same way' in out
    for row in ('MN-2',):
        s = json.load(open(tmp_path / 'smoke' / 'table2' / 'fashion-mnist' / row /
                           'seed0' / 'summary.json'))
        assert s['finished'] and data.DEBIAN_DIR in s['dataset_source']
        assert s['comparable_to_paper'] is False


# ------------------------------------------------------------------------ figures

def test_curve_figure_shows_both_accuracies_and_says_not_the_paper(fm_runs, tmp_path):
    from experiments import figures
    root, _ = fm_runs
    result = figures.draw('fmnist', str(root), str(tmp_path))
    assert result.rendered
    assert "Fashion-MNIST, not the paper's data" in result.warning
    sidecar = json.load(open(tmp_path / 'fmnist.json'))
    metrics = {(c['row'], 'test_error_batchstats' in c) for c in sidecar['curves']}
    assert metrics == {('BN-2', False), ('MN-2', False), ('BN-2', True), ('MN-2', True)}
    assert sidecar['missing'] == ['fashion-mnist BN-4', 'fashion-mnist MN-4']
    assert (tmp_path / 'fmnist.png').stat().st_size > 0


def test_fig1_on_a_fashion_mnist_snapshot(fm_runs, tmp_path):
    from experiments import figures
    from experiments.figures import activations
    _, runs = fm_runs
    snap = os.path.join(runs['MN-2'], 'snapshot_epoch_2')
    acts, info = activations.conv2_activations(snap, n_images=8, seed=1)
    assert acts.shape == (8, 128, 16, 16) and np.isfinite(acts).all()
    assert info['dataset'] == 'fashion-mnist'
    assert any('Fashion-MNIST' in r for r in info['not_comparable'])
    result = figures.draw('fig1', str(tmp_path), str(tmp_path), snapshot=snap, n_images=8,
                          n_channels=2, ks=(2,), em_iters=2)
    assert result.rendered and 'Fashion-MNIST' in result.warning


def test_densenet_and_inception_rows_have_fashion_mnist_configs():
    for experiment, rows in (('table4', ('BN-1', 'MN-1', 'MN-4')),
                             ('densenet', ('BN-L40', 'MN-L100'))):
        found = dict(reproduce.row_configs(experiment, 'fashion-mnist'))
        for row in rows:
            cfg = C.load_config(found[row])
            assert cfg['data']['dataset'] == 'fashion-mnist'
            assert data.channels_of(cfg['data']['dataset']) == 1


def test_compare_script_keeps_fashion_mnist_apart_from_the_paper(fm_runs, capsys):
    import importlib.util
    root, _ = fm_runs
    spec = importlib.util.spec_from_file_location(
        'compare_script', os.path.join(REPO, 'scripts', 'compare.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main([str(root)])
    out = capsys.readouterr().out
    assert 'BN vs MN on Fashion-MNIST' in out and 'NOT COMPARABLE' in out
    assert "Table 2 (the paper's reported numbers" not in out   # no paper table for them
    assert compare.compare('table2', run_records.find_runs(str(root))) == []
