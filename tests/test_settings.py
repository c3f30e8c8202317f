"""MN's settings are defined once (mixnorm/settings.py) and every check reads them: the
link, fit_gmm, the functions and the config schema give the same verdict in the same
words, and the link's defaults are the table's."""
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import mixnorm
from mixnorm import functions as F
from mixnorm import gmm as G
from mixnorm import settings as S
from mixnorm.distributed import MultiNodeMixtureNormalization
from experiments import config as C, rundir, train, verdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MN2 = os.path.join(C.CONFIG_ROOT, 'table2', 'cifar10', 'MN-2.yaml')

#: Values each setting refuses, as Python values and as YAML for ``--set`` (both ends of
#: a range where it has two).  Every setting of the table must have one.
BAD = {
    'n_components': [(0, '0'), (2.5, '2.5')],
    'em_iters': [(-1, '-1')],
    'eps': [(0.0, '0.0'), (-1e-5, '-1e-5')],
    'decay': [(1.0, '1.0'), (0.0, '0.0')],
    'queue_length': [(0, '0')],
    'fit_fraction': [(0.0, '0.0'), (1.5, '1.5')],
    'min_weight': [(1.5, '1.5'), (-0.1, '-0.1')],
    'min_count': [(-1, '-1')],
    'affine': [('spatial', 'spatial')],
    'lambda_scaling': [('maybe', 'maybe')],
    'inference': [('eq38', 'eq38')],
    'seed': [(-1, '-1'), (1.5, '1.5')],
}
#: BatchNormalization's own arguments of the link: not MN settings.
BN_ARGUMENTS = {'size', 'dtype', 'use_gamma', 'use_beta', 'initial_gamma', 'initial_beta',
                'axis', 'initial_avg_mean', 'initial_avg_var'}


def test_every_setting_has_a_refused_value_and_a_meaning():
    assert set(BAD) == set(S.SETTINGS)
    for name, setting in S.SETTINGS.items():
        assert setting.name == name and setting.meaning and '\n' not in setting.meaning
        assert setting.problem(setting.default) is None, name       # the default is valid
        for value, _ in BAD[name]:
            assert setting.problem(value) == setting.requirement(), (name, value)


def _cli_error(tmp_path, *args):
    """The ``error:`` message ``experiments.train`` ends with (in this process)."""
    argv = [MN2, '--preset', 'smoke', '--synthetic', '--out', str(tmp_path / 'run')]
    with pytest.raises(SystemExit) as e:
        train.main(argv + list(args))
    message = str(e.value.code)
    assert message.startswith('error: ') and '\n' not in message, message
    assert not (tmp_path / 'run').exists()
    return message


@pytest.mark.parametrize('name,value,text', [(n, v, t) for n, bad in sorted(BAD.items())
                                             for v, t in bad])
def test_an_out_of_range_setting_is_one_error_line_and_the_same_error_of_the_link(
        tmp_path, name, value, text):
    setting = S.SETTINGS[name]
    override = '--set mn.%s=%s' % (name, text)
    message = _cli_error(tmp_path, '--set', 'mn.%s=%s' % (name, text))
    assert message.startswith('error: %s: ' % override), message    # the source that set it
    assert 'base.yaml' not in message and 'smoke.yaml' not in message   # not the whole chain
    if name in C.MN_SETTINGS_SET_ELSEWHERE:         # eps, seed: not a key of the mn section
        assert "unknown key 'mn.%s' (MN's %s is %s)" % (
            name, name, C.MN_SETTINGS_SET_ELSEWHERE[name]) in message
    else:
        assert "'mn.%s' %s, got %r" % (name, setting.requirement(), value) in message
    with pytest.raises(ValueError) as e:
        mixnorm.MixtureNormalization(4, **{name: value})
    assert str(e.value) == "The %r parameter of MixtureNormalization %s. Got %r instead." % (
        name, setting.requirement(), value)


