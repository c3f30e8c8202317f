"""Data-parallel training (``--communicator``, experiments/parallel.py): the single
process is the P = 1 case of the same code; under ``mpiexec -n 2`` rank 0 writes the
run, every process keeps its own snapshot, and user mistakes are one error line (faults
and resuming after them: tests/test_faults.py).  The MPI tests skip without
mpi4py/mpiexec."""
import mixnorm._compat  # noqa: F401

import errno
import json
import os
import subprocess
import sys

import pytest

import mpi_util
from experiments import cli, config as C, parallel, records
from mpi_util import needs_mpi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = os.path.join(REPO, 'configs', 'table2', 'cifar10', 'MN-2.yaml')
TINY = ['--preset', 'smoke', '--synthetic', '--no-progress',
        '--set', 'data.subset=[128, 32]', '--set', 'data.batch_size=32',
        '--set', 'train.snapshot_every=1']


def train_cmd(P, out, *extra):
    cmd = [sys.executable, '-m', 'experiments.train', ROW, '--out', out] + TINY + list(extra)
    if P > 1:
        cmd = [mpi_util.mpiexec(), '-n', str(P)] + cmd + ['--communicator', 'naive']
    return cmd


def run(cmd, timeout=240, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=mpi_util.env(), **kw)


def summary(out):
    with open(os.path.join(out, 'summary.json')) as f:
        return json.load(f)


def test_one_process_is_the_p1_case():
    par = parallel.create(None)
    cfg = C.load_config(ROW, ['smoke'], ['data.dataset=synthetic'])
    rec = par.record(cfg)
    assert (rec['world_size'], rec['communicator'], rec['per_rank_batch_size']) == \
        (1, None, cfg['data']['batch_size'])
    ds = list(range(10))
    assert par.shard(ds, 0) is ds and par.decide(lambda: 42) == 42
    assert par.own_snapshot('snapshot_epoch_3') == 'snapshot_epoch_3'


def test_a_communicator_without_mpi4py_names_the_install_command():
    code = ('import sys; sys.modules["mpi4py"] = None\n'
            'from experiments import parallel\n'
            'try:\n    parallel.create("naive")\n'
            'except Exception as e:\n    print(type(e).__name__, e)\n')
    r = run([sys.executable, '-c', code], timeout=60)
    assert 'ConfigError' in r.stdout and "pip install -e '.[distributed]'" in r.stdout


def test_gan_says_it_is_not_data_parallel():
    r = run([sys.executable, '-m', 'experiments.gan',
             os.path.join(REPO, 'configs', 'dcgan', 'cifar10', 'mn.yaml'),
             '--communicator', 'naive', '--synthetic'], timeout=60)
    assert r.returncode == 1 and r.stderr.strip().startswith('error: DCGAN training')
    assert 'Traceback' not in r.stderr


@needs_mpi
def test_two_processes_rank0_writes_and_records_the_world(tmp_path):
    out = str(tmp_path / 'run')
    r = run(train_cmd(2, out, '--set', 'train.epochs=1'))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count('finished, best test accuracy') == 1       # rank 0 speaks
    s = summary(out)
    assert (s['world_size'], s['communicator'], s['per_rank_batch_size']) == (2, 'naive', 16)
    assert sorted(os.listdir(out)) == ['config.yaml', 'log.json', 'snapshot_epoch_1',
                                       'snapshot_epoch_1.rank1', 'summary.json']
    assert 'world_size: 2' in open(os.path.join(out, 'config.yaml')).read()
    # 128 images, 32 a step: every epoch has 4 steps, as for one process
    assert json.load(open(os.path.join(out, 'log.json')))[-1]['iteration'] == 4


@needs_mpi
def test_mistakes_under_mpi_are_one_line(tmp_path):
    out = str(tmp_path / 'run')
    r = run(train_cmd(3, out, '--set', 'train.epochs=1'))      # 32 among 3 processes
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and 'does not divide among 3 processes' in lines[0], r.stderr
    assert 'Traceback' not in r.stderr
    r = run(train_cmd(2, out, '--set', 'train.epochs=1'))
    assert r.returncode == 0, r.stderr
    r = run(train_cmd(1, out, '--set', 'train.epochs=2'))       # one process, other length
    assert r.returncode == 1 and 'world_size (run: 2, now: 1)' in r.stderr


