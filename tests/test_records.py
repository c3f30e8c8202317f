"""Run records (experiments/rundir.py, metrics.py, verdict.py, runs.py): the one verdict
on a run (status, the paper dataset it stands for, comparability and its reasons) and
how every report shows it; summaries' edge cases; the printed tables' width; the
direction of the imports.  The end-to-end case trains a linear stand-in for the CNN (the
model does not enter the verdict) on small CIFAR-format batches."""
import json
import os
import pickle

import numpy as np
import pytest

import chainer.links as L

from experiments import compare, config as C, metrics, rundir, train, verdict
from experiments.runs import Run, assess, find_runs, summarize

T2 = os.path.join(C.CONFIG_ROOT, 'table2', 'cifar10')


def record(row='BN-2', presets=(), overrides=(), size=(50000, 10000), log=None,
           experiment='table2', dataset='cifar10', finished=True, summary_extra=None):
    """A run record in memory, as train.run writes it (config, log, summary)."""
    cfg = C.load_config(os.path.join(C.CONFIG_ROOT, experiment, dataset, row + '.yaml'),
                        presets, overrides)
    epochs = cfg['train']['epochs']
    log = log if log is not None else [
        {'epoch': e, 'iteration': 196 * e, metrics.TEST_ACC: 0.5 + 0.004 * e}
        for e in range(1, int(epochs) + 1)]
    summary = summarize(cfg, log, metrics.classifier_fields(cfg, log, finished),
                                dataset_source='test', backend='numpy',
                                device_name='cpu', wall_time_s=1.0, env={},
                                dataset_size={'train': size[0], 'test': size[1]})
    summary.update(summary_extra or {})
    return Run.from_record(cfg, log, summary)


# ------------------------------------------------------------------------ verdicts

def test_the_papers_setting_is_comparable():
    v = assess(record())
    assert v == verdict.Assessment(verdict.FINISHED, 'cifar10', True, ())
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
    v = assess(run)
    assert not v.comparable and any(r.startswith(reason) for r in v.reasons), v.reasons
    assert reason in v.label() and v.label().startswith('NOT COMPARABLE (')


def test_overrides_that_do_not_change_the_setting_keep_a_run_comparable():
    v = assess(record(overrides=['train.seed=3', 'data.data_dir=/x',
                                         'train.snapshot_every=5', 'data.test_batch_size=500']))
    assert v.comparable, v.reasons


def test_other_experiments_use_their_own_length():
    dn = record('BN-L40', experiment='densenet', dataset='cifar100')
    assert assess(dn).comparable
    short = record('BN-L40', experiment='densenet', dataset='cifar100',
                   overrides=['train.epochs=100'])
    assert '100 epochs (the paper: 200)' in assess(short).reasons


def test_gan_runs_need_the_papers_updates_and_the_fid_network():
    cfg = C.load_config(os.path.join(C.CONFIG_ROOT, 'dcgan', 'cifar10', 'mn.yaml'),
                        overrides=['gan.updates=50000'])
    summary = {'dataset_size': {'train': 50000, 'test': 10000}, 'finished': True,
               'fid': {'enabled': True, 'random_weights': False, 'standard': True}}
    v = assess(Run.from_record(cfg, [], summary))
    assert v.reasons == ('50,000 updates (the paper: 100,000)',)
    cfg = C.load_config(os.path.join(C.CONFIG_ROOT, 'dcgan', 'cifar10', 'mn.yaml'))
    assert assess(Run.from_record(cfg, [], summary)).comparable
    summary['fid'] = {'enabled': True, 'random_weights': True, 'standard': False}
    assert assess(Run.from_record(cfg, [], summary)).reasons == (
        'random-weights "FID", not an FID',)


def test_the_dataset_a_run_stands_for():
    assert assess(record()).dataset == 'cifar10'
    synth = record(overrides=['data.dataset=synthetic'])
    assert assess(synth).dataset == 'cifar10'
    assert verdict.stands_for({'data': {'dataset': 'synthetic'}},
                              ['/elsewhere/table2/cifar100/MN-2.yaml', '--set x=1']) == \
        'cifar100'
    assert verdict.stands_for({'data': {'dataset': 'synthetic'}}, ['/tmp/MN-2.yaml']) is None


