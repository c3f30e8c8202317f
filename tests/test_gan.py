"""experiments/gan.py + experiments/models/dcgan.py: models, MN placement, configs, smoke
runs on tiny generated data with a labelled random-weights "FID", bit-for-bit resume,
comparison with the paper, Figures 6-7 (experiments/figures/dcgan.py), missing FID
weights."""
import json
import os
import shutil
import types

import numpy as np
import pytest
import yaml

import mixnorm
from experiments import config as C
from experiments import data as data_lib
from experiments import compare, fid, figures, gan, metrics, parallel, runs as run_records, verdict
from experiments.figures import selection
from experiments.figures.curves import windowed_std
from experiments.models import dcgan
from scripts import figures as figures_cli

DCGAN = os.path.join(C.CONFIG_ROOT, 'dcgan', 'cifar10')


def tiny_sets(cache):
    return ['data.dataset=synthetic', 'data.subset=[64, 16]', 'data.batch_size=8',
            'model.kwargs.ch=16', 'gan.updates=8', 'gan.snapshot_every=4',
            'gan.log_every=2', 'gan.grid=4', 'gan.fid.every=4', 'gan.fid.n_samples=48',
            'gan.fid.batch_size=24', 'gan.fid.cache_dir=%s' % cache]


def tiny_cfg(row, cache, extra=()):
    return gan.load_config(os.path.join(DCGAN, row + '.yaml'), ['gan_smoke'],
                           tiny_sets(cache) + list(extra))


# ---------------------------------------------------------------------------- models

def test_generator_and_discriminator_shapes():
    gen, dis = dcgan.build_dcgan(ch=16)
    z = gen.sample_z(np.random.RandomState(0), 5)
    assert z.shape == (5, 128) and z.dtype == np.float32 and np.abs(z).max() <= 1
    x = gen(z).array
    assert x.shape == (5, 3, 32, 32) and x.dtype == np.float32
    assert np.abs(x).max() <= 1 and x.std() > 0
    assert dis(x).shape == (5, 1)
    full, full_dis = dcgan.build_dcgan()            # the paper's widths
    assert full.l0.W.shape == (4 * 4 * 512, 128)
    assert [full[n].W.shape for n in ('dc1', 'dc2', 'dc3', 'dc4')] == [
        (512, 256, 4, 4), (256, 128, 4, 4), (128, 64, 4, 4), (64, 3, 3, 3)]
    assert full_dis.c3_0.W.shape == (512, 512, 3, 3) and full_dis.l4.W.shape == (1, 8192)
    assert full.normalization_sites() == {'linear': ['bn0'], 'deconv1': ['bn1'],
                                          'deconv2': ['bn2'], 'deconv3': ['bn3']}
    normal = dcgan.DCGANGenerator(ch=16, z_distribution='normal')
    assert np.abs(normal.sample_z(np.random.RandomState(0), 500)).max() > 1
    with pytest.raises(ValueError, match='multiple of 8'):
        dcgan.DCGANGenerator(ch=12)


def test_configs_match_the_paper():
    bn = gan.load_config(os.path.join(DCGAN, 'bn.yaml'))
    mn = gan.load_config(os.path.join(DCGAN, 'mn.yaml'))
    for cfg in (bn, mn):
        assert cfg['experiment'] == 'dcgan' and cfg['data']['dataset'] == 'cifar10'
        assert cfg['optimizer'] == dict(cfg['optimizer'], name='adam', lr=0.0002, beta1=0.0,
                                        beta2=0.9)
        assert cfg['data']['batch_size'] == 64 and cfg['gan']['updates'] == 100000
        f = cfg['gan']['fid']
        assert (f['enabled'], f['every'], f['n_samples'], f['dims'], f['image_size'],
                f['random_weights']) == (True, 10000, 10000, 2048, 299, False)
        assert not cfg['smoke']
    assert bn['row'] == 'DCGAN-BN' and bn['mn'] is None
    assert mn['row'] == 'DCGAN-MN'
    assert (mn['mn']['layers'], mn['mn']['n_components'], mn['mn']['em_iters']) == \
        (['deconv1', 'deconv2'], 3, 2)


