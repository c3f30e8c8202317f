"""End-to-end: BN-2 and MN-2 train on tiny generated data, write valid records, resume
bit-for-bit; reproduce.py prints the comparison; missing data fails clearly."""
import json
import os
import shutil

import numpy as np
import pytest

from experiments import compare, config as C, records, train

T2 = os.path.join(C.CONFIG_ROOT, 'table2', 'cifar10')
TINY = ['data.dataset=synthetic', 'data.subset=[64, 32]', 'data.batch_size=16',
        'train.epochs=2', 'train.snapshot_every=1']


def tiny_cfg(row, extra=()):
    return C.load_config(os.path.join(T2, row + '.yaml'), ['smoke'], TINY + list(extra))


@pytest.fixture(scope='module')
def bn_mn_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('runs')
    out = {}
    for row in ('BN-2', 'MN-2'):
        cfg = tiny_cfg(row)
        out[row] = (cfg, records.run_dir(cfg, root=str(root)))
        train.run(cfg, out=out[row][1], progress=False)
    return root, out


def test_records_are_complete(bn_mn_runs):
    root, runs = bn_mn_runs
    for row, (cfg, path) in runs.items():
        assert path.startswith(os.path.join(str(root), 'smoke', 'table2', 'synthetic-cifar10',
                                            row))
        assert json.load(open(os.path.join(path, 'summary.json')))['config_dataset'] == 'cifar10'
        log = json.load(open(os.path.join(path, 'log.json')))
        assert [e['epoch'] for e in log] == [1, 2]
        for e in log:
            for key in ('main/loss', 'main/accuracy', 'validation/main/loss',
                        'validation/main/accuracy', 'lr', 'elapsed_time', 'iteration'):
                assert key in e and np.isfinite(e[key]), (row, key)
        assert log[-1]['iteration'] == 8
        assert ('mn/conv3/bn/components' in log[0]) == (row == 'MN-2')
        s = json.load(open(os.path.join(path, 'summary.json')))
        assert s['smoke'] is True and s['comparable_to_paper'] is False
        assert s['dataset'] == 'synthetic' and 'synthetic' in s['dataset_source']
        assert s['finished'] and s['epochs_done'] == 2 and s['iterations'] == 8
        assert s['backend'] == 'numpy' and s['seed'] == 0 and s['wall_time_s'] > 0
        assert set(s['max_test_accuracy']) == {'25', '50', '75', '100'}
        assert s['best_test_accuracy'] == pytest.approx(
            100 * max(e['validation/main/accuracy'] for e in log))
        assert 'git_commit' in s and s['environment']['cpu']
        cfg_back = C.validate(__import__('yaml').safe_load(open(os.path.join(path,
                                                                             'config.yaml'))))
        assert cfg_back['row'] == row
        assert os.path.exists(os.path.join(path, 'snapshot_epoch_1'))


def test_mn_layer_is_in_place(bn_mn_runs):
    import mixnorm
    cfg, _ = bn_mn_runs[1]['MN-2']
    clf = train.build_model(cfg, 10)
    assert isinstance(clf.predictor.conv3.bn, mixnorm.MixtureNormalization)
    assert clf.predictor.conv3.bn.n_components == 3
    assert (clf.predictor.conv3.bn.kmeans_iters, clf.predictor.conv3.bn.gmm_em_iters) == (1, 1)


@pytest.mark.parametrize('row', ['BN-2', 'MN-2'])
def test_resume_continues_bit_for_bit(bn_mn_runs, tmp_path, row):
    cfg, path = bn_mn_runs[1][row]
    resumed = str(tmp_path / 'resumed')
    os.makedirs(resumed)
    shutil.copy(os.path.join(path, 'snapshot_epoch_1'), resumed)
    train.run(cfg, out=resumed, resume='auto', progress=False)
    a = json.load(open(os.path.join(path, 'log.json')))
    b = json.load(open(os.path.join(resumed, 'log.json')))
    assert len(b) == 2
    for key in ('main/loss', 'validation/main/loss', 'validation/main/accuracy', 'lr'):
        assert a[1][key] == b[1][key], key
    s = json.load(open(os.path.join(resumed, 'summary.json')))
    assert s['resumed_from'] == 'snapshot_epoch_1'