def test_the_error_names_the_yaml_file_that_set_the_key(tmp_path):
    row = tmp_path / 'table2' / 'cifar10' / 'MN-9.yaml'
    row.parent.mkdir(parents=True)
    for base in ('base.yaml', 'cifar10/base.yaml'):
        (tmp_path / 'table2' / base).write_text(
            open(os.path.join(C.CONFIG_ROOT, 'table2', base)).read())
    row.write_text('optimizer: {lr: 0.01, weight_decay: 2.0e-5}\n'
                   'mn: {layers: [conv3], decay: 1.0}\n')
    with pytest.raises(C.ConfigError) as e:
        C.load_config(str(row), ['smoke'], ['train.epochs=1'])
    assert str(e.value) == "%s: 'mn.decay' %s, got 1.0" % (
        row, S.SETTINGS['decay'].requirement())
    # a later source that sets the key is the one named
    with pytest.raises(C.ConfigError, match=r"^--set mn\.decay=2: 'mn\.decay' must be"):
        C.load_config(str(row), overrides=['mn.decay=2'])
    # a key set in no source (missing) names every source looked in
    with pytest.raises(C.ConfigError, match=r"base\.yaml, .*MN-9\.yaml, --set mn=\{\}: "
                                            r"missing required key 'mn\.layers'"):
        C.load_config(str(row), overrides=['mn={}'])