def test_mn_replaces_the_first_two_deconvolution_bns():
    cfg = gan.load_config(os.path.join(DCGAN, 'mn.yaml'), overrides=['model.kwargs.ch=16'])
    gen, dis = gan.build_models(cfg)
    assert isinstance(gen.bn1, mixnorm.MixtureNormalization)
    assert isinstance(gen.bn2, mixnorm.MixtureNormalization)
    assert not isinstance(gen.bn0, mixnorm.MixtureNormalization)
    assert not isinstance(gen.bn3, mixnorm.MixtureNormalization)
    assert (gen.bn1.n_components, gen.bn1.kmeans_iters, gen.bn1.gmm_em_iters) == (3, 1, 1)
    assert gen.bn1.size == 8 and gen.bn2.size == 4
    assert not any(isinstance(l, mixnorm.MixtureNormalization) for l in dis.links())
    bn_gen, _ = gan.build_models(gan.load_config(os.path.join(DCGAN, 'bn.yaml')))
    assert not any(isinstance(l, mixnorm.MixtureNormalization) for l in bn_gen.links())
    bad = gan.load_config(os.path.join(DCGAN, 'mn.yaml'), overrides=['mn.layers=[deconv4]'])
    with pytest.raises(C.ConfigError, match='deconv1, deconv2, deconv3'):
        gan.build_models(bad)


def test_smoke_preset_for_gan_configs():
    cfg = gan.load_config(os.path.join(DCGAN, 'mn.yaml'), ['smoke'])
    assert cfg['smoke'] and cfg['_sources'][-1].endswith('gan_smoke.yaml')
    f = cfg['gan']['fid']
    assert f['random_weights'] and cfg['gan']['updates'] <= 50 and f['n_samples'] <= 1000
    assert cfg['model']['kwargs']['ch'] == 512 and cfg['model']['kwargs']['z_dim'] == 128
    plain = C.load_config(os.path.join(DCGAN, 'mn.yaml'), ['smoke'])
    with pytest.raises(C.ConfigError, match='gan_smoke'):
        gan.check_config(plain)
    with pytest.raises(C.ConfigError, match='not a GAN config'):
        gan.check_config(C.load_config(os.path.join(C.CONFIG_ROOT, 'table2', 'cifar10',
                                                    'BN-2.yaml')))
    with pytest.raises(C.ConfigError, match='gan.fid.dims'):
        gan.load_config(os.path.join(DCGAN, 'mn.yaml'), overrides=['gan.fid.dims=100'])


def test_a_dataset_the_gan_is_not_set_up_for_is_named_with_its_source():
    with pytest.raises(C.ConfigError, match=r"^--set data.dataset=fashion-mnist: .*3-channel"):
        gan.load_config(os.path.join(DCGAN, 'mn.yaml'), ['smoke'],
                        overrides=['data.dataset=fashion-mnist'])


def test_training_images_are_recovered_exactly():
    ds = data_lib.load_dataset('synthetic', subset=[40, 8], seed=3)
    (raw, _), _ = data_lib.synthetic_uint8(40, 8, 3)     # what load_dataset normalised
    u8 = gan.training_images(ds)
    assert u8.dtype == np.uint8 and u8.shape == (40, 3, 32, 32)
    np.testing.assert_array_equal(u8, raw)
    x = gan.to_model_range(u8)
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(gan.to_uint8(x), u8)


# ------------------------------------------------------------------------ smoke runs

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('gan')
    cache = str(root / 'fidcache')
    out = {}
    # BN through the command line, MN through run()
    bn_dir = str(root / 'bn')
    gan.main([os.path.join(DCGAN, 'bn.yaml'), '--preset', 'gan_smoke', '--out', bn_dir,
              '--no-progress'] + sum([['--set', s] for s in tiny_sets(cache)], []))
    out['DCGAN-BN'] = (tiny_cfg('bn', cache), bn_dir)
    cfg = tiny_cfg('mn', cache)
    mn_dir = str(root / 'mn')
    gan.run(cfg, out=mn_dir, progress=False)
    out['DCGAN-MN'] = (cfg, mn_dir)
    return root, out


