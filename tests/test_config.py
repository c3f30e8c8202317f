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
                        overrides=['train.epochs=3', 'data.subset=[64, 32]',
                                   'data.batch_size=16'])
    assert cfg['smoke'] is True
    assert cfg['train']['epochs'] == 3 and cfg['data']['subset'] == [64, 32]
    assert cfg['_sources'][-1] == '--set data.batch_size=16'


def test_every_config_loads():
    rows = [os.path.join(d, f) for d, _, files in os.walk(C.CONFIG_ROOT) for f in files
            if f.endswith('.yaml') and f != 'base.yaml' and 'presets' not in d]
    assert len(rows) > 40
    for path in rows:
        cfg = C.load_config(path)
        assert cfg['row'] and cfg['experiment'] in path


def test_scientific_notation_parses_in_overrides_and_files(tmp_path):
    cfg = C.load_config(os.path.join(T2, 'cifar10', 'BN-2.yaml'),
                        overrides=['optimizer.lr=1e-2', 'optimizer.weight_decay=2E-5',
                                   'optimizer.eps=1e+0'])
    assert (cfg['optimizer']['lr'], cfg['optimizer']['weight_decay'],
            cfg['optimizer']['eps']) == (0.01, 2e-5, 1.0)
    cfg = C.load_config(_write(tmp_path, BASE.replace('lr: 0.001', 'lr: 5e-4')))
    assert cfg['optimizer']['lr'] == 5e-4
    assert C.parse_override('train.epochs=3') == (['train', 'epochs'], 3)
    assert C.parse_override('data.subset=[64, 32]') == (['data', 'subset'], [64, 32])
    assert C.parse_override('description=1e') == (['description'], '1e')


def test_optimizer_values_are_checked_at_config_time():
    row = os.path.join(T2, 'cifar10', 'BN-2.yaml')
    for bad, key in (('optimizer.momentum=1.5', 'optimizer.momentum'),
                     ('optimizer.rho=1.0', 'optimizer.rho'),
                     ('optimizer.beta1=0.5', 'optimizer.beta1'),     # not RMSprop's
                     ('optimizer.lr=.inf', 'optimizer.lr')):
        with pytest.raises(C.ConfigError, match=key.replace('.', r'\.')):
            C.load_config(row, overrides=[bad])
    cfg = C.load_config(row, overrides=['optimizer.ms_init=0'])
    assert cfg['optimizer']['ms_init'] == 0
    assert {k for k, v in cfg['optimizer'].items() if v is not None} == {
        'name', 'lr', 'weight_decay', 'momentum', 'rho', 'eps', 'ms_init'}
    adam = C.load_config(os.path.join(C.CONFIG_ROOT, 'dcgan', 'cifar10', 'bn.yaml'))
    assert adam['optimizer'] == {'name': 'adam', 'lr': 2e-4, 'weight_decay': 0.0,
                                 'momentum': None, 'rho': None, 'eps': 1e-8,
                                 'ms_init': None, 'beta1': 0.0, 'beta2': 0.9}
    # a stored config (unused keys written as null) validates again unchanged
    assert C.validate(C.yaml_load(C.dump(adam)), ['config.yaml']) == \
        {k: v for k, v in adam.items() if not k.startswith('_')}


def test_schedule_keys_follow_the_type():
    cfg = C.load_config(os.path.join(T2, 'cifar10', 'BN-2.yaml'))
    assert cfg['schedule'] == {'type': 'staircase', 'rate': 0.93, 'every_epochs': 2,
                               'factor': None, 'at': None}
    with pytest.raises(C.ConfigError, match=r"'schedule.rate' does not apply to type "
                                            r"'multistep'"):
        C.load_config(os.path.join(T2, 'cifar10', 'BN-2.yaml'),
                      overrides=['schedule.type=multistep'])