class FakeComm:
    """What Parallel reads of a communicator, for the checks that need no MPI."""

    def __init__(self, size, rank=0):
        self.size, self.rank, self.intra_rank = size, rank, rank


def test_a_batch_that_does_not_divide_names_the_mpiexec_to_use():
    cfg = C.load_config(ROW, [], ['data.batch_size=32'])
    with pytest.raises(C.ConfigError) as e:
        parallel.Parallel('naive', FakeComm(3)).per_rank_batch_size(cfg)
    assert 'does not divide among 3 processes: run mpiexec -n 2 or mpiexec -n 4' in str(e.value)
    assert parallel.Parallel('naive', FakeComm(4)).per_rank_batch_size(cfg) == 8


@pytest.mark.parametrize('env,world', [
    ({}, (0, 1)), ({'PMI_SIZE': '2', 'PMI_RANK': '1'}, (1, 2)),
    ({'OMPI_COMM_WORLD_SIZE': '4', 'OMPI_COMM_WORLD_RANK': '3'}, (3, 4)),
    ({'PMI_SIZE': '1', 'PMI_RANK': '0'}, (0, 1)),
])
def test_the_world_is_read_from_the_launcher(monkeypatch, env, world):
    for size, rank in parallel.LAUNCHER_VARS:
        monkeypatch.delenv(size, raising=False)
        monkeypatch.delenv(rank, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delitem(sys.modules, 'mpi4py.MPI', raising=False)
    assert parallel.launched_world() == world
    if world[1] > 1:                # mpiexec -n P > 1 without --communicator
        with pytest.raises(C.ConfigError, match='one of %d started by mpiexec, but without '
                           '--communicator.*add --communicator naive' % world[1]) as e:
            parallel.create(None)
        assert e.value.raised_alike and e.value.speaks == (world[0] == 0)
    else:
        assert parallel.create(None).size == 1


def test_an_error_raised_alike_is_printed_once_and_ends_every_process(monkeypatch, capsys):
    @cli.entry_point
    def alike(argv=None):
        raise parallel.mark_alike(records.RunError('no snapshot'), speaks=argv == 'speak')

    monkeypatch.setattr(parallel, 'launched_world', lambda: (1, 2))
    for argv, printed in (('speak', 'error: rank 1: no snapshot\n'), ('quiet', '')):
        with pytest.raises(SystemExit) as e:
            alike(argv)
        assert e.value.code == 1 and capsys.readouterr().err == printed


def test_a_failure_of_one_process_aborts_the_job_after_rank_0_had_its_chance(monkeypatch,
                                                                             capsys):
    aborted, slept = [], []
    monkeypatch.setattr(parallel, 'abort', lambda status: aborted.append(status))
    monkeypatch.setattr(cli.time, 'sleep', slept.append)
    monkeypatch.setattr(cli.signal, 'signal', lambda *a: None)

    @cli.entry_point
    def failing(argv=None):
        if argv == 'disk':
            raise OSError(errno.ENOSPC, 'No space left on device')
        if argv == 'ctrl-c':
            raise records.RunInterrupted('interrupted at epoch 2.00')
        raise ZeroDivisionError('a bug')

    for rank in (0, 1):
        monkeypatch.setattr(parallel, 'launched_world', lambda: (rank, 2))
        failing('disk')
        err = capsys.readouterr().err
        assert err.startswith('error: rank %d: [Errno 28] No space left on device: free some '
                              'space' % rank)
        failing('ctrl-c')
        assert capsys.readouterr().err == 'rank %d: interrupted at epoch 2.00\n' % rank
        failing('bug')
        err = capsys.readouterr().err
        assert 'rank %d of 2: a bug' % rank in err and 'ZeroDivisionError: a bug' in err
    assert aborted == [1, 130, 1] * 2
    assert slept == [cli.FORWARD_S] * 3 + [cli.GRACE_S, cli.FORWARD_S] * 3