def test_smoke_records_are_complete_and_labelled(runs):
    for row, (cfg, path) in runs[1].items():
        log = json.load(open(os.path.join(path, 'log.json')))
        assert [e['iteration'] for e in log] == [2, 4, 6, 8]
        for e in log:
            for key in ('gen/loss', 'dis/loss', 'dis/loss_real', 'dis/loss_fake'):
                assert np.isfinite(e[key]), (row, key)
        assert [e['iteration'] for e in log if 'fid' in e] == [4, 8]
        assert ('mn/bn1/components' in log[0]) == (row == 'DCGAN-MN')
        s = json.load(open(os.path.join(path, 'summary.json')))
        assert s['row'] == row and s['smoke'] and not s['comparable_to_paper']
        assert s['finished'] and s['updates_done'] == 8
        assert s['fid_random_weights'] and 'RANDOM-WEIGHTS' in s['fid_label']
        assert 'NOT an FID' in s['fid_label'] and s['fid']['standard'] is False
        assert s['fid']['n_samples'] == 48 and s['fid']['n_real'] == 64
        fids = [e['fid'] for e in log if 'fid' in e]
        assert [c['fid'] for c in s['fid_curve']] == fids
        assert s['lowest_fid'] == min(fids) and s['lowest_fid_step'] == [4, 8][
            int(np.argmin(fids))]
        assert s['steps_to_paper_bn_lowest_fid'] is None     # meaningless without FID
        assert 'synthetic' in s['dataset_source'] and s['seed'] == 0
        assert verdict.Assessment.recorded(s) == run_records.assess(path)
        assert s['backend'] == 'numpy' and s['wall_time_s'] > 0 and 'git_commit' in s
        for step in (4, 8):
            from PIL import Image
            img = Image.open(gan.sample_path(path, step))
            assert img.size == (4 * 32, 4 * 32)
        assert os.path.isfile(os.path.join(path, 'generator_best.npz'))
        assert os.path.isfile(os.path.join(path, 'snapshot_iter_4'))
        back = C.validate(yaml.safe_load(open(os.path.join(path, 'config.yaml'))))
        assert back['gan']['fid']['random_weights'] and back['row'] == row


def test_runs_are_reproducible_and_differ_between_bn_and_mn(runs):
    logs = {row: json.load(open(os.path.join(p, 'log.json'))) for row, (_, p) in runs[1].items()}
    assert logs['DCGAN-BN'][0]['gen/loss'] != logs['DCGAN-MN'][0]['gen/loss']


@pytest.mark.parametrize('row', ['DCGAN-BN', 'DCGAN-MN'])
def test_resume_continues_bit_for_bit(runs, tmp_path, row, capsys):
    cfg, path = runs[1][row]
    resumed = str(tmp_path / 'resumed')
    os.makedirs(resumed)
    shutil.copy(os.path.join(path, 'snapshot_iter_4'), resumed)
    s = gan.run(cfg, out=resumed, resume='auto', progress=False)
    assert 'resumed from %s (update 4)' % os.path.join(resumed, 'snapshot_iter_4') \
        in capsys.readouterr().out
    a = json.load(open(os.path.join(path, 'log.json')))
    b = json.load(open(os.path.join(resumed, 'log.json')))
    assert [e['iteration'] for e in b] == [2, 4, 6, 8]
    for ea, eb in zip(a[2:], b[2:]):
        for key in ('gen/loss', 'dis/loss', 'dis/loss_real', 'dis/loss_fake'):
            assert ea[key] == eb[key], (row, key, ea['iteration'])
    assert a[3]['fid'] == b[3]['fid']
    assert s['resumed_from'] == 'snapshot_iter_4'
    assert s['lowest_fid'] == json.load(open(os.path.join(path, 'summary.json')))['lowest_fid']