def test_status_of_a_run():
    assert assess(record()).status == verdict.FINISHED
    assert assess(record(finished=False)).status == verdict.INTERRUPTED
    assert verdict.run_status(None, [], []) == verdict.NOT_STARTED


def test_a_runs_verdict_follows_a_replaced_record():
    run = record()
    assert assess(run).comparable
    run.summary = dict(run.summary, dataset_size=None)
    assert assess(run).reasons == ('dataset size not recorded',)
    run.config = dict(run.config, smoke=True)
    assert assess(run).reasons[0] == 'smoke preset'


# ------------------------------------------------------------------ summaries' edges

def test_checkpoints_round_up_to_an_evaluated_epoch():
    log = [{'epoch': 1, 'iteration': 4, metrics.TEST_ACC: 0.3},
           {'epoch': 2, 'iteration': 8, metrics.TEST_ACC: 0.5}]
    assert metrics.max_accuracy_at(log, [0.25, 0.5, 0.75, 1.0], 2) == {
        '25': 30.0, '50': 30.0, '75': 50.0, '100': 50.0}
    assert [metrics.checkpoint_epoch(f, 100) for f in (0.25, 0.5, 0.75, 1.0)] == \
        [25, 50, 75, 100]
    assert [metrics.checkpoint_epoch(f, 150) for f in (0.25, 0.3, 0.29)] == [38, 45, 44]
    assert metrics.checkpoint_epoch(0.3, 10) == 3          # 0.3 * 10 = 3.0000000000000004


# ---------------------------------------------------------- end to end, all reports

def _cifar10_batches(folder, n_train, n_test, seed=0):
    """The python batches of CIFAR-10 as its archive holds them (``folder``:
    ``cifar-10-batches-py``), with n_train training and n_test test images."""
    rs = np.random.RandomState(seed)
    per = n_train // 5
    os.makedirs(str(folder))

    def add(name, obj):
        with open(os.path.join(str(folder), name), 'wb') as f:
            pickle.dump(obj, f, protocol=2)
    add('batches.meta', {b'label_names': [b'c%d' % i for i in range(10)]})
    for i in range(5):
        add('data_batch_%d' % (i + 1), {
            b'data': rs.randint(0, 256, (per, 3072)).astype(np.uint8),
            b'labels': [int(v) for v in rs.randint(0, 10, per)]})
    add('test_batch', {b'data': rs.randint(0, 256, (n_test, 3072)).astype(np.uint8),
                       b'labels': [int(v) for v in rs.randint(0, 10, n_test)]})


@pytest.fixture(scope='module')
def small_cifar_run(tmp_path_factory):
    """`experiments.train BN-2 --data-dir <5,000 images> --set train.epochs=1`."""
    root = tmp_path_factory.mktemp('small_cifar')
    _cifar10_batches(root / 'cifar-10-batches-py', 5000, 1000)
    runs = root / 'runs'
    mp = pytest.MonkeyPatch()
    mp.setattr(train.models, 'build_model', lambda name, n, **kw: L.Linear(None, n))
    try:
        cfg = C.load_config(os.path.join(T2, 'BN-2.yaml'),
                            overrides=['train.epochs=1', 'data.data_dir=%s' % root])
        out = rundir.run_dir(cfg, root=str(runs))
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
    v = assess(out)
    assert (v.status, v.dataset, v.comparable, v.reasons) == (verdict.FINISHED, 'cifar10',
                                                              False, why)
    assert verdict.Assessment.recorded(s) == v      # the verdict the summary carries
    # the comparison with the paper, as a table and through both scripts
    recs = compare.compare('table2', find_runs(runs), paper_dataset='cifar10')
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
    assert rundir.clear_leftovers(out) == ['log.jsonq1w2', 'summary.json.tmp',
                                            'tmpsnapshot_epoch_3.rank1xyz',
                                            'tmpsnapshot_epoch_3abc']
    assert sorted(os.listdir(out)) == ['config.yaml', 'log.json', 'snapshot_epoch_2',
                                       'snapshot_epoch_2.rank1']
    os.makedirs(os.path.join(out, 'tmpsnapshot_epoch_4abc'))
    rundir.clear_run(out)                          # --force
    assert os.listdir(out) == ['config.yaml']