def test_compare_marks_smoke_runs(bn_mn_runs):
    root, _ = bn_mn_runs
    runs = records.find_runs(str(root), experiment='table2')
    recs = compare.compare('table2', runs, paper_dataset='cifar10')
    assert {r['row'] for r in recs} == {'BN-2', 'MN-2'}
    assert all(r['status'].startswith('NOT COMPARABLE') for r in recs)
    bn100 = [r for r in recs if r['row'] == 'BN-2' and r['metric'] == 'max acc @100%'][0]
    assert bn100['paper'] == 87.95 and bn100['diff'] == pytest.approx(bn100['ours'] - 87.95)
    steps = compare.compare('table3', runs, paper_dataset='cifar10')
    bn = [r for r in steps if r['row'] == 'BN-2' and r['metric'].startswith('steps')][0]
    assert bn['ours'] is not None and bn['paper'] == 19500
    for text in (compare.to_text(recs), compare.to_markdown(recs), compare.to_csv(steps)):
        assert 'BN-2' in text and 'MN-2' in text


def test_reproduce_script_prints_table(bn_mn_runs, capsys):
    from scripts import reproduce
    root, _ = bn_mn_runs
    reproduce.main(['table2', '--dataset', 'cifar10', '--rows', 'BN-2,MN-2', '--synthetic',
                    '--preset', 'smoke', '--runs-root', str(root), '--no-progress']
                   + sum([['--set', s] for s in TINY], []))
    out = capsys.readouterr().out
    assert 'finished run' in out                       # nothing retrained
    assert '(87.95)' in out and 'NOT COMPARABLE' in out


def test_missing_cifar_fails_with_instructions(tmp_path, monkeypatch):
    import chainer
    monkeypatch.setattr(chainer.dataset, 'get_dataset_root', lambda: str(tmp_path / 'cache'))
    cfg = C.load_config(os.path.join(T2, 'BN-2.yaml'), ['smoke'],
                        ['data.data_dir=%s' % (tmp_path / 'nodata')])
    with pytest.raises(FileNotFoundError) as e:
        train.run(cfg, out=str(tmp_path / 'run'), progress=False)
    msg = str(e.value)
    assert 'nodata' in msg and '--data-dir' in msg
    assert not (tmp_path / 'run').exists()             # no orphan run directory


def test_bad_layer_leaves_no_run_directory(tmp_path):
    cfg = tiny_cfg('MN-2', ['mn.layers=[conv7]'])
    with pytest.raises(C.ConfigError, match='conv7'):
        train.run(cfg, out=str(tmp_path / 'run'), progress=False)
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('fmt', ['text', 'markdown', 'csv'])
def test_compare_script(bn_mn_runs, tmp_path, fmt, capsys):
    from scripts import compare as compare_script
    root, _ = bn_mn_runs
    out = tmp_path / ('cmp.' + fmt)
    compare_script.main([str(root), '--dataset', 'cifar10', '--format', fmt, '--out', str(out)])
    text = out.read_text()
    assert 'Table 2' in text and 'Table 3' in text and '87.95' in text
    assert 'NOT COMPARABLE' in text
    with pytest.raises(SystemExit, match='no such run'):
        compare_script.main([str(tmp_path / 'nothing')])


def test_save_mixtures_for_figure8(tmp_path):
    cfg = tiny_cfg('MN-2', ['train.save_mixtures=[conv3/bn]', 'train.epochs=1'])
    out = str(tmp_path / 'run')
    train.run(cfg, out=out, progress=False)
    files = sorted(os.listdir(os.path.join(out, 'mixtures')))
    # 4 iterations planned: 20/40/60/80/100 % -> iterations 1, 2, 3, 4 (deduplicated)
    assert files == ['conv3-bn_iter%d.npz' % i for i in (1, 2, 3, 4)]
    z = np.load(os.path.join(out, 'mixtures', files[-1]))
    assert z['means'].shape[1] == 128 and z['weights'].sum() == pytest.approx(1, rel=1e-5)
    with pytest.raises(ValueError, match='not MN layers'):
        train.run(tiny_cfg('MN-2', ['train.save_mixtures=[conv2/bn]']),
                  out=str(tmp_path / 'bad'), progress=False)