def test_a_batch_larger_than_the_training_set_is_a_config_error():
    with pytest.raises(C.ConfigError, match=r"'data.batch_size' is 256 but there are only 64 "
                                            r"training images"):
        C.load_config(os.path.join(T2, 'cifar10', 'BN-2.yaml'),
                      overrides=['data.subset=[64, 32]'])
    cfg = C.load_config(os.path.join(T2, 'cifar10', 'BN-2.yaml'))
    with pytest.raises(C.ConfigError, match='only 100 training images'):
        C.check_batch_size(cfg, 100)                 # e.g. a small archive, known at run time
    C.check_batch_size(cfg, 256)


def test_an_error_names_the_sources_that_set_the_keys_not_the_whole_chain(tmp_path):
    with pytest.raises(C.ConfigError) as e:
        C.load_config(os.path.join(T2, 'cifar10', 'MN-2.yaml'), presets=['smoke'],
                      overrides=['mn.n_components=0', 'train.epochs=1'])
    assert str(e.value).startswith("--set mn.n_components=0: 'mn.n_components' must be an "
                                   "int in the range [1, inf)")
    with pytest.raises(C.ConfigError) as e:     # batch_size from the table, subset from --set
        C.load_config(os.path.join(T2, 'cifar10', 'BN-2.yaml'),
                      overrides=['data.subset=[64, 32]', 'train.epochs=1'])
    assert str(e.value).startswith("configs/table2/base.yaml, --set data.subset=[64, 32]: "
                                   "'data.batch_size' is 256")
    path = _write(tmp_path, BASE + 'mn: {layers: [conv3], n_component: 3}\n')
    with pytest.raises(C.ConfigError) as e:      # an unknown key: the file that holds it
        C.load_config(path, overrides=['mn.decay=0.5'])
    assert str(e.value).startswith("%s: unknown key 'mn.n_component'" % path)
    cfg = C.load_config(_write(tmp_path, BASE + 'mn: {layers: [conv9]}\n', 'ok.yaml'),
                        overrides=['mn.decay=0.5'])
    with pytest.raises(C.ConfigError) as e:      # checked after loading: the same rule
        C.check_layers(cfg, build_model('cifar_cnn', 10))
    assert str(e.value).startswith('%s: mn.layers: ' % (tmp_path / 'ok.yaml'))
    assert cfg['_origins']['mn.decay'] == '--set mn.decay=0.5'


def test_a_copied_table_folder_keeps_its_inheritance(tmp_path):
    import shutil
    shutil.copytree(T2, str(tmp_path / 'table2'))
    copied = C.load_config(str(tmp_path / 'table2' / 'cifar10' / 'MN-2.yaml'))
    here = C.load_config(os.path.join(T2, 'cifar10', 'MN-2.yaml'))
    assert C.differences(copied, here) == []
    assert copied['_sources'][0] == str(tmp_path / 'table2' / 'base.yaml')


def test_a_row_file_copied_alone_says_what_is_missing(tmp_path):
    import shutil
    shutil.copy(os.path.join(T2, 'cifar10', 'MN-2.yaml'), str(tmp_path))
    with pytest.raises(C.ConfigError) as e:
        C.load_config(str(tmp_path / 'MN-2.yaml'))
    msg = str(e.value)
    assert "missing required key 'experiment'" in msg
    assert 'no base.yaml in %s' % tmp_path in msg and 'configs/<table>/' in msg


def test_a_folder_as_config_is_one_clear_error():
    with pytest.raises(C.ConfigError, match=r'configs/table2/cifar10 is a folder, not a config '
                                            r'file: pass one row config, e\.g\. '
                                            r'configs/table2/cifar10/BN-1\.yaml'):
        C.load_config(os.path.join(T2, 'cifar10'))


def test_differences_name_dotted_keys():
    a = C.load_config(os.path.join(T2, 'cifar10', 'BN-2.yaml'))
    b = C.load_config(os.path.join(T2, 'cifar10', 'MN-2.yaml'), overrides=['optimizer.lr=0.02'])
    keys = [k for k, _, _ in C.differences(a, b)]
    assert keys == ['mn', 'optimizer.lr', 'row']
    assert C.differences(a, a) == []


