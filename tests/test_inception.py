"""Inception-V3 for CIFAR (paper Sec. 4.3): shapes, the paper's layer names, MN placement,
the Table 4 / Table 6 configs against the paper's settings, and a smoke run."""
import glob
import json
import os

import numpy as np
import pytest

import mixnorm
import chainer
import chainer.functions as F
import chainer.links as L

from experiments import config as C, paper, train
from experiments.models import build_model
from experiments.models.inception_v3 import InceptionV3
from mixnorm.placement import batch_normalization_paths, expand_names

STAGES = [  # (stage, C x H x W) for a 32x32 input, as the module docstring
    ('stem/0', (32, 32, 32)), ('stem/1', (32, 32, 32)), ('stem/2', (64, 32, 32)),
    ('stem/3', (80, 32, 32)), ('stem/4', (192, 32, 32)), ('pool', (192, 15, 15)),
    ('inc1/0', (256, 15, 15)), ('inc1/1', (288, 15, 15)), ('inc1/2', (288, 15, 15)),
    ('red1', (768, 7, 7)),
    ('inc2/0', (768, 7, 7)), ('inc2/1', (768, 7, 7)), ('inc2/2', (768, 7, 7)),
    ('inc2/3', (768, 7, 7)),
    ('red2', (1280, 3, 3)), ('inc3/0', (2048, 3, 3)), ('inc3/1', (2048, 3, 3)),
    ('gap', (2048,)), ('dropout', (2048,)),
]
# BNs a layer name stands for: the last BN of each branch (Table 4 caption).
# Inception-A/B: 4 branches; Inception-C: 1x1 | 1x1-(1x3,3x1) | 1x1-3x3-(1x3,3x1) | pool
# -> 1 + 2 + 2 + 1; reductions: 2 conv branches (the max-pool branch has no BN).
ALIAS_COUNTS = {'inc1/0': 4, 'inc1/1': 4, 'inc1/2': 4, 'red1': 2,
                'inc2/0': 4, 'inc2/1': 4, 'inc2/2': 4, 'inc2/3': 4, 'red2': 2,
                'inc3/0': 6, 'inc3/1': 6}
T4 = os.path.join(C.CONFIG_ROOT, 'table4')
T6 = os.path.join(C.CONFIG_ROOT, 'table6')


@pytest.fixture(scope='module')
def model():
    return InceptionV3(10)


def bn_links(model):
    return {p.lstrip('/'): link for p, link in model.namedlinks(skipself=True)
            if isinstance(link, L.BatchNormalization)}


# -------------------------------------------------------------------- architecture

def test_stage_sizes_and_final_3x3(model):
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        trace = model.trace(np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32))
    assert [n for n, _ in trace] == [n for n, _ in STAGES] + ['linear']
    for (name, h), (_, shape) in zip(trace, STAGES):
        assert h.shape == (2,) + shape, name
    assert dict(trace)['inc3/1'].shape[2:] == (3, 3)      # before global pooling
    assert trace[-1][1].shape == (2, 10)
    assert np.isfinite(trace[-1][1].array).all()


def test_parameter_counts_and_registry():
    for n_classes, expected in ((10, 21806058), (100, 21990468)):
        m = build_model('inception_v3', n_classes)
        assert isinstance(m, InceptionV3) and m.linear.W.shape == (n_classes, 2048)
        assert sum(p.size for p in m.params()) == expected
    assert sum(isinstance(l, L.Convolution2D) for l in m.links()) == 94
    assert all(l.eps == 1e-3 for l in bn_links(m).values())
    assert len(bn_links(m)) == 94
    # CIFAR modification: first conv stride 1; no bias in any conv
    assert m.stem[0].conv.stride == (1, 1)
    assert all(l.b is None for l in m.links() if isinstance(l, L.Convolution2D))


def test_output_shape_100_classes():
    m = InceptionV3(100, dropout_ratio=0.0)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        assert m(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 100)


# ---------------------------------------------------------------------------- names

def test_inc2_0_2_4_is_one_bn(model):
    paths = expand_names(model, ['inc2/0/2/4'])
    assert paths == ['inc2/0/2/4/bn']
    links = dict(model.namedlinks(skipself=True))
    assert isinstance(links['/inc2/0/2/4/bn'], L.BatchNormalization)
    # the fifth BN of the third branch: the last 1x7 of the double-7x7 branch
    assert len(model.inc2[0][2]) == 5
    assert model.inc2[0][2][4].conv.W.shape == (192, 128, 1, 7)


