"""Faults injected into data-parallel runs under ``mpiexec -n 2``: whatever fails on
whichever process, every process ends, ``mpiexec`` returns non-zero within
:data:`LIMIT_S` of the fault with the error printed once (``error: rank <r>: ...``),
and the rerun of the same command resumes bit-identically to an uninterrupted run.

Cases: a user's mistake, a bug and Ctrl-C on one process (tests/mpi_workers/
fault_worker.py); kill -9 of either rank mid-run; SIGINT to ``mpiexec`` at moments
drawn with a fixed seed, and to one rank; a missing or truncated snapshot of one rank; the run
directory made read-only mid-run; a full disk under every process's snapshot, seconds
apart (the worker), and a real one (a small tmpfs, where this process may mount one).
Every launch has a hard timeout, so a hang fails its test.  The run is one row of the
smoke preset (one iteration per epoch), OMP_NUM_THREADS=1.  Skipped without
mpi4py/mpiexec."""
import mixnorm._compat  # noqa: F401

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import mpi_util
from experiments import rundir

pytestmark = mpi_util.needs_mpi

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW = os.path.join(REPO, 'configs', 'table2', 'cifar10', 'MN-2.yaml')
WORKER = os.path.join(REPO, 'tests', 'mpi_workers', 'fault_worker.py')
EPOCHS = 3
#: How soon after a fault mpiexec must have returned.
LIMIT_S = 10.0
#: Hard limit of any launch (a hang fails the test).
HANG_S = 120


def train_cmd(out, P=2, epochs=EPOCHS, communicator='naive'):
    cmd = [sys.executable, '-m', 'experiments.train', ROW, '--out', out, '--preset', 'smoke',
           '--synthetic', '--no-progress', '--set', 'train.epochs=%d' % epochs]
    if communicator:
        cmd += ['--communicator', communicator]
    return [mpi_util.mpiexec(), '-n', str(P)] + cmd if P else cmd


def launch(cmd):
    p = subprocess.Popen(cmd, cwd=REPO, env=mpi_util.env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    p.started = time.time()
    return p


def finish(p, fault_at=None, limit=HANG_S):
    """Wait for ``p`` (a hang fails); returns (rc, stdout, stderr, seconds since the
    fault).  With ``FAULT_REPORT=<file>`` in the environment, each launch appends what
    the user saw (exit status, seconds since the fault or the launch, stderr's error
    lines) to that file as one JSON line."""
    try:
        out, err = p.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail('mpiexec hung (%d s): %s%s' % (limit, out, err))
    now = time.time()
    took = now - fault_at if fault_at is not None else None
    if os.environ.get('FAULT_REPORT'):
        with open(os.environ['FAULT_REPORT'], 'a') as f:
            f.write(json.dumps({
                'test': os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0],
                'rc': p.returncode, 'since': 'fault' if fault_at else 'launch',
                'seconds': round(now - (fault_at or p.started), 2),
                'lines': [ln for ln in err.splitlines() if ln.strip()
                          and not ln.startswith(' ')][:4]}) + '\n')
    return p.returncode, out, err, took


def run(cmd, limit=HANG_S):
    rc, out, err, _ = finish(launch(cmd), limit=limit)
    return rc, out, err


def wait_for(p, out, epoch, limit=HANG_S):
    """Wait until every process of ``p`` wrote its snapshot of ``epoch`` into ``out``."""
    path = os.path.join(out, 'snapshot_epoch_%d' % epoch)
    deadline = time.time() + limit
    while not (os.path.exists(path) and os.path.exists(path + '.rank1')):
        if p.poll() is not None:
            pytest.fail('the run ended before %s appeared: %s' % (path, p.communicate()))
        assert time.time() < deadline, 'no %s after %d s' % (path, limit)
        time.sleep(0.005)