def test_compare_dcgan_prints_the_papers_numbers(runs, capsys):
    _, r = runs
    result = compare.compare_dcgan(r['DCGAN-BN'][1], r['DCGAN-MN'][1])
    out = capsys.readouterr().out
    for part in ('37.56', '33.35', '60000', '25000', '58', 'NOT COMPARABLE',
                 'random-weights', 'RANDOM-WEIGHTS'):
        assert part in out, part
    rows = {row['metric']: row for row in result['rows']}
    bn = json.load(open(os.path.join(r['DCGAN-BN'][1], 'summary.json')))
    mn = json.load(open(os.path.join(r['DCGAN-MN'][1], 'summary.json')))
    assert rows['DCGAN-BN lowest FID']['ours'] == bn['lowest_fid']
    assert rows['DCGAN-BN lowest FID']['paper'] == 37.56
    assert rows['DCGAN-BN step of lowest FID']['ours'] == bn['lowest_fid_step']
    assert rows['DCGAN-MN lowest FID']['ours'] == mn['lowest_fid']
    reach = rows['DCGAN-MN first evaluation with FID <= BN lowest']
    assert reach['paper'] == 25000
    assert reach['ours'] == metrics.steps_to_fid(metrics.fid_curve(
        json.load(open(os.path.join(r['DCGAN-MN'][1], 'log.json')))), bn['lowest_fid'])
    if reach['ours'] is not None:
        assert rows['step reduction (%) (evaluations)']['ours'] == pytest.approx(
            100 * (1 - reach['ours'] / bn['lowest_fid_step']))
    gan.main(['compare', r['DCGAN-BN'][1], r['DCGAN-MN'][1]])
    assert '37.56' in capsys.readouterr().out


def test_steps_to_fid_helpers():
    curve = [(10000, 60.0), (20000, 45.0), (30000, 35.0), (40000, 30.0)]
    assert metrics.steps_to_fid(curve, 37.56) == 30000
    assert metrics.interpolated_steps_to_fid(curve, 37.56) == pytest.approx(27440)
    assert metrics.steps_to_fid(curve, 10) is None
    assert metrics.interpolated_steps_to_fid(curve, 10) is None
    assert metrics.interpolated_steps_to_fid(curve, 70) == 10000
    np.testing.assert_allclose(windowed_std([1, 2, 4, 8], 3),       # Figure 6's band
                               [np.std([1, 2]), np.std([1, 2, 4]), np.std([2, 4, 8]),
                                np.std([4, 8])])


def test_figures_of_given_runs_are_written_and_labelled(runs, tmp_path):
    _, r = runs
    bn, mn = r['DCGAN-BN'][1], r['DCGAN-MN'][1]
    fig6 = figures.draw('fig6', str(tmp_path / 'none'), str(tmp_path), bn_runs=bn,
                        mn_runs=[mn])
    fig7 = figures.draw('fig7', str(tmp_path / 'none'), str(tmp_path), bn_run=bn, mn_run=mn)
    names = sorted(os.path.basename(p) for p in fig6.files + fig7.files)
    assert names == ['fig6.json', 'fig6.pdf', 'fig6.png', 'fig7.json', 'fig7.pdf', 'fig7.png']
    assert all(os.path.getsize(p) > 0 for p in fig6.files + fig7.files)
    info = json.load(open(os.path.join(str(tmp_path), 'fig6.json')))
    assert all('RANDOM-WEIGHTS' in label for label in info['fid_labels'])
    assert info['curves']['DCGAN-MN']['steps'] == [4, 8]
    assert info['curves']['DCGAN-BN']['runs'] == [bn]
    fids = [e['fid'] for e in json.load(open(os.path.join(bn, 'log.json'))) if 'fid' in e]
    assert info['curves']['DCGAN-BN']['fid'] == pytest.approx(fids)
    for result in (fig6, fig7):        # notices from the one comparability function
        assert result.warning.startswith('SMOKE RUN - not comparable to the paper')
        assert 'random-weights "FID"' in result.warning and 'synthetic data' in result.warning
    panels = json.load(open(os.path.join(str(tmp_path), 'fig7.json')))['panels']
    assert 'random-weights' in panels['(b) DCGAN-MN']['what']
    assert panels['(a) DCGAN-BN']['image'] == gan.sample_path(bn, min(
        (v, s) for s, v in metrics.fid_curve(json.load(open(os.path.join(bn, 'log.json')))))[1])
    other = tmp_path / 'table2_run'
    other.mkdir()
    (other / 'config.yaml').write_text(yaml.safe_dump({'experiment': 'table2'}))
    with pytest.raises(ValueError, match='is a run of table2, not of dcgan'):
        figures.draw('fig6', str(tmp_path), str(tmp_path), bn_runs=bn, mn_runs=str(other))
    with pytest.raises(ValueError, match='given as DCGAN-BN runs, but not of that row'):
        figures.draw('fig6', str(tmp_path), str(tmp_path), bn_runs=mn, mn_runs=mn)
    with pytest.raises(FileNotFoundError, match='not a run directory'):
        figures.draw('fig7', str(tmp_path), str(tmp_path), bn_run=str(tmp_path), mn_run=mn)
    with pytest.raises(SystemExit, match='scripts/figures.py fig6'):
        gan.main(['figures', bn, mn])