@pytest.mark.parametrize('name', sorted(ALIAS_COUNTS))
def test_layer_names_expand_to_last_bn_of_each_branch(model, name):
    paths = expand_names(model, [name])
    assert len(paths) == ALIAS_COUNTS[name]
    bns = bn_links(model)
    assert all(p in bns and p.startswith(name + '/') for p in paths)
    module = model._module(name)
    per_branch = {}
    for p in paths:
        branch, pos = map(int, p[len(name) + 1:].split('/')[:2])
        per_branch.setdefault(branch, []).append(pos)
    # one per branch, except the parallel 1x3/3x1 ends of Inception-C, and the last unit
    assert sorted(per_branch) == list(range(len(module)))
    for b, positions in per_branch.items():
        assert max(positions) == len(module[b]) - 1
        if len(positions) == 2:
            assert name.startswith('inc3/') and positions[0] == len(module[b]) - 2


def test_tables_use_only_known_names(model):
    used = set(paper.load('table6')['training']['mn']['layers'])
    for ds in ('cifar10', 'cifar100'):
        for row in paper.rows('table4', ds).values():
            used.update((row['mn'] or {}).get('layers', []))
    assert used == {'red1', 'red2', 'inc2/0', 'inc2/1', 'inc3/0'}
    assert used <= set(ALIAS_COUNTS)
    sites = model.normalization_sites()
    assert set(ALIAS_COUNTS) <= set(sites)
    # every BN has exactly one unit name (stem/i or layer/branch/position)
    unit_names = [n for n in sites if n not in ALIAS_COUNTS]
    assert sorted(p for n in unit_names for p in sites[n]) == \
        sorted(batch_normalization_paths(model))
    assert sites['stem/0'] == ['stem/0/bn']


@pytest.mark.parametrize('bad', ['inc4/0', 'inc2/4', 'inc2/0/2/5', 'red3', 'conv3'])
def test_wrong_name_lists_valid_ones(model, bad):
    with pytest.raises(ValueError) as e:
        expand_names(model, [bad])
    msg = str(e.value)
    assert repr(bad) in msg
    for valid in ('inc2/0', 'inc3/1', 'red1', 'red2', 'inc2/0/2/4', 'stem/0'):
        assert valid in msg


# --------------------------------------------------------------------------- MN use

def test_forward_backward_with_mn_at_inc2_0_and_inc3_0():
    m = InceptionV3(10)
    replaced = mixnorm.replace_batch_normalization(m, ['inc2/0', 'inc3/0'],
                                                   n_components=3, em_iters=2)
    assert len(replaced) == 10
    mns = [l for l in m.links() if isinstance(l, mixnorm.MixtureNormalization)]
    assert len(mns) == 10 and all(l.eps == 1e-3 for l in mns)
    assert isinstance(m.inc2[0][2][4].bn, mixnorm.MixtureNormalization)
    assert isinstance(m.inc2[0][2][3].bn, L.BatchNormalization)
    x = np.random.RandomState(1).randn(2, 3, 32, 32).astype(np.float32)
    with chainer.using_config('train', True):
        loss = F.softmax_cross_entropy(m(x), np.array([1, 7], np.int32))
    m.cleargrads()
    loss.backward()
    assert np.isfinite(loss.array)
    for link in (m.inc2[0][2][4].bn, m.inc3[0][1][2].bn, m.stem[0].conv, m.linear):
        for p in link.params():
            assert p.grad is not None and np.isfinite(p.grad).all()
    assert all(l.n_fits == 1 for l in mns)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        assert np.isfinite(m(x).array).all()


def test_dropout_masks_survive_serialization(tmp_path):
    a = InceptionV3(10, dropout_seed=5)
    h = chainer.Variable(np.ones((4, 2048), np.float32))
    with chainer.using_config('train', True):
        a._dropout(h)
        chainer.serializers.save_npz(str(tmp_path / 'm.npz'), a, compression=False)
        expected = a._dropout(h).array
        b = InceptionV3(10, dropout_seed=6)
        chainer.serializers.load_npz(str(tmp_path / 'm.npz'), b)
        got = b._dropout(h).array
    np.testing.assert_array_equal(got, expected)
    assert 0 < (expected == 0).mean() < 0.5
    np.testing.assert_allclose(expected[expected != 0], 1 / 0.8)
    with chainer.using_config('train', False):
        assert b._dropout(h) is h


# -------------------------------------------------------------------------- configs

