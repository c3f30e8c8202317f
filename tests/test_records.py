"""experiments/records.py: the one verdict on a run (status, the paper dataset it stands
for, comparability and its reasons) and how every report shows it; summaries' edge
cases.  The end-to-end case trains a linear stand-in for the CNN (the model does not
enter the verdict) on a small CIFAR-format archive."""
import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest

import chainer.links as L

from experiments import compare, config as C, records, train

T2 = os.path.join(C.CONFIG_ROOT, 'table2', 'cifar10')


def record(row='BN-2', presets=(), overrides=(), size=(50000, 10000), log=None,
           experiment='table2', dataset='cifar10', finished=True, summary_extra=None):
    """A run record in memory, as train.run writes it (config, log, summary)."""
    cfg = C.load_config(os.path.join(C.CONFIG_ROOT, experiment, dataset, row + '.yaml'),
                        presets, overrides)
    epochs = cfg['train']['epochs']
    log = log if log is not None else [
        {'epoch': e, 'iteration': 196 * e, records.TEST_ACC: 0.5 + 0.004 * e}
        for e in range(1, int(epochs) + 1)]
    summary = records.summarize(cfg, log, records.classifier_fields(cfg, log, finished),
                                dataset_source='test', backend='numpy',
                                device_name='cpu', wall_time_s=1.0, env={},
                                dataset_size={'train': size[0], 'test': size[1]})
    summary.update(summary_extra or {})
    return records.Run.from_record(cfg, log, summary)


# ------------------------------------------------------------------------ verdicts

def test_the_papers_setting_is_comparable():
    v = records.assess(record())
    assert v == records.Assessment(records.FINISHED, 'cifar10', True, ())
    assert v.label() == 'comparable'


@pytest.mark.parametrize('kwargs,reason', [
    (dict(overrides=['train.epochs=1']), '1 epoch (the paper: 100)'),
    (dict(size=(5000, 10000)), '5,000 training images (the paper: 50,000)'),
    (dict(size=(50000, 2000)), '2,000 test images (the paper: 10,000)'),
    (dict(presets=['smoke']), 'smoke preset'),
    (dict(overrides=['data.dataset=synthetic']), 'synthetic data, not CIFAR'),
    (dict(overrides=['data.subset=[1000, 500]']), 'a subset of 1,000 training / 500 test'),
    (dict(overrides=['optimizer.lr=0.5']), "--set optimizer.lr=0.5 (not the row's setting)"),
    (dict(overrides=['train.max_iterations=10']), 'stops at train.max_iterations=10'),
    (dict(size=None), 'dataset size not recorded'),
])
def test_each_way_of_falling_short_is_a_reason(kwargs, reason):
    if kwargs.get('size', ()) is None:
        run = record()
        run.summary['dataset_size'] = None
    else:
        run = record(**kwargs)
    v = records.assess(run)
    assert not v.comparable and any(r.startswith(reason) for r in v.reasons), v.reasons
    assert reason in v.label() and v.label().startswith('NOT COMPARABLE (')


def test_overrides_that_do_not_change_the_setting_keep_a_run_comparable():
    v = records.assess(record(overrides=['train.seed=3', 'data.data_dir=/x',
                                         'train.snapshot_every=5', 'data.test_batch_size=500']))
    assert v.comparable, v.reasons


def test_other_experiments_use_their_own_length():
    dn = record('BN-L40', experiment='densenet', dataset='cifar100')
    assert records.assess(dn).comparable
    short = record('BN-L40', experiment='densenet', dataset='cifar100',
                   overrides=['train.epochs=100'])
    assert '100 epochs (the paper: 200)' in records.assess(short).reasons