def test_resuming_with_another_number_of_processes_names_the_mpiexec():
    stored = C.load_config(os.path.join(T2, 'MN-2.yaml'), ['smoke'])
    two = dict(stored, world_size=2, communicator='naive', per_rank_batch_size=2)
    one = dict(stored, world_size=1, communicator=None, per_rank_batch_size=4)
    diffs = C.differences(two, one, rundir.RESUME_IGNORED)
    assert 'mpiexec -n 2 python -m experiments.train ... --communicator naive' in \
        rundir.resume_advice(two, '/run', diffs)
    diffs = C.differences(one, two, rundir.RESUME_IGNORED)
    assert 'one process, without mpiexec' in rundir.resume_advice(one, '/run', diffs)
    diffs = C.differences(one, dict(one, row='x'), rundir.RESUME_IGNORED)
    assert rundir.resume_advice(one, '/run', diffs) == \
        'resume it with its own config (/run/config.yaml)'


# ------------------------------------------------------------- one metric, two reports

def test_table3_and_the_pairs_measure_the_same_acceleration():
    """The steps to the BN row's best accuracy of Table 3 and of the BN-vs-MN pairs are
    one metric: on the same runs they give the same numbers, the same as the log's."""
    def log(accs):
        return [{'epoch': e, 'iteration': 10 * e, metrics.TEST_ACC: a}
                for e, a in enumerate(accs, 1)]
    runs = [record('BN-2', overrides=['train.seed=0', 'train.epochs=4'],
                   log=log([0.5, 0.6, 0.7, 0.8])),
            record('BN-2', overrides=['train.seed=1', 'train.epochs=4'],
                   log=log([0.5, 0.7, 0.78, 0.76])),
            record('MN-2', overrides=['train.seed=0', 'train.epochs=4'],
                   log=log([0.6, 0.79, 0.8, 0.81])),
            record('MN-2', overrides=['train.seed=1', 'train.epochs=4'],
                   log=log([0.7, 0.75, 0.82, 0.82]))]
    table = {(r['row'], r['metric'].split()[0]): r
             for r in compare.compare('table3', runs, paper_dataset='cifar10')}
    pairs = {r['row']: r for r in compare.compare_pairs(runs, 'cifar10', 'table2')
             if r['accuracy'] == 'inference statistics'}
    target = (80.0 + 78.0) / 2
    assert pairs['MN-2']['target'] == pytest.approx(target)
    assert table[('MN-2', 'steps')]['metric'] == 'steps to BN-2 max (ours %.2f%%)' % target
    assert table[('BN-2', 'steps')]['ours'] == pairs['BN-2']['steps'] == 40   # seed 1: 78 %
    assert table[('BN-2', 'steps')]['reached'] == pairs['BN-2']['reached'] == '1/2'
    assert table[('MN-2', 'steps')]['ours'] == pairs['MN-2']['steps'] == (20 + 30) / 2
    assert table[('MN-2', 'steps')]['our_reduction_pct'] == pytest.approx(
        pairs['MN-2']['reduction']) == pytest.approx(100 * (1 - 25 / 40))
    assert table[('MN-2', 'max')]['ours'] == pairs['MN-2']['best'] == pytest.approx(81.5)


# ------------------------------------------------------------------ printed tables

def _widest(text):
    return max(len(line) for line in text.splitlines())