def _row_files(folder):
    return {os.path.basename(p)[:-5]: p for p in glob.glob(os.path.join(folder, '*.yaml'))
            if not p.endswith('base.yaml')}


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100'])
def test_table4_configs_match_paper(model, dataset):
    doc = paper.load('table4')
    rows = paper.rows('table4', dataset)
    files = _row_files(os.path.join(T4, dataset))
    assert set(files) == set(rows)
    for name, prow in rows.items():
        cfg = C.load_config(files[name])
        assert cfg['experiment'] == 'table4' and cfg['row'] == name
        assert cfg['data']['dataset'] == dataset and cfg['model']['name'] == 'inception_v3'
        assert cfg['data']['batch_size'] == doc['training']['batch_size'] == 128
        o = cfg['optimizer']
        assert (o['name'], o['momentum'], o['rho']) == ('rmsprop_momentum', 0.9, 0.9)
        assert o['lr'] == prow['lr'] and o['weight_decay'] == prow['weight_decay'] == 5e-4
        assert cfg['schedule'] == {'type': 'staircase', 'rate': 0.93, 'every_epochs': 4,
                                   'factor': None, 'at': None}
        assert cfg['train']['epochs'] == doc['total_epochs'] == 200
        assert [f * 200 for f in cfg['train']['checkpoints']] == doc['checkpoints_epochs']
        if prow['mn'] is None:
            assert cfg['mn'] is None
            assert C.check_layers(cfg, model) == []
        else:
            mn = cfg['mn']
            assert (mn['layers'], mn['n_components'], mn['em_iters']) == \
                (prow['mn']['layers'], prow['mn']['K'], prow['mn']['em_iters'])
            paths = C.check_layers(cfg, model)
            assert len(paths) == sum(ALIAS_COUNTS[n] for n in mn['layers'])


def test_table6_configs_match_paper(model):
    doc = paper.load('table6')
    rows = paper.rows('table6', 'cifar100')
    files = _row_files(os.path.join(T6, 'cifar100'))
    assert set(files) == set(rows) == {'BN-policy1', 'MN-policy1', 'BN-policy2',
                                       'MN-policy2'}
    tr = doc['training']
    for name, prow in rows.items():
        cfg = C.load_config(files[name])
        assert cfg['experiment'] == 'table6' and cfg['row'] == name
        assert cfg['data']['dataset'] == 'cifar100' and cfg['model']['name'] == 'inception_v3'
        assert cfg['data']['batch_size'] == tr['batch_size'] == 256
        o = cfg['optimizer']
        assert (o['name'], o['momentum'], o['lr']) == ('nesterov', tr['momentum'], tr['lr'])
        assert o['weight_decay'] == 5e-4          # not stated by the paper: as Table 4
        assert cfg['train']['epochs'] == tr['epochs'] == 150
        policy = doc['drop_policies'][prow['policy']]
        assert cfg['schedule']['type'] == 'multistep'
        assert cfg['schedule']['factor'] == policy['factor']
        assert cfg['schedule']['at'] == policy['at_fraction_of_epochs']
        if prow['model'] == 'BN':
            assert cfg['mn'] is None
        else:
            assert cfg['mn']['layers'] == tr['mn']['layers'] == ['inc2/1', 'inc3/0']
            assert (cfg['mn']['n_components'], cfg['mn']['em_iters']) == (3, 2)  # our choice
            assert len(C.check_layers(cfg, model)) == 10


# ------------------------------------------------------------------------ smoke run

def test_smoke_run_of_an_mn_row(tmp_path):
    cfg = C.load_config(os.path.join(T4, 'cifar10', 'MN-3.yaml'), ['smoke'],
                        ['data.dataset=synthetic', 'data.subset=[8, 8]',
                         'data.batch_size=4', 'train.max_iterations=2', 'train.epochs=1',
                         'train.snapshot_every=10'])         # no 260 MB snapshot
    out = str(tmp_path / 'run')
    summary = train.run(cfg, out=out, progress=False)
    log = json.load(open(os.path.join(out, 'log.json')))
    assert len(log) == 1 and log[0]['iteration'] == 2
    for key in ('main/loss', 'main/accuracy', 'validation/main/loss',
                'validation/main/accuracy', 'lr'):
        assert np.isfinite(log[0][key]), key
    assert log[0]['lr'] == pytest.approx(0.001)
    assert 'mn/inc2/0/2/4/bn/components' in log[0]
    assert 'mn/inc3/0/1/2/bn/components' in log[0]
    s = json.load(open(os.path.join(out, 'summary.json')))
    assert s == json.loads(json.dumps(summary))
    assert s['smoke'] is True and s['comparable_to_paper'] is False
    assert s['finished'] and s['iterations'] == 2 and s['row'] == 'MN-3'
    assert os.path.exists(os.path.join(out, 'config.yaml'))
