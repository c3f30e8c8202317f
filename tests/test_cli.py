"""The command lines: a user's mistake ends with one ``error:`` line and a non-zero exit
status, never a traceback (experiments/cli.py); Ctrl-C says where the run stopped."""
import io
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time

import numpy
import pytest

from experiments import cli, config as C, pipeline, rundir, runs, verdict as verdict_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BN2 = os.path.join(C.CONFIG_ROOT, 'table2', 'cifar10', 'BN-2.yaml')
TINY = ['--set', 'data.subset=[64, 32]', '--set', 'data.batch_size=16']


def command(*args, timeout=120):
    return subprocess.run([sys.executable] + list(args), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def own_env():
    """The environment of a test that reads stderr: the caller's, less the variables
    that change which warnings are printed."""
    return {k: v for k, v in os.environ.items()
            if k not in ('PYTHONWARNINGS', 'PYTHONDEVMODE')}


def sigint_as_at_a_terminal():
    """Popen's preexec_fn for a child that is sent SIGINT: the default disposition, as
    an interactive shell gives it (a suite started in the background by a script
    inherits SIGINT ignored, and so would the child)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def assert_one_error_line(proc, *parts):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert 'Traceback' not in proc.stderr + proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, proc.stderr
    for part in parts:
        assert part in proc.stderr, (part, proc.stderr)


def _archive(path, damage):
    """A CIFAR-10 archive damaged in one way: garbage bytes, cut in half, or lacking
    members."""
    if damage == 'garbage':
        path.write_bytes(b'not an archive' * 100)
        return
    with tarfile.open(str(path), 'w:gz') as tar:
        names = ['batches.meta'] + (['data_batch_1'] if damage == 'incomplete' else
                                    ['data_batch_%d' % i for i in range(1, 6)] + ['test_batch'])
        for name in names:
            payload = pickle.dumps({b'data': numpy.zeros((2, 3072), numpy.uint8),
                                    b'labels': [0, 1]}, protocol=2)
            info = tarfile.TarInfo('cifar-10-batches-py/' + name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    if damage == 'truncated':
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'incomplete'])
def test_a_damaged_cifar_archive_is_one_error_line(tmp_path, damage):
    """Any damage shows first as a checksum that is not the published one (how each kind
    of damage reads past the checksum is tests/test_data.py's)."""
    _archive(tmp_path / 'cifar-10-python.tar.gz', damage)
    proc = command('-m', 'experiments.train', BN2, '--data-dir', str(tmp_path), '--out',
                   str(tmp_path / 'run'))
    assert_one_error_line(proc, str(tmp_path / 'cifar-10-python.tar.gz'), 'MD5',
                          'c58f30108f718f92721af3b95e74349a', 'official')
    assert not (tmp_path / 'run').exists()


def test_a_folder_as_config_and_an_unknown_table_are_one_error_line(tmp_path):
    proc = command('-m', 'experiments.train', os.path.dirname(BN2))
    assert_one_error_line(proc, 'is a folder, not a config file')
    proc = command('scripts/compare.py', '--table', 'table9')
    assert_one_error_line(proc, "no table 'table9'", 'table2')
    proc = command('scripts/reproduce.py', 'table2', '--dataset', 'cifar10', '--set',
                   'optimizer.momentum=1.5')
    assert_one_error_line(proc, "'optimizer.momentum' must be in [0, 1), got 1.5")


def test_ctrl_c_says_where_the_run_stopped_and_how_to_resume(tmp_path):
    out = str(tmp_path / 'run')
    argv = ['-m', 'experiments.train', BN2, '--preset', 'smoke', '--synthetic', '--out', out,
            '--set', 'train.epochs=50', '--set', 'train.snapshot_every=1'] + TINY
    proc = subprocess.Popen([sys.executable] + argv, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=own_env(),
                            preexec_fn=sigint_as_at_a_terminal)
    try:
        deadline = time.time() + 240
        while not os.path.exists(os.path.join(out, 'snapshot_epoch_1')):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert 'Traceback' not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('interrupted at epoch '), stderr
    assert ('the run is in %s: run the same command again to resume from snapshot_epoch_'
            % out) in lines[0]
    verdict = runs.assess(out)
    assert verdict.status == verdict_lib.INTERRUPTED
    start = rundir.prepare_run(train_config(out), out)
    assert start.action == 'resume' and os.path.basename(start.snapshots[0]) in lines[0]


def train_config(out):
    """The config a rerun of the interrupted command resolves to (its config.yaml)."""
    return rundir.stored_config(out)


def test_the_demo_shows_mn_standardizing_each_mode(capsys, monkeypatch):
    """`make demo`: the mixture fits the rectified activations better than one Gaussian,
    BN's output has mean 0 and std 1 per channel, and MN's points of one mode have a std
    near 1 where BN's are squeezed."""
    import warnings
    from scripts import demo
    monkeypatch.setattr(warnings, 'formatwarning', warnings.formatwarning)
    demo.main(['--seed', '1', '--components', '3'])
    out = capsys.readouterr().out
    one, mixture = [float(v) for v in out.split('single Gaussian (BN) ')[1].split('\n')[0]
                    .replace(', mixture (MN)', '').split()]
    assert mixture > one
    rows = {line[:28].strip(): [float(v) for v in line[28:].split()]
            for line in out.splitlines() if line.startswith(('mean (', 'std '))}
    assert rows['mean (avg over channels)'][1] == pytest.approx(0, abs=1e-3)
    assert rows['std (avg over channels)'][1] == pytest.approx(1, abs=1e-2)
    bn_within, mn_within = rows['std within a mode (avg)']
    assert abs(mn_within - 1) < abs(bn_within - 1)


def test_the_cuda_error_reads_as_sentences(monkeypatch):
    def no_cupy(spec):
        raise RuntimeError('CUDA environment is not correctly set up\n(see https://github.com/'
                           "chainer/chainer#installation).No module named 'cupy'")
    monkeypatch.setattr(pipeline.chainer, 'get_device', no_cupy)
    with pytest.raises(C.ConfigError) as e:
        pipeline.resolve_device('0')
    msg = str(e.value)
    assert "#installation). No module named 'cupy'" in msg and '\n' not in msg
    assert '--device cpu' in msg


def test_entry_point_keeps_tracebacks_for_bugs_and_exits_130_on_ctrl_c(capsys):
    @cli.entry_point
    def bug(argv=None):
        raise ZeroDivisionError('a bug')

    @cli.entry_point
    def mistake(argv=None):
        raise C.ConfigError('bad key')

    @cli.entry_point
    def stopped(argv=None):
        raise rundir.RunInterrupted('interrupted at epoch 3')

    with pytest.raises(ZeroDivisionError):
        bug()
    with pytest.raises(SystemExit) as e:
        mistake()
    assert e.value.code == 'error: bad key'
    with pytest.raises(SystemExit) as e:
        stopped()
    assert e.value.code == 130 and capsys.readouterr().err == 'interrupted at epoch 3\n'


def test_the_kits_warnings_are_one_line_and_others_keep_their_form():
    from experiments import data
    kit = cli.format_warning('no data in --data-dir /x; using y', UserWarning,
                             data.__file__, 577)
    assert kit == 'warning: no data in --data-dir /x; using y\n'
    other = cli.format_warning('deprecated', DeprecationWarning, numpy.__file__, 3)
    assert other.startswith(numpy.__file__) and 'DeprecationWarning: deprecated' in other