def test_gan_runs_are_comparable_only_with_the_standard_fid(runs):
    """The figures ask run_records.assess; its FID reasons follow the network a run used."""
    _, r = runs
    run = selection.read_runs(r['DCGAN-MN'][1], 'dcgan')[0]
    comparable, reasons = selection.comparability(run)
    assert not comparable and reasons[0] == 'smoke preset'
    assert 'random-weights "FID", not an FID' in reasons
    gan_cfg = dict(run.config['gan'], fid=dict(run.config['gan']['fid'], random_weights=False))
    run.config = dict(run.config, gan=gan_cfg)
    fid_reasons = {'no FID (gan.fid.enabled: false)', 'non-standard FID network',
                   'random-weights "FID", not an FID', 'FID network not recorded'}
    for fid_info, reason in (({'enabled': False}, 'no FID (gan.fid.enabled: false)'),
                             ({'enabled': True, 'standard': False},
                              'non-standard FID network')):
        run.summary = dict(run.summary, fid=fid_info)
        assert fid_reasons & set(selection.comparability(run)[1]) == {reason}
    run.summary = dict(run.summary, fid={'enabled': True, 'standard': True})
    assert not fid_reasons & set(selection.comparability(run)[1])


def test_figures_6_and_7_by_name(runs, tmp_path, capsys):
    root, _ = runs
    for name in ('fig6', 'fig7'):
        result = figures_cli.main([name, '--runs-root', str(root), '--out', str(tmp_path)])
        assert result.rendered and os.path.exists(os.path.join(str(tmp_path), name + '.png'))
        assert '%s: wrote' % name in capsys.readouterr().out
    bn, mn = runs[1]['DCGAN-BN'][1], runs[1]['DCGAN-MN'][1]
    for name in ('fig6', 'fig7'):                      # runs given by directory
        result = figures_cli.main([name, '--bn', bn, '--mn', mn, '--runs-root',
                                   str(tmp_path / 'none'), '--out', str(tmp_path / 'given')])
        assert result.rendered
    assert json.load(open(str(tmp_path / 'given' / 'fig7.json')))['panels'][
        '(b) DCGAN-MN']['run'] == mn
    res = {r.name: r for r in figures.all_figures(str(root), str(tmp_path / 'all'))}
    assert res['fig6'].rendered and res['fig7'].rendered
    for name in ('fig6', 'fig7'):
        with pytest.raises(SystemExit):
            figures_cli.main([name, '--runs-root', str(tmp_path / 'none'), '--out',
                              str(tmp_path)])
        text = capsys.readouterr().out
        assert '%s: MISSING - no runs of cifar10 DCGAN-BN, cifar10 DCGAN-MN' % name in text
        assert 'python scripts/reproduce.py dcgan --inception-weights fid.npz --runs-root' \
            in text


# ------------------------------------------------------------- FID weights handling

def test_missing_fid_weights_stop_before_training(runs, tmp_path):
    root, _ = runs
    cache = str(root / 'fidcache')
    missing = str(tmp_path / 'no_weights.npz')
    cfg = tiny_cfg('bn', cache, ['gan.fid.random_weights=false',
                                 'gan.fid.weights=%s' % missing])
    out = str(tmp_path / 'run')
    with pytest.raises(fid.FIDWeightsMissing, match='convert_fid_weights'):
        gan.run(cfg, out=out, progress=False)
    assert not os.path.exists(out)          # the trainer is built before the run begins
    with pytest.raises(SystemExit, match='--no-fid'):
        gan.main([os.path.join(DCGAN, 'bn.yaml'), '--preset', 'gan_smoke', '--out', out,
                  '--inception-weights', missing, '--set', 'gan.fid.random_weights=false',
                  '--no-progress'] + sum([['--set', s] for s in tiny_sets(cache)], []))
    # FID off only when asked: the run trains and records that it has no FID
    cfg = tiny_cfg('bn', cache, ['gan.fid.random_weights=false', 'gan.fid.enabled=false',
                                 'gan.updates=2', 'gan.fid.weights=%s' % missing])
    s = gan.run(cfg, out=str(tmp_path / 'nofid'), progress=False)
    assert s['finished'] and s['lowest_fid'] is None and s['fid_label'] == 'FID disabled'
    assert os.path.isfile(gan.sample_path(str(tmp_path / 'nofid'), 2))