def test_gan_runs_need_the_papers_updates_and_the_fid_network():
    cfg = C.load_config(os.path.join(C.CONFIG_ROOT, 'dcgan', 'cifar10', 'mn.yaml'),
                        overrides=['gan.updates=50000'])
    summary = {'dataset_size': {'train': 50000, 'test': 10000}, 'finished': True,
               'fid': {'enabled': True, 'random_weights': False, 'standard': True}}
    v = records.assess(records.Run.from_record(cfg, [], summary))
    assert v.reasons == ('50,000 updates (the paper: 100,000)',)
    cfg = C.load_config(os.path.join(C.CONFIG_ROOT, 'dcgan', 'cifar10', 'mn.yaml'))
    assert records.assess(records.Run.from_record(cfg, [], summary)).comparable
    summary['fid'] = {'enabled': True, 'random_weights': True, 'standard': False}
    assert records.assess(records.Run.from_record(cfg, [], summary)).reasons == (
        'random-weights "FID", not an FID',)


def test_the_dataset_a_run_stands_for():
    assert records.assess(record()).dataset == 'cifar10'
    synth = record(overrides=['data.dataset=synthetic'])
    assert records.assess(synth).dataset == 'cifar10'
    assert records.stands_for({'data': {'dataset': 'synthetic'}},
                              ['/elsewhere/table2/cifar100/MN-2.yaml', '--set x=1']) == \
        'cifar100'
    assert records.stands_for({'data': {'dataset': 'synthetic'}}, ['/tmp/MN-2.yaml']) is None


def test_status_of_a_run():
    assert records.assess(record()).status == records.FINISHED
    assert records.assess(record(finished=False)).status == records.INTERRUPTED
    assert records.run_status(None, [], []) == records.NOT_STARTED


# ------------------------------------------------------------------ summaries' edges

def test_checkpoints_round_up_to_an_evaluated_epoch():
    log = [{'epoch': 1, 'iteration': 4, records.TEST_ACC: 0.3},
           {'epoch': 2, 'iteration': 8, records.TEST_ACC: 0.5}]
    assert records.max_accuracy_at(log, [0.25, 0.5, 0.75, 1.0], 2) == {
        '25': 30.0, '50': 30.0, '75': 50.0, '100': 50.0}
    assert [records.checkpoint_epoch(f, 100) for f in (0.25, 0.5, 0.75, 1.0)] == \
        [25, 50, 75, 100]
    assert [records.checkpoint_epoch(f, 150) for f in (0.25, 0.3, 0.29)] == [38, 45, 44]
    assert records.checkpoint_epoch(0.3, 10) == 3          # 0.3 * 10 = 3.0000000000000004


# ---------------------------------------------------------- end to end, all reports