def test_printed_tables_fit_the_width_and_say_each_reason_once():
    why = 'a subset of 512 training / 256 test images'
    runs = [record(row, dataset=ds, overrides=['train.seed=%d' % seed] + (
        ['data.subset=[512, 256]'] if seed else []))
        for ds in ('cifar10', 'cifar100') for row in ('BN-2', 'MN-2', 'MN-5')
        if (ds, row) != ('cifar10', 'MN-5') for seed in (0, 1)]
    texts = [compare.checkpoint_layout(compare.compare('table2', runs)),
             compare.to_text(compare.compare('table3', runs)),
             compare.to_text(compare.compare('table3', runs, paper_dataset='cifar100'))]
    for text in texts:
        assert _widest(text) <= compare.WIDTH, text
        assert text.count(why) == 1, text          # a numbered note above the table
        note = [line for line in text.splitlines() if why in line][0]
        mark = note.split()[0]
        assert mark == '[1]' and sum(line.rstrip().endswith(' ' + mark)
                                     for line in text.splitlines()) >= 2
        assert ' ok' in text                       # the comparable rows say so in the row
    assert 'dataset: cifar100' in texts[2] and 'cifar10 ' not in texts[2]


FMNIST = os.path.join(rundir.RUNS_ROOT, 'table2', 'fashion-mnist')


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason='no Fashion-MNIST runs in results/runs')
def test_the_committed_fashion_mnist_tables_fit_120_columns(capsys):
    """`make reproduce DATA=fashion-mnist` and scripts/compare.py on the runs in
    results/runs: every line fits, and the verdict against the paper is said once per
    table, not in every row."""
    from scripts import compare as compare_script, reproduce
    reproduce.main(['table2', '--dataset', 'fashion-mnist', '--no-train'])
    out = capsys.readouterr().out
    compare_script.main([os.path.dirname(FMNIST)])
    everything = capsys.readouterr().out
    for text in (out, everything):
        assert _widest(text) <= 120, max(text.splitlines(), key=len)
    assert out.count('NOT COMPARABLE (Fashion-MNIST') == 1
    assert 'inference statistics' in out and 'batch statistics' in out
    verdicts = {assess(r).label() for r in find_runs(os.path.dirname(FMNIST))}
    unwrapped = ' '.join(line.strip() for line in everything.splitlines())
    assert verdicts and all(unwrapped.count(v) == 1 for v in verdicts), verdicts


# ------------------------------------------------------------------ import direction

def _module_imports(top_level=True):
    """{module: the modules of experiments/ and mixnorm/ it imports when it is imported
    (its top-level import statements; with ``top_level=False`` also those in its
    functions)}."""
    import ast
    files = {}
    for pkg in ('experiments', 'mixnorm'):
        for folder, _, names in os.walk(os.path.join(C.REPO_ROOT, pkg)):
            for name in names:
                if name.endswith('.py'):
                    rel = os.path.relpath(os.path.join(folder, name), C.REPO_ROOT)
                    mod = rel[:-3].replace(os.sep, '.')
                    files[mod[:-len('.__init__')] if mod.endswith('.__init__') else mod] = \
                        os.path.join(folder, name)
    graph = {}
    for mod, path in files.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        found = set()
        for node in tree.body if top_level else ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                subs = {node.module + '.' + a.name for a in node.names} & set(files)
                found |= subs if len(subs) == len(node.names) else subs | {node.module}
        graph[mod] = {m for m in found if m in files and m != mod}
    return graph


def test_the_run_records_import_no_cycle_and_mixnorm_imports_no_experiment():
    graph = _module_imports()
    assert {'experiments.rundir', 'experiments.metrics', 'experiments.verdict',
            'experiments.runs'} <= set(graph)
    done, cycles = set(), []

    def visit(mod, path):
        if mod in path:
            cycles.append(path[path.index(mod):] + [mod])
            return
        if mod in done:
            return
        for other in sorted(graph[mod]):
            visit(other, path + [mod])
        done.add(mod)
    for mod in sorted(graph):
        visit(mod, [])
    assert not cycles, cycles
    anywhere = _module_imports(top_level=False)
    assert not [(m, o) for m in anywhere if m.startswith('mixnorm')
                for o in anywhere[m] if o.startswith('experiments')]
    assert not [o for o in graph['experiments.metrics'] if o.startswith('experiments')]