def rank_pids(root):
    """{rank: pid} of the MPI processes below process ``root`` (mpiexec)."""
    children = {}
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                ppid = int(open('/proc/%s/stat' % d).read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            env = open('/proc/%d/environ' % pid, 'rb').read().split(b'\0')
        except OSError:
            continue
        for item in env:
            if item.startswith(b'PMI_RANK='):
                found[int(item.split(b'=', 1)[1])] = pid
    return found


def signal_rank(p, rank, sig):
    deadline = time.time() + 30
    while rank not in rank_pids(p.pid):
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.01)
    os.kill(rank_pids(p.pid)[rank], sig)
    return time.time()


def state(path):
    """The trainer state in a snapshot: model, optimizer, iterator, RNGs."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k.startswith('updater/')}


def assert_identical(out, ref):
    """``out`` finished with the same log and bitwise the same final state (every
    process) as ``ref``."""
    keys = ('main/loss', 'main/accuracy', 'validation/main/loss', 'validation/main/accuracy')
    logs = [json.load(open(os.path.join(d, 'log.json'))) for d in (out, ref)]
    assert [[e.get(k) for k in keys] for e in logs[0]] == \
        [[e.get(k) for k in keys] for e in logs[1]]
    assert json.load(open(os.path.join(out, 'summary.json')))['finished']
    for name in ('snapshot_epoch_%d' % EPOCHS, 'snapshot_epoch_%d.rank1' % EPOCHS):
        got, want = state(os.path.join(out, name)), state(os.path.join(ref, name))
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg='%s %s' % (name, k))


def assert_one_error(err, *needles):
    lines = [ln for ln in err.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], err
    assert 'Traceback' not in err, err
    return lines[0]


def resume_and_check(out, ref, needle='resumed from'):
    rc, stdout, err = run(train_cmd(out))
    assert rc == 0, stdout + err
    assert needle in stdout, stdout
    assert not [n for n in os.listdir(out) if n.startswith('tmp')]
    assert_identical(out, ref)
    return stdout


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """An uninterrupted 2-process run and the seconds from its launch until every
    process had written its first snapshot."""
    out = str(tmp_path_factory.mktemp('faults') / 'ref')
    p = launch(train_cmd(out))
    wait_for(p, out, 1)
    first_snapshot_s = time.time() - p.started
    rc, stdout, err, _ = finish(p)
    assert rc == 0, stdout + err
    return out, first_snapshot_s


# --------------------------------------------------------------- the error path

@pytest.mark.parametrize('mode,rank,status,needle', [
    ('user', 1, 1, 'error: rank 1: snapshot_epoch_6.rank1 cannot be written'),
    ('user', 0, 1, 'error: rank 0: snapshot_epoch_6.rank0 cannot be written'),
    ('local', 1, 1, 'error: rank 1: the data of rank 1 is missing'),
    ('everywhere', 0, 1, 'error: rank 0: the same mistake on every process'),
    ('bug', 1, 1, 'ZeroDivisionError: a bug on rank 1'),
    ('sigint', 1, 130, 'rank 1: interrupted'),
    ('early', 1, 130, 'rank 1: interrupted'),
])
def test_a_failure_on_one_process_ends_all_and_is_printed_once(mode, rank, status, needle):
    rc, out, err = run([mpi_util.mpiexec(), '-n', '2', sys.executable, WORKER, mode,
                        str(rank)], limit=60)
    assert rc == status, out + err
    assert 'got past the failure' not in out
    assert err.count(needle) == 1, err
    if mode == 'bug':
        assert err.count('Traceback') == 1 and 'rank 1 of 2: a bug' in err
    else:
        assert 'Traceback' not in err
    if mode != 'everywhere':
        assert 'rank %d' % (1 - rank) not in err.replace('rank %d of' % rank, '')


@pytest.mark.parametrize('first', [0, 1])
def test_a_disk_full_under_every_snapshot_is_printed_once_by_rank_0(first):
    """Each process fails to write its own file of the snapshot, one of them a second
    before the other: the processes agree on the snapshot, so both leave together and
    rank 0, the lowest that failed, alone prints it."""
    rc, out, err = run([mpi_util.mpiexec(), '-n', '2', sys.executable, WORKER,
                        'fullsnapshot', str(first)], limit=60)
    assert rc == 1, out + err
    assert 'got past the failure' not in out
    assert_one_error(err, 'error: rank 0: [Errno 28] No space left on device',
                     'free some space')
    assert 'MPI_Abort' not in err, err


def test_mpiexec_without_communicator_says_to_add_it(tmp_path):
    out = str(tmp_path / 'run')
    rc, stdout, err = run(train_cmd(out, communicator=None), limit=60)
    assert rc == 1, stdout + err
    assert_one_error(err, 'one of 2 started by mpiexec', '--communicator naive')
    assert not os.path.exists(out) and stdout == ''


def test_resuming_with_another_number_of_processes_names_mpiexec(tmp_path, reference):
    out = str(tmp_path / 'run')
    shutil.copytree(reference[0], out)
    os.remove(os.path.join(out, 'summary.json'))        # an interrupted run
    rc, stdout, err = run(train_cmd(out, P=0, communicator=None), limit=60)
    assert rc == 1
    assert_one_error(err, 'world_size (run: 2, now: 1)', 'mpiexec -n 2')
    rc, stdout, err = run(train_cmd(out, P=4), limit=60)           # batch 4 among 4: fits
    assert rc == 1
    assert_one_error(err, 'world_size (run: 2, now: 4)', 'mpiexec -n 2')


# ------------------------------------------------------------- faults mid-run

@pytest.mark.parametrize('rank', [0, 1])
def test_kill_9_of_either_rank_ends_the_job_and_resumes_identically(tmp_path, reference,
                                                                     rank):
    out = str(tmp_path / 'run')
    p = launch(train_cmd(out))
    wait_for(p, out, 2)
    rc, _, err, took = finish(p, signal_rank(p, rank, signal.SIGKILL))
    assert rc != 0 and took < LIMIT_S, (rc, took, err)
    # summary.json is rewritten right after each snapshot: a kill falls at most between
    summary = json.load(open(os.path.join(out, 'summary.json')))
    newest = int(os.path.basename(rundir.snapshots(out)[-1]).rsplit('_', 1)[1])
    assert summary['epochs_done'] >= newest - 1 >= 1 and not summary['finished']
    resume_and_check(out, reference[0])


def test_ctrl_c_to_mpiexec_at_random_moments_then_identical(tmp_path, reference):
    """Three launches, each sent Ctrl-C (``mpiexec`` passes it to every process) at a
    moment drawn with a fixed seed (``FAULT_SEED``), before a fresh run would have
    written its first snapshot, so from the interpreter's start to the middle of
    training: each launch is interrupted (exit status 130, or Python's
    ``KeyboardInterrupt`` while it was still importing) within :data:`LIMIT_S`, and
    says so, once per process at most; the rerun then finishes bit-identical."""
    seed = int(os.environ.get('FAULT_SEED', 0))
    rng = random.Random(seed)
    out = str(tmp_path / 'run')
    for _ in range(3):
        p = launch(train_cmd(out))
        time.sleep(rng.uniform(0.2, 0.9 * reference[1]))
        assert p.poll() is None, 'seed %d: the launch ended before its Ctrl-C: %s' % (
            seed, p.communicate())
        p.send_signal(signal.SIGINT)
        rc, stdout, err, took = finish(p, time.time())
        assert took < LIMIT_S, 'seed %d: %.1f s' % (seed, took)
        said = [ln for ln in err.splitlines()
                if ln.startswith(('rank 0: interrupted', 'rank 1: interrupted'))]
        if rc == 130 and said:      # the kit's commands were running: each said where
            speakers = [ln.split(':')[0] for ln in said]
            assert len(set(speakers)) == len(speakers), 'seed %d: %s' % (seed, err)
            assert 'Traceback' not in err, 'seed %d: %s' % (seed, err)
        else:                       # still importing: Python's own KeyboardInterrupt
            assert rc != 0 and 'KeyboardInterrupt' in err, 'seed %d: rc %d, %s%s' % (
                seed, rc, stdout, err)
    resume_and_check(out, reference[0], needle='finished')


@pytest.mark.parametrize('rank', [0, 1])
def test_ctrl_c_to_one_rank_ends_the_job_with_one_line(tmp_path, reference, rank):
    out = str(tmp_path / 'run')
    p = launch(train_cmd(out))
    wait_for(p, out, 1)
    rc, stdout, err, took = finish(p, signal_rank(p, rank, signal.SIGINT))
    assert rc == 130 and took < LIMIT_S, (rc, took, err)
    lines = [ln for ln in err.splitlines() if 'interrupted at' in ln]
    assert len(lines) == 1 and lines[0].startswith('rank %d: interrupted at epoch' % rank)
    assert 'the same mpiexec -n 2 command again to resume from snapshot_epoch_' in lines[0]
    assert 'Traceback' not in err
    resume_and_check(out, reference[0])


# ------------------------------------------------------------- damaged records

def damaged_copy(tmp_path, ref, *, remove=(), truncate=()):
    out = str(tmp_path / 'run')
    shutil.copytree(ref, out)
    os.remove(os.path.join(out, 'summary.json'))        # killed before the end
    for name in remove:
        os.remove(os.path.join(out, name))
    for name in truncate:
        path = os.path.join(out, name)
        data = open(path, 'rb').read()
        open(path, 'wb').write(data[:len(data) // 2])
    os.makedirs(os.path.join(out, 'tmpsnapshot_epoch_%d.rank1abc' % EPOCHS))  # a kill mid-write
    return out


@pytest.mark.parametrize('damage,why', [
    (dict(remove=['snapshot_epoch_3.rank1']), 'snapshot_epoch_3.rank1 is missing'),
    (dict(truncate=['snapshot_epoch_3.rank1']), 'snapshot_epoch_3.rank1 cannot be read'),
    (dict(truncate=['snapshot_epoch_3']), 'snapshot_epoch_3 cannot be read'),
])
def test_a_snapshot_incomplete_on_one_rank_falls_back_on_every_rank(tmp_path, reference,
                                                                     damage, why):
    out = damaged_copy(tmp_path, reference[0], **damage)
    stdout = resume_and_check(out, reference[0])
    assert ('warning: snapshot_epoch_3 is not complete on every process (%s' % why) in stdout
    assert 'resuming from the previous snapshot, snapshot_epoch_2' in stdout
    assert 'resumed from %s' % os.path.join(out, 'snapshot_epoch_2') in stdout
    assert 'removed what an interrupted write left' in stdout


def test_the_first_snapshot_of_a_two_process_run_resumes_identically(tmp_path, reference):
    later = ['snapshot_epoch_%d%s' % (e, s) for e in range(2, EPOCHS + 1)
             for s in ('', '.rank1')]
    out = damaged_copy(tmp_path, reference[0], remove=later)
    stdout = resume_and_check(out, reference[0])
    assert 'resumed from %s (epoch 1, iteration 1)' % os.path.join(out, 'snapshot_epoch_1') \
        in stdout


def test_no_snapshot_complete_on_every_rank_is_one_line_on_every_rank(tmp_path, reference):
    ranks1 = ['snapshot_epoch_%d.rank1' % e for e in range(1, EPOCHS + 1)]
    out = damaged_copy(tmp_path, reference[0], remove=ranks1)
    rc, stdout, err = run(train_cmd(out), limit=60)
    assert rc == 1, stdout + err
    assert_one_error(err, 'error: rank 0: no snapshot in', 'snapshot_epoch_1.rank1 is missing',
                     '--force')
    assert 'Abort' not in err                   # agreed: every process left by itself
    rc, stdout, err = run(train_cmd(out) + ['--force'])
    assert rc == 0 and '--force: the earlier records' in stdout, stdout + err
    assert not [n for n in os.listdir(out) if n.startswith('tmp')]
    assert_identical(out, reference[0])


# ------------------------------------------------------------- the disk

def mount_tmpfs(path, size):
    """Mount a tmpfs of ``size`` at ``path``; the reason when it cannot be."""
    if shutil.which('mount') is None:
        return 'no mount command'
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=%s' % size, 'tmpfs', path],
                       capture_output=True, text=True, timeout=30)
    return None if r.returncode == 0 else 'cannot mount a tmpfs here (%s)' % (
        r.stderr.strip() or 'exit status %d' % r.returncode)


@pytest.fixture
def mounted():
    """The tmpfs mounted by a test, unmounted after it."""
    paths = []
    yield paths
    for path in paths:
        subprocess.run(['umount', '-l', path], capture_output=True, timeout=30)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmpfs(mounted):
    """A mounter of small tmpfs (skips the test with the reason where it cannot mount)."""
    def mount(size):
        path = tempfile.mkdtemp(prefix='mixnorm-faults-')
        why = mount_tmpfs(path, size)
        if why:
            os.rmdir(path)
            pytest.skip(why)
        mounted.append(path)
        return path
    return mount


def remount(path, options, limit=10.0):
    """Remount ``path`` with ``options``; a read-only remount fails (busy) while the run
    has a file open for writing, so it is retried until ``limit`` seconds."""
    deadline = time.time() + limit
    while True:
        r = subprocess.run(['mount', '-o', 'remount,' + options, path],
                           capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            return
        assert time.time() < deadline, 'remount,%s %s: %s' % (options, path, r.stderr)
        time.sleep(0.01)


def read_only_switch(tmp_path, tmpfs):
    """``(out, make_read_only, undo)`` by the first means that binds this process: chmod
    (not root); a tmpfs remounted read-only, else the immutable flag (root)."""
    if os.geteuid() != 0:
        out = str(tmp_path / 'run')
        return out, lambda: os.chmod(out, 0o555), lambda: os.chmod(out, 0o755)
    disk = tempfile.mkdtemp(prefix='mixnorm-faults-')
    why = mount_tmpfs(disk, '200m')
    if why is None:
        tmpfs.append(disk)
        out = os.path.join(disk, 'run')
        return out, lambda: remount(disk, 'ro'), lambda: remount(disk, 'rw')
    os.rmdir(disk)
    out = str(tmp_path / 'run')
    os.makedirs(out)
    r = subprocess.run(['chattr', '+i', out], capture_output=True, text=True, timeout=30) \
        if shutil.which('chattr') else None
    if r is None or r.returncode != 0:
        pytest.skip('as root, a directory is read-only only on a read-only mount (%s) or '
                    'with the immutable flag (chattr: %s)'
                    % (why, r.stderr.strip() if r else 'not installed'))
    subprocess.run(['chattr', '-i', out], check=True, timeout=30)
    return (out, lambda: subprocess.run(['chattr', '+i', out], check=True, timeout=30),
            lambda: subprocess.run(['chattr', '-i', out], check=True, timeout=30))


def test_a_run_directory_made_read_only_mid_run(tmp_path, reference, mounted):
    out, make_read_only, undo = read_only_switch(tmp_path, mounted)
    p = launch(train_cmd(out))
    wait_for(p, out, 1)
    make_read_only()
    rc, _, err, took = finish(p, time.time())
    undo()
    assert rc == 1 and took < LIMIT_S, (rc, took, err)
    line = assert_one_error(err, 'error: rank ')
    assert ('Read-only file system' in line and 'make the run directory writable' in line
            or 'Permission denied' in line or 'Operation not permitted' in line), line
    resume_and_check(out, reference[0])


def test_a_full_disk_ends_the_job_and_the_run_resumes_once_freed(reference, tmpfs):
    sizes = [os.path.getsize(os.path.join(reference[0], 'snapshot_epoch_%d%s' % (e, s)))
             for e in (1, 2) for s in ('', '.rank1')]
    disk = tmpfs('%dk' % ((sum(sizes) + sizes[-1] // 2) // 1024))   # room for 2 epochs
    out = os.path.join(disk, 'run')
    p = launch(train_cmd(out))
    wait_for(p, out, 2)
    rc, _, err, took = finish(p, time.time())
    assert rc == 1 and took < LIMIT_S, (rc, took, err)
    assert_one_error(err, 'error: rank ', 'No space left on device', 'free some space')
    remount(disk, 'size=200m')                              # space freed
    resume_and_check(out, reference[0])