def _cifar10_archive(path, n_train, n_test, seed=0):
    """A CIFAR-10 python archive (uncompressed tar, same members) with n_train images."""
    rs = np.random.RandomState(seed)
    per = n_train // 5
    with tarfile.open(str(path), 'w') as tar:
        def add(name, obj):
            payload = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo('cifar-10-batches-py/' + name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        add('batches.meta', {b'label_names': [b'c%d' % i for i in range(10)]})
        for i in range(5):
            add('data_batch_%d' % (i + 1), {
                b'data': rs.randint(0, 256, (per, 3072)).astype(np.uint8),
                b'labels': [int(v) for v in rs.randint(0, 10, per)]})
        add('test_batch', {b'data': rs.randint(0, 256, (n_test, 3072)).astype(np.uint8),
                           b'labels': [int(v) for v in rs.randint(0, 10, n_test)]})


@pytest.fixture(scope='module')
def small_cifar_run(tmp_path_factory):
    """`experiments.train BN-2 --data-dir <5,000-image archive> --set train.epochs=1`."""
    root = tmp_path_factory.mktemp('small_cifar')
    _cifar10_archive(root / 'cifar-10-python.tar.gz', 5000, 1000)
    runs = root / 'runs'
    mp = pytest.MonkeyPatch()
    mp.setattr(train.models, 'build_model', lambda name, n, **kw: L.Linear(None, n))
    try:
        cfg = C.load_config(os.path.join(T2, 'BN-2.yaml'),
                            overrides=['train.epochs=1', 'data.data_dir=%s' % root])
        out = records.run_dir(cfg, root=str(runs))
        train.run(cfg, out=out, progress=False)
    finally:
        mp.undo()
    return str(runs), out


def test_a_short_run_on_a_small_archive_is_not_comparable_everywhere(small_cifar_run,
                                                                      capsys):
    runs, out = small_cifar_run
    why = ('5,000 training images (the paper: 50,000)',
           '1,000 test images (the paper: 10,000)', '1 epoch (the paper: 100)')
    s = json.load(open(os.path.join(out, 'summary.json')))
    assert s['dataset_size'] == {'train': 5000, 'test': 1000} and s['finished']
    assert s['comparable_to_paper'] is False and s['not_comparable_reasons'] == list(why)
    v = records.assess(out)
    assert (v.status, v.dataset, v.comparable, v.reasons) == (records.FINISHED, 'cifar10',
                                                              False, why)
    assert records.Assessment.recorded(s) == v      # the verdict the summary carries
    # the comparison with the paper, as a table and through both scripts
    recs = compare.compare('table2', records.find_runs(runs), paper_dataset='cifar10')
    assert recs and all(r['status'] == 'NOT COMPARABLE (%s)' % '; '.join(why) for r in recs)
    from scripts import compare as compare_script, reproduce
    compare_script.main([runs, '--table', 'table2'])
    reproduce.main(['table2', '--dataset', 'cifar10', '--no-train', '--runs-root', runs])
    text = capsys.readouterr().out
    assert text.count('5,000 training images (the paper: 50,000)') >= 2
    assert '1 epoch (the paper: 100)' in text and ' ok ' not in text
    # and the closing line of the run itself
    assert 'NOT COMPARABLE (5,000 training images' in train.describe_result(s, out)


def test_force_and_resume_remove_what_an_interrupted_write_left(tmp_path):
    out = str(tmp_path)
    for d in ('tmpsnapshot_epoch_3abc', 'tmpsnapshot_epoch_3.rank1xyz', 'log.jsonq1w2'):
        os.makedirs(os.path.join(out, d))
        open(os.path.join(out, d, 'partial'), 'w').write('x')
    for f in ('summary.json.tmp', 'snapshot_epoch_2', 'snapshot_epoch_2.rank1', 'log.json',
              'config.yaml'):
        open(os.path.join(out, f), 'w').write('x')
    assert records.clear_leftovers(out) == ['log.jsonq1w2', 'summary.json.tmp',
                                            'tmpsnapshot_epoch_3.rank1xyz',
                                            'tmpsnapshot_epoch_3abc']
    assert sorted(os.listdir(out)) == ['config.yaml', 'log.json', 'snapshot_epoch_2',
                                       'snapshot_epoch_2.rank1']
    os.makedirs(os.path.join(out, 'tmpsnapshot_epoch_4abc'))
    records.clear_run(out)                          # --force
    assert os.listdir(out) == ['config.yaml']


def test_resuming_with_another_number_of_processes_names_the_mpiexec():
    stored = C.load_config(os.path.join(T2, 'MN-2.yaml'), ['smoke'])
    two = dict(stored, world_size=2, communicator='naive', per_rank_batch_size=2)
    one = dict(stored, world_size=1, communicator=None, per_rank_batch_size=4)
    diffs = C.differences(two, one, records.RESUME_IGNORED)
    assert 'mpiexec -n 2 python -m experiments.train ... --communicator naive' in \
        records.resume_advice(two, '/run', diffs)
    diffs = C.differences(one, two, records.RESUME_IGNORED)
    assert 'one process, without mpiexec' in records.resume_advice(one, '/run', diffs)
    diffs = C.differences(one, dict(one, row='x'), records.RESUME_IGNORED)
    assert records.resume_advice(one, '/run', diffs) == \
        'resume it with its own config (/run/config.yaml)'