def test_the_issues_command_line_ends_in_one_error_line():
    proc = subprocess.run([sys.executable, '-m', 'experiments.train', MN2, '--preset', 'smoke',
                           '--synthetic', '--set', 'mn.decay=1.0'], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines() == [
        "error: --set mn.decay=1.0: 'mn.decay' %s, got 1.0" % S.SETTINGS['decay'].requirement()]


def _defaults(func, names):
    params = inspect.signature(func).parameters
    return {n: params[n].default for n in names if n in params}


def test_the_links_signature_defaults_are_the_tables():
    params = inspect.signature(mixnorm.MixtureNormalization.__init__).parameters
    assert set(params) - {'self'} == set(S.SETTINGS) | BN_ARGUMENTS
    table = {n: s.default for n, s in S.SETTINGS.items()}
    got = _defaults(mixnorm.MixtureNormalization.__init__, S.SETTINGS)
    assert got == table
    assert {n: type(v) for n, v in got.items()} == {n: type(v) for n, v in table.items()}
    # the synchronized link and the functions restate some of them
    restated = ('decay', 'eps', 'n_components', 'em_iters')
    assert _defaults(MultiNodeMixtureNormalization.__init__, S.SETTINGS) == {
        'decay': 0.9, 'eps': 2e-5, 'n_components': 3, 'em_iters': 2} == {
        n: table[n] for n in restated}
    for f in (F.mixture_normalization, F.mixture_normalization_relu,
              F.fixed_mixture_normalization):
        assert _defaults(f, ['eps']) == {'eps': table['eps']}, f.__name__
    # fit_gmm shares the pruning and subsampling defaults (its eps is its own)
    assert _defaults(G.fit_gmm, ['fit_fraction', 'min_weight', 'min_count']) == {
        n: table[n] for n in ('fit_fraction', 'min_weight', 'min_count')}
    # and a config's mn section is completed with the table's defaults
    mn = C.load_config(MN2)['mn']
    assert mn == dict({n: d for n, d in table.items() if n not in ('eps', 'seed')},
                      layers=['conv3'], convert_at_epoch=None)


def test_the_link_keeps_the_checked_values():
    mn = mixnorm.MixtureNormalization(4, n_components=np.int64(2), em_iters=3, min_count=np.float32(8), seed=np.int64(5),
                                      lambda_scaling=np.bool_(False))
    assert (mn.n_components, mn.em_iters, mn.kmeans_iters, mn.gmm_em_iters) == (2, 3, 2, 1)
    assert type(mn.n_components) is int and type(mn.min_count) is float and mn.min_count == 8
    assert mn.seed == 5 and mn.lambda_scaling is False


@pytest.mark.parametrize('name', ['n_components', 'fit_fraction', 'min_weight', 'min_count',
                                  'eps'])
def test_fit_gmm_checks_the_settings_it_shares_with_the_table(name):
    value = BAD[name][0][0]
    with pytest.raises(ValueError) as e:
        G.fit_gmm(np.ones((40, 2)), **dict({'n_components': 2}, **{name: value}))
    assert str(e.value) == "The %r parameter of fit_gmm %s. Got %r instead." % (
        name, S.SETTINGS[name].requirement(), value)
    assert isinstance(e.value, TypeError)            # as scikit-learn's InvalidParameterError


@pytest.mark.parametrize('eps', [0.0, -1.0, float('nan'), float('inf'), True])
def test_the_functions_check_eps_by_the_table(eps):
    x = np.ones((4, 3), np.float32)
    resp = np.full((4, 1), 1.0, np.float32)
    for call in (lambda: F.mixture_normalization(x, None, None, resp, eps=eps),
                 lambda: F.fixed_mixture_normalization(x, None, None, resp, np.zeros((1, 3)),
                                                       np.ones((1, 3)), np.ones(1), eps=eps)):
        with pytest.raises(ValueError, match=r"'eps' parameter .* must be a number in the "
                                             r"range \(0, inf\)"):
            call()


def test_every_mn_setting_is_a_key_of_the_mn_section_or_set_elsewhere():
    section = C.SCHEMA['mn']
    assert set(section) - set(C.MN_PLACEMENT_KEYS) == \
        set(S.SETTINGS) - set(C.MN_SETTINGS_SET_ELSEWHERE)
    assert set(C.MN_SETTINGS_SET_ELSEWHERE) == {'eps', 'seed'}


def test_place_mn_passes_every_mn_setting_of_the_config():
    from experiments.models import build_model
    cfg = C.load_config(MN2, overrides=['mn.decay=0.5', 'mn.min_count=3', 'mn.affine=null',
                                        'mn.inference=paper', 'mn.queue_length=4'])
    model = build_model('cifar_cnn', 10)
    train.place_mn(cfg, model)
    link = dict(model.namedlinks())['/conv3/bn']
    assert isinstance(link, mixnorm.MixtureNormalization)
    for name in set(cfg['mn']) - set(C.MN_PLACEMENT_KEYS):
        assert getattr(link, name) == cfg['mn'][name], name


# ---------------------------------------------------------------- records' key flags

@pytest.mark.parametrize('key', [k for k in C.keys_flagged(C.NEUTRAL)
                                 if not k.startswith('gan.')])
def test_overriding_a_neutral_key_keeps_a_run_comparable(key):
    section = C.SCHEMA
    for part in key.split('.'):
        section = section[part]
    value = section[1]
    text = 'null' if value is None else "''" if value == '' else str(value).lower()
    cfg = C.load_config(MN2, overrides=['%s=%s' % (key, text)])
    assert not verdict._setting_reasons(cfg, cfg['_sources'])


@pytest.mark.parametrize('override', ['mn.decay=0.5', 'mn.n_components=2', 'data.augment=false'])
def test_overriding_a_key_without_a_flag_makes_a_run_not_the_rows(override):
    cfg = C.load_config(MN2, overrides=[override])
    assert verdict._setting_reasons(cfg, cfg['_sources']) == [
        "--set %s (not the row's setting)" % override]


def test_resume_ignores_exactly_the_resume_free_keys():
    assert set(rundir.RESUME_IGNORED) == set(C.keys_flagged(C.RESUME_FREE))
    assert set(C.keys_flagged(C.RESUME_FREE)) <= set(C.keys_flagged(C.NEUTRAL))
    assert not set(C.keys_flagged(C.NEUTRAL)) & set(C.keys_flagged(C.JUDGED))


def test_settings_that_exclude_each_other_are_one_config_error():
    with pytest.raises(C.ConfigError, match=r"mn.inference.*mn.affine.*no components"):
        C.load_config(MN2, overrides=['mn.inference=running', 'mn.affine=component'])
    with pytest.raises(S.InvalidParameter, match='no components'):
        mixnorm.MixtureNormalization(4, inference='running', affine='component')