def test_a_gan_section_needs_the_dcgan_model(tmp_path):
    with pytest.raises(C.ConfigError, match="'model.name' must be 'dcgan'"):
        C.load_config(_write(tmp_path, BASE + 'gan: {updates: 10}\n'))



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
    ("optimizer: {name: adam, lr: '1e-3'}",
     r"'optimizer.lr' must be a number > 0, got '1e-3' \(a number written as a string\?\)$"),
    ('optimizer: {name: adam, lr: .inf}', r"'optimizer.lr' must be a finite number > 0, got inf$"),
    ('train: {epochs: 1, seed: -1}', r"'train.seed' must be >= 0, got -1$"),
    ('train: {epochs: 1, snapshot_every: 2.5}',
     r"'train.snapshot_every' must be an integer > 0, got 2.5$"),
    ('train: {epochs: 1, checkpoints: [0.5, 1.5]}',
     r"'train.checkpoints' must be a non-empty list, each item a number in \(0, 1\], "
     r"got \[0.5, 1.5\]$"),
    ('train: {epochs: 1, checkpoints: []}', r"'train.checkpoints' must be a non-empty list"),
    ('data: {dataset: cifar10, batch_size: 8, subset: [64]}',
     r"'data.subset' must be an integer > 0, a list of 2 items, each an integer > 0 or null "
     r"\(n_train, or \[n_train, n_test\]\), got \[64\]$"),
    ('data: {dataset: cifar10, batch_size: 8, subset: 0}',
     r"'data.subset' must be > 0 \(n_train, or \[n_train, n_test\]\), got 0$"),
    ('data: {dataset: cifar10, batch_size: 8, augment: 1}',
     r"'data.augment' must be true or false, got 1$"),
    ('mn: {layers: [conv3, ""]}', r"'mn.layers' must be a non-empty list, each item a "
                                  r"non-empty string, got \['conv3', ''\]$"),
    ('gan: {fid: {dims: 100}}', r"'gan.fid.dims' must be one of 64, 192, 768, 2048, got 100$"),
    ('gan: {fid: {image_size: 32}}',
     r"'gan.fid.image_size' must be >= 75 \(the smallest input of Inception-V3\), got 32$"),
    ('data: {dataset: imagenet, batch_size: 8}', r"'data.dataset' must be one of"),
    ('train: {epochs: 1, seed: true}', r"'train.seed' must be an integer"),
    ('schedule: {type: multistep, factor: 0.1}', r"missing required key 'schedule.at'$"),
    ('optimizer: {name: adam, lr: 0.001, beta2: 1}', r"'optimizer.beta2' must be in \[0, 1\)"),
    ('data: {dataset: cifar10, batch_size: 8, test_batch_size: 0}',
     r"'data.test_batch_size' must be > 0"),
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


def test_values_within_the_limits_load(tmp_path):
    gan = BASE.replace('cifar_cnn', 'dcgan').replace('batch_size: 8}',
                                                     'batch_size: 8, subset: [64, 32]}')
    cfg = C.load_config(_write(tmp_path, gan + 'gan: {fid: {dims: 768, image_size: 75}}\n'))
    assert cfg['gan']['fid']['dims'] == 768 and cfg['gan']['fid']['image_size'] == 75
    assert cfg['data']['subset'] == [64, 32]
    cfg = C.load_config(_write(tmp_path, BASE, 'b.yaml'),
                        overrides=['optimizer.beta2=0', 'train.epochs=0.5', 'data.subset=8',
                                   'train.target_accuracy=-1', 'mn.layers=[conv3]'])
    assert (cfg['optimizer']['beta2'], cfg['train']['epochs'], cfg['data']['subset'],
            cfg['train']['target_accuracy']) == (0, 0.5, 8, -1)
    with pytest.raises(C.ConfigError, match=r"'gan.fid.dims' must be one of"):
        C.load_config(_write(tmp_path, gan + 'gan: {fid: {dims: true}}\n', 'c.yaml'))
