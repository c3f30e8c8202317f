"""Config loading, merging and validation; the Table 2 configs match the paper."""
import os

import pytest

from experiments import config as C
from experiments.models import build_model

T2 = os.path.join(C.CONFIG_ROOT, 'table2')

# (layers, K, EM iter.), (lr, weight decay) exactly as the paper's Table 2
TABLE2 = {
    'cifar10': {
        'BN-1': (None, (0.01, 1e-4)), 'BN-2': (None, (0.01, 2e-5)),
        'BN-3': (None, (0.05, 1e-4)), 'BN-4': (None, (0.05, 2e-5)),
        'MN-1': ((['conv3'], 3, 2), (0.01, 1e-4)), 'MN-2': ((['conv3'], 3, 2), (0.01, 2e-5)),
        'MN-3': ((['conv3'], 3, 2), (0.05, 1e-4)), 'MN-4': ((['conv3'], 3, 2), (0.05, 2e-5)),
    },
    'cifar100': {
        'BN-1': (None, (0.01, 1e-4)), 'BN-2': (None, (0.01, 2e-5)),
        'BN-3': (None, (0.05, 1e-4)), 'BN-4': (None, (0.05, 2e-5)),
        'MN-1': ((['conv3'], 3, 2), (0.01, 1e-4)), 'MN-2': ((['conv3'], 3, 2), (0.01, 2e-5)),
        'MN-3': ((['conv3'], 3, 2), (0.05, 1e-4)), 'MN-4': ((['conv3'], 3, 2), (0.05, 2e-5)),
        'MN-5': ((['conv3'], 3, 4), (0.01, 2e-5)), 'MN-6': ((['conv3'], 3, 8), (0.01, 2e-5)),
        'MN-7': ((['conv2'], 3, 2), (0.01, 2e-5)),
        'MN-8': ((['conv2', 'conv3'], 3, 2), (0.01, 2e-5)),
    },
}


@pytest.mark.parametrize('dataset', sorted(TABLE2))
def test_table2_configs_match_the_paper(dataset):
    files = sorted(f[:-5] for f in os.listdir(os.path.join(T2, dataset))
                   if f.endswith('.yaml') and f != 'base.yaml')
    assert files == sorted(TABLE2[dataset])
    model = build_model('cifar_cnn', 10)
    for row, (mn, (lr, wd)) in TABLE2[dataset].items():
        cfg = C.load_config(os.path.join(T2, dataset, row + '.yaml'))
        assert cfg['row'] == row and cfg['data']['dataset'] == dataset
        assert cfg['optimizer'] == dict(cfg['optimizer'], name='rmsprop_momentum', lr=lr,
                                        weight_decay=wd, momentum=0.9)
        assert cfg['schedule'] == dict(cfg['schedule'], type='staircase', rate=0.93,
                                       every_epochs=2)
        assert cfg['data']['batch_size'] == 256 and cfg['train']['epochs'] == 100
        if mn is None:
            assert cfg['mn'] is None
        else:
            layers, K, E = mn
            assert (cfg['mn']['layers'], cfg['mn']['n_components'],
                    cfg['mn']['em_iters']) == (layers, K, E)
            C.check_layers(cfg, model)


def test_smoke_preset_and_overrides():
    cfg = C.load_config(os.path.join(T2, 'cifar10', 'MN-2.yaml'), presets=['smoke'],
                        overrides=['train.epochs=3', 'data.subset=[64, 32]'])
    assert cfg['smoke'] is True
    assert cfg['train']['epochs'] == 3 and cfg['data']['subset'] == [64, 32]
    assert cfg['_sources'][-1] == '--set data.subset=[64, 32]'



def _row_configs():
    for folder, _, files in sorted(os.walk(C.CONFIG_ROOT)):
        if os.path.basename(folder) != 'presets':
            yield from (os.path.join(folder, f) for f in sorted(files)
                        if f.endswith('.yaml') and f != 'base.yaml')


def test_smoke_preset_keeps_every_architecture():
    """Smoke shrinks data and iterations only: each row keeps the model and MN sites it
    names, and its training subset holds at least one batch."""
    paths = list(_row_configs())
    assert len(paths) > 40
    for path in paths:
        full = C.load_config(path)
        presets = ['smoke', 'gan_smoke'] if full['experiment'] == 'dcgan' else ['smoke']
        smoke = C.load_config(path, presets)
        assert smoke['smoke'] and not full['smoke'], path
        assert (smoke['model'], smoke['mn']) == (full['model'], full['mn']), path
        assert smoke['data']['subset'][0] >= smoke['data']['batch_size'], path

def _write(tmp_path, text, name='row.yaml'):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BASE = '''experiment: t
model: {name: cifar_cnn}
data: {dataset: cifar10, batch_size: 8}
optimizer: {name: adam, lr: 0.001}
train: {epochs: 1}
'''


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, BASE + 'mn: {layers: [conv3], n_component: 3}\n')
    with pytest.raises(C.ConfigError) as e:
        C.load_config(path)
    msg = str(e.value)
    assert "'mn.n_component'" in msg and "did you mean 'mn.n_components'" in msg
    assert 'row.yaml' in msg


@pytest.mark.parametrize('line,match', [
    ('optimizer: {name: adam, lr: -1}', r"'optimizer.lr' must be > 0"),
    ('optimizer: {name: sgdx, lr: 0.1}', r"'optimizer.name' must be one of"),
    ("optimizer: {name: adam, lr: '1e-3'}", r"'optimizer.lr' must be an integer or a number"),
    ('data: {dataset: imagenet, batch_size: 8}', r"'data.dataset' must be one of"),
    ('train: {epochs: 1, seed: true}', r"'train.seed' must be an integer"),
    ('schedule: {type: multistep}', r"schedule.at"),
])
def test_bad_values_are_named(tmp_path, line, match):
    path = _write(tmp_path, BASE + line + '\n')
    with pytest.raises(C.ConfigError, match=match):
        C.load_config(path)


def test_missing_required_key(tmp_path):
    path = _write(tmp_path, BASE.replace('train: {epochs: 1}\n', ''))
    with pytest.raises(C.ConfigError, match="missing required key 'train.epochs'"):
        C.load_config(path)


def test_unknown_layer_lists_valid_names(tmp_path):
    cfg = C.load_config(_write(tmp_path, BASE + 'mn: {layers: [conv9]}\n'))
    with pytest.raises(C.ConfigError, match=r"mn.layers.*conv9.*conv1, conv2, conv3, conv4"):
        C.check_layers(cfg, build_model('cifar_cnn', 10))


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(C.ConfigError, match='unknown preset'):
        C.load_config(os.path.join(T2, 'cifar10', 'BN-1.yaml'), presets=['nope'])
    with pytest.raises(C.ConfigError, match='not valid YAML'):
        C.load_config(_write(tmp_path, 'a: [1,\n'))
    with pytest.raises(C.ConfigError, match='not found'):
        C.load_config(str(tmp_path / 'missing.yaml'))
