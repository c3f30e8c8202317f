"""DenseNet (paper Sec. 4.4, Table 7): architecture, MN placement names, the Sec. 4.4
configs, a smoke training run, and the Table 7 benchmark script (tiny, --no-write)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

import mixnorm
import chainer
import chainer.links as L

from experiments import config as C, paper, train
from experiments.models import build_model
from experiments.models.densenet import DenseNet
from mixnorm.placement import batch_normalization_paths, expand_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DN = os.path.join(C.CONFIG_ROOT, 'densenet', 'cifar100')
ROWS = ('BN-L40', 'MN-L40', 'BN-L100', 'MN-L100')
MN_SITES = ['transition1', 'transition2', 'last']


def _links(model):
    return dict((p.lstrip('/'), link) for p, link in model.namedlinks(skipself=True))


# ------------------------------------------------------------------------ architecture

@pytest.mark.parametrize('kwargs, depth, channels', [
    ({'depth': 40}, 40, (160, 304, 448)),
    ({'depth': 100}, 100, (400, 784, 1168)),
    ({'layers_per_block': 5}, 19, (76, 136, 196)),      # Table 7's "20 layers"
])
def test_channel_counts(kwargs, depth, channels):
    model = build_model('densenet', 100, **kwargs)
    assert model.depth == depth and model.growth == 12
    assert model.channels == dict(zip(MN_SITES, channels))
    links = _links(model)
    for site, c in zip(MN_SITES, channels):
        (path,) = expand_names(model, [site])
        assert links[path].avg_mean.shape == (c,)
    n = model.layers_per_block
    # 3n dense-layer BNs + 2 transition BNs + the last BN; 3n + 3 convs; 1 linear
    assert len(batch_normalization_paths(model)) == 3 * n + 3
    convs = [l for l in links.values() if isinstance(l, L.Convolution2D)]
    assert len(convs) == 3 * n + 3 and all(c.b is None for c in convs)
    assert model.conv1.W.shape == (16, 3, 3, 3)
    assert model.block1[0].conv.W.shape == (12, 16, 3, 3)
    assert model.transition2.conv.W.shape == (channels[1], channels[1], 1, 1)  # no compression
    assert model.linear.W.shape == (100, channels[2])


def test_forward_shapes_and_transitions_halve():
    model = DenseNet(n_classes=100, depth=40)
    x = np.random.RandomState(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    shapes = {name: h.shape for name, h in model.trace(x)}
    assert shapes == {'conv1': (2, 16, 32, 32), 'block1': (2, 160, 32, 32),
                      'transition1': (2, 160, 16, 16), 'block2': (2, 304, 16, 16),
                      'transition2': (2, 304, 8, 8), 'block3': (2, 448, 8, 8),
                      'last': (2, 448, 8, 8), 'pool': (2, 448), 'linear': (2, 100)}
    y = model(x)
    assert y.shape == (2, 100)
    np.testing.assert_allclose(y.array, model.trace(x)[-1][1].array, rtol=1e-5, atol=1e-6)


def test_bad_depth_is_rejected():
    for depth in (41, 3):
        with pytest.raises(ValueError, match='3n \\+ 4'):
            DenseNet(depth=depth)
    with pytest.raises(ValueError, match='layers_per_block'):
        DenseNet(layers_per_block=0)


# ------------------------------------------------------------------------------ names

def test_names_resolve_to_one_bn_each():
    model = DenseNet(depth=40)
    links = _links(model)
    expected = {'transition1': ('transition1/bn', 160), 'transition2': ('transition2/bn', 304),
                'last': ('final_bn', 448), 'final_bn': ('final_bn', 448),
                'block1/0': ('block1/0/bn', 16), 'block2/0': ('block2/0/bn', 160),
                'block3/11': ('block3/11/bn', 304 + 11 * 12)}
    for name, (path, c) in expected.items():
        assert expand_names(model, [name]) == [path], name
        assert isinstance(links[path], L.BatchNormalization)
        assert links[path].avg_mean.shape == (c,), name
    sites = model.normalization_sites()
    assert len([s for s in sites if s.startswith('block')]) == 36


def test_wrong_name_lists_valid_names():
    model = DenseNet(layers_per_block=2)
    with pytest.raises(ValueError) as e:
        expand_names(model, ['transition3'])
    msg = str(e.value)
    assert 'transition3' in msg
    for valid in ('transition1', 'transition2', 'last', 'final_bn', 'block3/1'):
        assert valid in msg


def test_mn_at_three_sites_forward_backward():
    model = DenseNet(n_classes=100, depth=40)
    paths = mixnorm.replace_batch_normalization(model, MN_SITES, n_components=5, em_iters=2,
                                                seed=0)
    assert paths == ['transition1/bn', 'transition2/bn', 'final_bn']
    links = _links(model)
    for p, c in zip(paths, (160, 304, 448)):
        assert isinstance(links[p], mixnorm.MixtureNormalization)
        assert links[p].size == c and links[p].n_components == 5
    assert sum(isinstance(l, mixnorm.MixtureNormalization) for l in links.values()) == 3
    assert len(batch_normalization_paths(model)) == 36      # the dense layers' BNs stay
    rs = np.random.RandomState(1)
    x = rs.standard_normal((2, 3, 32, 32)).astype(np.float32)
    t = rs.randint(0, 100, 2).astype(np.int32)
    clf = L.Classifier(model)
    clf.cleargrads()
    loss = clf(x, t)
    loss.backward()
    assert np.isfinite(float(loss.array))
    for name, param in clf.namedparams():
        assert param.grad is not None and np.all(np.isfinite(param.grad)), name
    assert np.abs(model.conv1.W.grad).sum() > 0
    for p in paths:
        assert links[p].n_fits == 1 and 1 <= links[p].effective_components <= 5
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        y = model(x)
    assert y.shape == (2, 100) and np.all(np.isfinite(y.array))


# ---------------------------------------------------------------------------- configs

@pytest.mark.parametrize('row', ROWS)
def test_configs_match_paper(row):
    cfg = C.load_config(os.path.join(DN, row + '.yaml'))
    s = paper.load('sections')['densenet_setting']
    assert cfg['experiment'] == 'densenet' and cfg['row'] == row
    assert cfg['data']['dataset'] == 'cifar100' and cfg['data']['augment'] is True
    assert cfg['data']['batch_size'] == s['batch_size'] == 64
    assert cfg['train']['epochs'] == s['epochs'] == 200
    opt = cfg['optimizer']
    assert opt['name'] == 'nesterov'
    assert opt['lr'] == s['lr'] and opt['momentum'] == s['momentum']
    assert opt['weight_decay'] == s['weight_decay'] == 1e-4
    assert isinstance(opt['weight_decay'], float)
    assert cfg['schedule'] == {'type': 'multistep', 'rate': None, 'every_epochs': None,
                               'factor': 0.1, 'at': [0.5, 0.75]}
    depth = int(row.split('-L')[1])
    assert depth in s['depths']
    assert cfg['model'] == {'name': 'densenet', 'kwargs': {'growth': 12, 'depth': depth}}
    model = build_model('densenet', 100, **cfg['model']['kwargs'])
    assert model.depth == depth and model.growth == s['growth_rate']
    if row.startswith('MN'):
        assert cfg['mn']['layers'] == MN_SITES
        assert cfg['mn']['n_components'] == s['mn']['K'] == 5
        assert cfg['mn']['em_iters'] == s['mn']['em_iters'] == 2
        assert C.check_layers(cfg, model) == ['transition1/bn', 'transition2/bn', 'final_bn']
    else:
        assert cfg['mn'] is None and C.check_layers(cfg, model) == []


def test_config_with_unknown_layer_fails():
    cfg = C.load_config(os.path.join(DN, 'MN-L40.yaml'), overrides=['mn.layers=[transition3]'])
    with pytest.raises(C.ConfigError, match='transition1'):
        C.check_layers(cfg, build_model('densenet', 100, **cfg['model']['kwargs']))


# -------------------------------------------------------------------------- smoke run

def test_smoke_run_mn_l40_writes_records(tmp_path):
    cfg = C.load_config(os.path.join(DN, 'MN-L40.yaml'), ['smoke'],
                        ['data.dataset=synthetic', 'data.subset=[8, 8]', 'data.batch_size=4',
                         'train.max_iterations=2', 'train.epochs=1'])
    out = str(tmp_path / 'run')
    summary = train.run(cfg, out=out, progress=False)
    log = json.load(open(os.path.join(out, 'log.json')))
    assert len(log) == 1 and log[0]['iteration'] == 2 and log[0]['epoch'] == 1
    for key in ('main/loss', 'main/accuracy', 'validation/main/loss',
                'validation/main/accuracy', 'lr'):
        assert np.isfinite(log[0][key]), key
    assert log[0]['lr'] == pytest.approx(0.1)
    for p in ('transition1/bn', 'transition2/bn', 'final_bn'):
        assert 1 <= log[0]['mn/%s/components' % p] <= 5
    s = json.load(open(os.path.join(out, 'summary.json')))
    assert summary['row'] == 'MN-L40' and summary['iterations'] == 2
    assert s['experiment'] == 'densenet' and s['row'] == 'MN-L40'
    assert s['smoke'] is True and s['comparable_to_paper'] is False
    assert s['finished'] and s['iterations'] == 2 and s['backend'] == 'numpy'
    back = C.validate(yaml.safe_load(open(os.path.join(out, 'config.yaml'))))
    assert back['model'] == {'name': 'densenet', 'kwargs': {'growth': 12, 'depth': 40}}
    assert back['mn']['layers'] == MN_SITES


# -------------------------------------------------------------------------- benchmark

def _table7(*args, timeout=300):
    """bench/table7.py run as a user runs it (tests do not import bench/)."""
    res = subprocess.run([sys.executable, os.path.join('bench', 'table7.py')] + list(args),
                         cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return res


def test_table7_row_selection():
    listed = _table7('--list', '--rows', 'dim196').stdout.split()
    assert listed[::2] == ['L20-bs64-BN'] + ['L20-bs64-MN-K%d' % k for k in range(2, 6)]
    rows = dict(zip(*[iter(_table7('--list', '--rows', 'L40-bs128-MN-K5').stdout.split())] * 2))
    assert list(rows) == ['L40-bs128-BN', 'L40-bs128-MN-K5']     # BN added for the ratio
    assert rows['L40-bs128-MN-K5'] == '12'
    assert len(_table7('--list', '--rows', 'all').stdout.splitlines()) == 15
    res = _table7('--list', '--rows', 'L30-*')
    assert res.returncode != 0 and 'L20-bs64-BN' in res.stderr


def test_table7_cli_prints_ratios_without_writing():
    record = os.path.join(REPO, 'results', 'bench', 'table7_cpu.json')
    before = os.path.getmtime(record) if os.path.exists(record) else None
    res = subprocess.run([sys.executable, os.path.join('bench', 'table7.py'), '--iters', '1',
                          '--warmup', '1', '--rows', 'L20-bs64-MN-K5', '--batch', '2',
                          '--no-write'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert 'MN/BN' in out and 'wrote' not in out
    lines = [l for l in out.splitlines() if l.startswith('L20-bs64-')]
    assert [l.split()[0] for l in lines] == ['L20-bs64-BN', 'L20-bs64-MN-K5']
    assert lines[0].split()[-1] == '1.000x'
    assert '0.835x' in lines[1]                                   # paper: 13.69 / 16.40
    assert (os.path.getmtime(record) if os.path.exists(record) else None) == before


def test_table7_writes_record_to_out(tmp_path):
    res = _table7('--iters', '1', '--warmup', '0', '--rows', 'L20-bs64-MN-K2', '--batch', '2',
                  '--out', str(tmp_path))
    assert res.returncode == 0, res.stderr
    rec = json.load(open(str(tmp_path / 'table7_cpu.json')))
    rows = rec['rows']
    assert [r['row'] for r in rows] == ['L20-bs64-BN', 'L20-bs64-MN-K2']
    assert rows[0]['ours_ratio'] == 1.0 and rows[1]['ours_ratio'] > 0
    assert rows[1]['paper_ratio'] == pytest.approx(14.46 / 16.40)
    assert rec['benchmark'] == 'table7_cpu' and rec['environment']['cpu']
    assert rec['batch_override'] == 2 and rec['iters'] == 1
    md = open(str(tmp_path / 'table7_cpu.md')).read()
    assert 'Titan X' in md and 'SMOKE RUN' in md and 'L20-bs64-MN-K2' in md


@pytest.mark.gpu
def test_table7_gpu_tiny(tmp_path):
    res = _table7('--device', 'gpu', '--iters', '2', '--warmup', '1', '--rows',
                  'L20-bs64-MN-K3', '--batch', '8', '--out', str(tmp_path))
    assert res.returncode == 0, res.stderr
    rows = json.load(open(str(tmp_path / 'table7_gpu.json')))['rows']
    assert all(np.isfinite(r['ours_it_per_s']) for r in rows)