def test_reproduce_dcgan_without_weights_does_not_suggest_synthetic(tmp_path):
    """--synthetic was given: the missing weights, not the data, are the problem."""
    from scripts import reproduce
    with pytest.raises(SystemExit) as e:
        reproduce.main(['dcgan', '--synthetic', '--preset', 'smoke', '--runs-root',
                        str(tmp_path), '--inception-weights', str(tmp_path / 'none.npz'),
                        '--set', 'gan.fid.random_weights=false', '--no-progress'])
    msg = str(e.value.code)
    assert msg.startswith('error: FID Inception weights not found: %s' % (tmp_path / 'none.npz'))
    assert '--synthetic' not in msg and '--no-fid' in msg


def test_a_weights_file_of_another_kind_says_what_it_should_be(tmp_path):
    import pickle
    path = tmp_path / 'weights.npz'
    path.write_bytes(pickle.dumps({'not': 'weights'}))
    with pytest.raises(fid.FIDWeightsError) as e:
        fid.load_extractor(str(path), image_size=75)
    msg = str(e.value)
    assert 'allow_pickle' not in msg
    assert 'npz archive of arrays that scripts/convert_fid_weights.py writes' in msg


def test_the_gan_runs_in_one_process(runs, tmp_path):
    cfg, _ = runs[1]['DCGAN-BN']
    two = parallel.Parallel('naive', types.SimpleNamespace(size=2, rank=0))
    with pytest.raises(C.ConfigError, match='DCGAN training and its FID run in one process'):
        gan.run(cfg, out=str(tmp_path / 'run'), progress=False, par=two)
    assert not (tmp_path / 'run').exists()


def test_rerunning_a_finished_gan_run_keeps_it(runs, capsys):
    cfg, path = runs[1]['DCGAN-MN']
    before = open(os.path.join(path, 'summary.json')).read()
    gan.run(cfg, out=path, progress=False)
    assert 'finished run in %s' % path in capsys.readouterr().out
    assert open(os.path.join(path, 'summary.json')).read() == before
    bn_cfg = tiny_cfg('bn', cfg['gan']['fid']['cache_dir'])
    with pytest.raises(C.ConfigError, match=r'holds a finished run of another config: mn'):
        gan.run(bn_cfg, out=path, progress=False)


def test_both_command_lines_take_the_same_run_options(capsys):
    """One parser for the classifier's and the GAN's command lines: the GAN adds only its
    FID options, and names its other subcommand."""
    from experiments import train

    def options(main):
        with pytest.raises(SystemExit) as e:
            main(['--help'])
        assert e.value.code == 0
        text = capsys.readouterr().out
        return text, {w.rstrip(',') for w in text.split() if w.startswith('--')}
    gan_help, gan_options = options(gan.main)
    train_help, train_options = options(train.main)
    assert gan_options - train_options == {'--inception-weights', '--no-fid', '--fid-cache'}
    assert train_options <= gan_options and {'--synthetic', '--set', '--seed'} <= train_options
    assert 'python -m experiments.gan compare' in gan_help
    assert gan_help.startswith('usage: python -m experiments.gan ')
    assert train_help.startswith('usage: python -m experiments.train ')


def test_neither_kind_of_run_imports_the_other():
    import subprocess
    import sys
    code = ('import sys, importlib; importlib.import_module(sys.argv[1]); '
            'print(sorted(m for m in ("experiments.train", "experiments.gan") '
            'if m in sys.modules))')
    for module, alone in (('experiments.gan', "['experiments.gan']"),
                          ('experiments.train', "['experiments.train']")):
        r = subprocess.run([sys.executable, '-c', code, module], capture_output=True,
                           text=True, timeout=120, cwd=os.path.dirname(C.CONFIG_ROOT))
        assert r.returncode == 0 and r.stdout.strip() == alone, r.stderr
