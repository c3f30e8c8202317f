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
import threading

import numpy as np
import pytest

import mpi_util
from experiments import cli, config as C, parallel, rundir
from mixnorm._collectives import AgreedError, agree
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


def run(cmd, timeout=240, env=None, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=env or mpi_util.env(), **kw)


def own_env():
    """For a test that reads stderr: the MPI tests' environment, less the variables that
    change which warnings are printed."""
    return {k: v for k, v in mpi_util.env().items()
            if k not in ('PYTHONWARNINGS', 'PYTHONDEVMODE')}


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
    assert par.shard(ds, 0) is ds and par.decide(lambda: 42) == 42 and par.agree(lambda: 7) == 7
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
             '--communicator', 'naive', '--synthetic'], timeout=60, env=own_env())
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
        with pytest.raises(AgreedError) as e:
            parallel.create(None)
        assert e.value.rank == 0        # every process raises it; rank 0 prints it
        assert isinstance(e.value.__cause__, C.ConfigError)
        assert ('one of %d started by mpiexec, but without --communicator' % world[1]) in \
            str(e.value.__cause__) and 'add --communicator naive' in str(e.value)
    else:
        assert parallel.create(None).size == 1


class ThreadRanks:
    """P threads as ranks: ``allgather`` stacks every thread's float64 array."""

    def __init__(self, size):
        self.size, self.rows, self.calls = size, [None] * size, 0
        self.barrier = threading.Barrier(size, timeout=20)

    def reducer(self, rank):
        group = self

        class Reducer:
            size, rank = group.size, None

            def allgather(self, a):
                group.rows[self.rank] = np.asarray(a, dtype=np.float64)
                group.barrier.wait()
                out = np.stack(group.rows)
                group.barrier.wait()
                group.calls += self.rank == 0
                return out
        r = Reducer()
        r.rank = rank
        return r

    def run(self, fn):
        """``agree(reducer, lambda: fn(rank))`` on every rank: what each returned or
        raised."""
        got = [None] * self.size

        def one(rank):
            try:
                got[rank] = agree(self.reducer(rank), lambda: fn(rank))
            except Exception as e:
                got[rank] = e
        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return got


def test_agree_returns_each_ranks_result_when_none_failed_in_one_collective():
    ranks = ThreadRanks(3)
    assert ranks.run(lambda rank: rank * 10) == [0, 10, 20] and ranks.calls == 1


def test_agree_raises_the_same_error_on_every_rank_naming_the_first_that_failed():
    def fn(rank):
        if rank == 2:
            raise OSError(errno.ENOSPC, 'No space left on device')
        if rank == 1:
            raise rundir.RunError('the data of rank 1 is missing')
        return 'fine'

    ranks = ThreadRanks(3)
    got = ranks.run(fn)
    assert all(isinstance(e, AgreedError) for e in got), got
    assert {str(e) for e in got} == {
        'rank(s) [1, 2] of 3 failed: rank 1: the data of rank 1 is missing; '
        'rank 2: [Errno 28] No space left on device'}
    assert [e.rank for e in got] == [1, 1, 1]           # rank 1 reports it
    # each rank that failed keeps its own error, with its traceback
    assert got[0].__cause__ is None and isinstance(got[1].__cause__, rundir.RunError)
    assert got[2].__cause__.errno == errno.ENOSPC and got[2].__cause__.__traceback__
    assert ranks.calls == 2


def test_agree_sees_an_error_without_a_message():
    def fn(rank):
        if rank == 1:
            raise AssertionError()
        return rank

    got = ThreadRanks(2).run(fn)
    assert [type(e) for e in got] == [AgreedError] * 2
    assert str(got[0]) == 'rank(s) [1] of 2 failed: rank 1: AssertionError'


def entry(monkeypatch, rank, raise_it):
    """Run a command raising ``raise_it(rank)`` as process ``rank`` of 2: (exit status,
    what it printed on stderr, whether it exited without Python's clean-up)."""
    monkeypatch.setattr(parallel, 'launched_world', lambda: (rank, 2))
    monkeypatch.setitem(sys.modules, 'mpi4py.MPI', None)      # no MPI to start here
    left = []

    def exit_now(status):
        left.append(status)
        raise SystemExit(status)
    monkeypatch.setattr(cli.os, '_exit', exit_now)

    @cli.entry_point
    def command(argv=None):
        raise_it(rank)

    with pytest.raises(SystemExit) as e:
        command()
    return e.value.code, bool(left)


def agreed_disk_full(rank):
    """What ``agree`` raises when the disk filled up under rank 1 (and rank 0 did not
    fail): rank 1's error is the cause on rank 1."""
    cause = OSError(errno.ENOSPC, 'No space left on device') if rank == 1 else None
    raise AgreedError('rank(s) [1] of 2 failed: rank 1: [Errno 28] No space left on '
                      'device', 1) from cause


def test_an_agreed_error_is_printed_by_the_rank_it_names_and_every_process_leaves(
        monkeypatch, capsys):
    for rank in (0, 1):
        status, at_once = entry(monkeypatch, rank, agreed_disk_full)
        err = capsys.readouterr().err
        assert status == 1 and not at_once         # every process leaves by itself
        if rank == 1:
            assert err == ('error: rank 1: [Errno 28] No space left on device: free some '
                           'space (or train into --out on another disk) and run the same '
                           'command again: it resumes from the newest complete snapshot\n')
        else:
            assert err == ''

    def link_error(rank):           # a layer adds its name to an agreed error
        try:
            agreed_disk_full(rank)
        except AgreedError as e:
            raise ValueError('layer conv1: %s' % e) from e

    for rank in (0, 1):
        status, at_once = entry(monkeypatch, rank, link_error)
        err = capsys.readouterr().err
        assert status == 1 and not at_once
        assert (err.startswith('rank 1 of 2: a bug; the traceback follows\n')
                and err.rstrip().endswith('ValueError: layer conv1: rank(s) [1] of 2 '
                                          'failed: rank 1: [Errno 28] No space left on '
                                          'device')) if rank == 1 else err == ''


def test_a_failure_of_one_process_is_printed_by_it_and_ends_it_at_once(monkeypatch,
                                                                       capsys):
    def disk(rank):
        raise OSError(errno.ENOSPC, 'No space left on device')

    def ctrl_c(rank):
        raise rundir.RunInterrupted('interrupted at epoch 2.00')

    def bug(rank):
        raise ZeroDivisionError('a bug')

    for rank in (0, 1):
        assert entry(monkeypatch, rank, disk) == (1, True)
        assert capsys.readouterr().err.startswith(
            'error: rank %d: [Errno 28] No space left on device: free some space' % rank)
        assert entry(monkeypatch, rank, ctrl_c) == (130, True)
        assert capsys.readouterr().err == 'rank %d: interrupted at epoch 2.00\n' % rank
        assert entry(monkeypatch, rank, bug) == (1, True)
        err = capsys.readouterr().err
        assert err.startswith('rank %d of 2: a bug; the traceback follows\nTraceback' % rank)
        assert err.rstrip().endswith('ZeroDivisionError: a bug')
