"""End-to-end: BN-2 and MN-2 train on tiny generated data, write valid records, resume
bit-for-bit (also past a truncated snapshot); rerunning keeps finished runs, resumes
interrupted ones and refuses a run directory of another config; reproduce.py prints the
comparison and the time of each row; missing data fails clearly."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from experiments import compare, config as C, parallel, rundir, runs as run_records, train

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
        out[row] = (cfg, rundir.run_dir(cfg, root=str(root)))
        train.run(cfg, out=out[row][1], progress=False)
    return root, out


def test_records_are_complete(bn_mn_runs):
    root, runs = bn_mn_runs
    for row, (cfg, path) in runs.items():
        assert path.startswith(os.path.join(str(root), 'smoke', 'table2', 'synthetic-cifar10',
                                            row))
        assert json.load(open(os.path.join(path, 'summary.json')))['paper_dataset'] == 'cifar10'
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
        assert s['not_comparable_reasons'][:3] == ['smoke preset', 'synthetic data, not CIFAR',
                                                   'a subset of 64 training / 32 test images']
        assert s['dataset_size'] == {'train': 64, 'test': 32}
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
    runs = run_records.find_runs(str(root), experiment='table2')
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


def test_reproduce_prints_the_time_each_row_took(tmp_path, capsys):
    from scripts import reproduce
    reproduce.main(['table2', '--dataset', 'cifar10', '--rows', 'BN-2', '--synthetic',
                    '--preset', 'smoke', '--runs-root', str(tmp_path), '--no-progress']
                   + sum([['--set', s] for s in TINY + ['train.epochs=1',
                                                         'data.subset=[32, 16]']], []))
    out = capsys.readouterr().out
    assert re.search(r'== table2 cifar10 BN-2 seed 0: finished in \d+ s', out), out


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
    assert not (tmp_path / 'bad').exists()


# -------------------------------------------------------------- rerunning a run dir

def _copy_run(path, tmp_path):
    dst = str(tmp_path / 'run')
    shutil.copytree(path, dst)
    return dst


def test_rerunning_a_finished_run_keeps_it(bn_mn_runs, tmp_path, capsys):
    cfg, path = bn_mn_runs[1]['BN-2']
    run = _copy_run(path, tmp_path)
    before = open(os.path.join(run, 'summary.json')).read()
    argv = [os.path.join(T2, 'BN-2.yaml'), '--preset', 'smoke', '--out', run,
            '--no-progress'] + sum([['--set', s] for s in TINY], [])
    train.main(argv)
    out = capsys.readouterr().out
    assert 'finished run in %s (--force to retrain)' % run in out
    assert open(os.path.join(run, 'summary.json')).read() == before


def test_rerunning_an_interrupted_run_resumes_it(bn_mn_runs, tmp_path, capsys):
    cfg, path = bn_mn_runs[1]['MN-2']
    run = _copy_run(path, tmp_path)
    for f in ('summary.json', 'snapshot_epoch_2'):
        os.remove(os.path.join(run, f))                # stopped after epoch 1's snapshot
    train.run(cfg, out=run, progress=False)
    assert 'resumed from %s' % os.path.join(run, 'snapshot_epoch_1') in capsys.readouterr().out
    a = json.load(open(os.path.join(path, 'log.json')))
    b = json.load(open(os.path.join(run, 'log.json')))
    assert a[1]['validation/main/loss'] == b[1]['validation/main/loss']


def test_a_truncated_snapshot_falls_back_to_the_previous_one(bn_mn_runs, tmp_path, capsys):
    cfg, path = bn_mn_runs[1]['BN-2']
    run = _copy_run(path, tmp_path)
    os.remove(os.path.join(run, 'summary.json'))
    snap = os.path.join(run, 'snapshot_epoch_2')
    data = open(snap, 'rb').read()
    open(snap, 'wb').write(data[:len(data) // 2])
    train.run(cfg, out=run, resume='auto', progress=False)
    out = capsys.readouterr().out
    assert 'warning: %s cannot be read' % snap in out
    assert 'resuming from the previous snapshot, snapshot_epoch_1' in out
    a = json.load(open(os.path.join(path, 'log.json')))
    b = json.load(open(os.path.join(run, 'log.json')))
    assert a[1]['validation/main/loss'] == b[1]['validation/main/loss']
    # asked for by name, a truncated snapshot is an error, not a fallback
    open(snap, 'wb').write(data[:len(data) // 2])
    with pytest.raises(rundir.RunError, match='truncated or corrupted'):
        train.run(cfg, out=run, resume=snap, progress=False)


def test_resuming_with_another_config_names_the_keys(bn_mn_runs, tmp_path):
    cfg, path = bn_mn_runs[1]['MN-2']
    run = _copy_run(path, tmp_path)
    os.remove(os.path.join(run, 'summary.json'))        # interrupted
    bn = tiny_cfg('BN-2')
    with pytest.raises(C.ConfigError, match=r'holds an interrupted run of another config: '
                                            r'mn \(run: .*, now: None\), row'):
        train.run(bn, out=run, resume='auto', progress=False)
    lr = tiny_cfg('MN-2', ['optimizer.lr=0.02'])
    with pytest.raises(C.ConfigError, match=r'optimizer\.lr \(run: 0\.01, now: 0\.02\)'):
        train.run(lr, out=run, resume='auto', progress=False)
    # through the command line: one error line, config.yaml untouched
    before = open(os.path.join(run, 'config.yaml')).read()
    with pytest.raises(SystemExit) as e:
        train.main([os.path.join(T2, 'BN-2.yaml'), '--preset', 'smoke', '--out', run,
                    '--resume', 'auto', '--no-progress']
                   + sum([['--set', s] for s in TINY], []))
    assert str(e.value.code).startswith('error: %s holds an interrupted run' % run)
    assert '--force' in str(e.value.code) and '\n' not in str(e.value.code)
    assert open(os.path.join(run, 'config.yaml')).read() == before


def test_force_starts_over_with_the_new_config(bn_mn_runs, tmp_path, capsys):
    cfg, path = bn_mn_runs[1]['BN-2']
    run = _copy_run(path, tmp_path)
    new = tiny_cfg('BN-2', ['optimizer.lr=0.02', 'train.epochs=1'])
    s = train.run(new, out=run, force=True, progress=False)
    assert 'removed; training from scratch' in capsys.readouterr().out
    assert s['epochs_done'] == 1 and s['resumed_from'] is None
    assert sorted(f for f in os.listdir(run) if f.startswith('snapshot')) == \
        ['snapshot_epoch_1']
    assert len(json.load(open(os.path.join(run, 'log.json')))) == 1
    recorded = parallel.create(None).record(new)         # + world_size, communicator, ...
    assert C.differences(rundir.stored_config(run), recorded) == []
    assert rundir.stored_config(run)['world_size'] == 1 and s['world_size'] == 1


def test_no_nan_accuracy_before_the_first_evaluation(tmp_path):
    cfg = tiny_cfg('BN-2', ['train.max_iterations=1'])
    out = str(tmp_path / 'run')
    s = train.run(cfg, out=out, progress=False)
    assert s['finished'] and s['iterations'] == 1 and s['best_test_accuracy'] is None
    line = train.describe_result(s, out)
    assert 'nan%' not in line and 'no test evaluation yet' in line
    assert 'stops at train.max_iterations=1' in line


def test_a_batch_larger_than_the_data_is_a_config_error(tmp_path):
    from experiments import data as data_lib
    cfg = tiny_cfg('BN-2', ['data.batch_size=32', 'data.subset=null'])
    small = data_lib.load_dataset('synthetic', subset=[16, 8])
    with pytest.raises(C.ConfigError, match=r"'data.batch_size' is 32 but there are only 16"):
        train.run(cfg, out=str(tmp_path / 'run'), progress=False, dataset=small)
    assert not (tmp_path / 'run').exists()


def test_piped_progress_has_no_escape_codes(tmp_path, capsys):
    cfg = tiny_cfg('BN-2', ['train.epochs=1', 'data.subset=[32, 16]'])
    train.run(cfg, out=str(tmp_path / 'run'), progress=True)
    out = capsys.readouterr().out
    assert '\x1b' not in out and '\033' not in out
    lines = [l for l in out.splitlines() if l.strip()]
    assert lines[0].split()[:2] == ['epoch', 'iteration'] and lines[1].split()[0] == '1'


def test_train_accepts_synthetic_as_the_readme_says(tmp_path, capsys):
    out = str(tmp_path / 'run')
    train.main([os.path.join(T2, 'BN-2.yaml'), '--preset', 'smoke', '--synthetic', '--out',
                out, '--no-progress'] + sum([['--set', s] for s in TINY[1:] +
                                             ['train.epochs=1', 'data.subset=[32, 16]']], []))
    s = json.load(open(os.path.join(out, 'summary.json')))
    assert s['dataset'] == 'synthetic' and s['finished']
    assert 'NOT COMPARABLE (smoke preset; synthetic data' in capsys.readouterr().out


def test_a_gan_config_is_refused_by_the_classifier_trainer(tmp_path):
    cfg = C.load_config(os.path.join(C.CONFIG_ROOT, 'dcgan', 'cifar10', 'bn.yaml'))
    with pytest.raises(C.ConfigError, match='experiments.gan'):
        train.run(cfg, out=str(tmp_path / 'run'), progress=False)


def test_compare_shows_no_spread_for_a_single_seed(bn_mn_runs):
    root, _ = bn_mn_runs
    recs = compare.compare('table2', run_records.find_runs(str(root)), paper_dataset='cifar10')
    assert recs and all(r['n'] == 1 and r['std'] is None for r in recs)
    lines = compare.to_markdown(recs).splitlines()
    col = [c.strip() for c in lines[0].split('|')].index('±')
    assert {[c.strip() for c in line.split('|')][col] for line in lines[2:]} == {'—'}


def test_a_bn_model_converted_mid_run_trains_on_as_mn_and_resumes(bn_mn_runs, tmp_path):
    """``mn.convert_at_epoch``: the epochs before it are BN-2's own, the conversion
    carries the state, and a run resumed from the snapshot after the conversion is built
    with MN and finishes as the uninterrupted one."""
    import mixnorm
    _, (bn_cfg, bn_out) = bn_mn_runs[0], bn_mn_runs[1]['BN-2']
    cfg = tiny_cfg('MN-2', ['mn.layers=[all]', 'mn.convert_at_epoch=1'])
    out = str(tmp_path / 'converted')
    train.run(cfg, out=out, progress=False)
    bn_log = json.load(open(os.path.join(bn_out, 'log.json')))
    log = json.load(open(os.path.join(out, 'log.json')))
    assert log[0]['validation/main/loss'] == bn_log[0]['validation/main/loss']
    assert 'mn/conv1/bn/components' not in log[0]
    assert all('mn/conv%d/bn/components' % i in log[1] for i in range(1, 5))
    assert log[1]['main/loss'] != bn_log[1]['main/loss']
    resumed = str(tmp_path / 'resumed')
    os.makedirs(resumed)
    shutil.copy(os.path.join(out, 'snapshot_epoch_1'), resumed)
    start = rundir.prepare_run(cfg, resumed)
    assert train.resumes_converted(cfg, start)
    assert not train.resumes_converted(cfg, rundir.prepare_run(cfg, str(tmp_path / 'new')))
    model = train.build_model(cfg, 10, converted=True).predictor
    assert all(isinstance(getattr(model, 'conv%d' % i).bn, mixnorm.MixtureNormalization)
               for i in range(1, 5))
    train.run(cfg, out=resumed, progress=False)
    again = json.load(open(os.path.join(resumed, 'log.json')))
    assert again[-1]['validation/main/loss'] == log[-1]['validation/main/loss']
