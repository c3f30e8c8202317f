"""Synchronized MN under MPI (``mpiexec -n 2`` and ``-n 3``), against one process on
the concatenated batch: K = 1 against ``L.BatchNormalization``, K = 3 on an unevenly
split batch whose mixture is unambiguous (rank 0 holds a single cluster); all ranks
end with bitwise-identical mixtures and queues; an unsynchronized MN on the same
split gives another result.  Skipped when mpi4py or mpiexec is missing."""
import mixnorm._compat  # noqa: F401

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import chainer
import chainer.links as L

import mixnorm

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, 'mpi_workers', 'mn_worker.py')
sys.path.insert(0, os.path.join(HERE, 'mpi_workers'))
import mn_worker  # noqa: E402
import mpi_util  # noqa: E402


pytestmark = mpi_util.needs_mpi


def run_worker(tmp_path, P, K):
    out = str(tmp_path / ('P%d_K%d.npz' % (P, K)))
    r = subprocess.run([mpi_util.mpiexec(), '-n', str(P), sys.executable, WORKER, out, str(K)],
                       capture_output=True, text=True, timeout=90, env=mpi_util.env())
    assert r.returncode == 0, r.stdout + r.stderr
    with np.load(out) as f:
        data = dict(f)
    return [{k[len('r%d_' % r):]: v for k, v in data.items() if k.startswith('r%d_' % r)}
            for r in range(P)]


def reference(K, link=None):
    """One process on the whole batch, two steps, the same settings as the worker."""
    if link is None:
        link = mixnorm.MixtureNormalization(4, n_components=K, em_iters=2, dtype=np.float64, seed=1234)
    link.gamma.array[...] = [1.5, 0.5, 1.0, 2.0]
    link.beta.array[...] = [0.1, -0.2, 0.0, 0.3]
    res = {}
    for step in range(2):
        x, gy = mn_worker.global_batch(step)
        link.cleargrads()
        xv = chainer.Variable(x)
        y = link(xv)
        y.grad = gy
        y.backward()
        res.update({'y%d' % step: y.array, 'gx%d' % step: xv.grad,
                    'ggamma%d' % step: link.gamma.grad.copy(),
                    'gbeta%d' % step: link.beta.grad.copy()})
    return res, link


def check_against(ranks, ref, P, atol):
    parts = mn_worker.slices(P)
    for step in range(2):
        for key in ('y', 'gx'):
            got = np.concatenate([ranks[r]['%s%d' % (key, step)] for r in range(P)])
            np.testing.assert_allclose(got, ref['%s%d' % (key, step)], atol=atol,
                                       err_msg='%s step %d' % (key, step))
        for key in ('ggamma', 'gbeta'):     # each rank holds its part of the gradient
            got = sum(ranks[r]['%s%d' % (key, step)] for r in range(P))
            np.testing.assert_allclose(got, ref['%s%d' % (key, step)], atol=atol)
    assert len(set(p.stop - p.start for p in parts)) == P     # unequal local sizes


def check_identical(ranks):
    for r in ranks[1:]:
        for key in ('queue_weights', 'queue_means', 'queue_vars', 'inference', 'seed',
                    'n_fits', 'effective_components'):
            np.testing.assert_array_equal(r[key], ranks[0][key], err_msg=key)


@pytest.mark.parametrize('P', [2, 3])
def test_k1_equals_batch_normalization_of_the_concatenated_batch(tmp_path, P):
    ranks = run_worker(tmp_path, P, 1)
    bn = L.BatchNormalization(4, dtype=np.float64)
    ref, _ = reference(1, bn)
    check_against(ranks, ref, P, atol=1e-9)
    check_identical(ranks)
    # the input checks ride on the forward's moments: two collectives per step, as
    # ChainerMN's synchronized BN
    assert int(ranks[0]['calls']) == 2 * 2


@pytest.mark.parametrize('P', [2, 3])
def test_k3_equals_one_process_on_the_concatenated_batch(tmp_path, P):
    ranks = run_worker(tmp_path, P, 3)
    ref, link = reference(3)
    assert int(ranks[0]['effective_components']) == link.effective_components == 3
    check_against(ranks, ref, P, atol=1e-6)
    check_identical(ranks)
    np.testing.assert_allclose(ranks[0]['queue_means'], link.queue_means, atol=1e-6)
    with chainer.using_config('train', False):
        inf = link(np.random.RandomState(7).randn(30, 4) * 6).array
    np.testing.assert_allclose(ranks[0]['inference'], inf, atol=1e-6)
    # collectives per step: O(K C) numbers each, never O(n C)
    assert int(ranks[0]['calls']) == 2 * 6       # as many as at any K: see test_gmm.py


def test_an_unsynchronized_mn_on_the_same_split_differs(tmp_path):
    ranks = run_worker(tmp_path, 2, 3)
    x, gy = mn_worker.global_batch(0)
    part = mn_worker.slices(2)[0]
    local = mixnorm.MixtureNormalization(4, n_components=3, em_iters=2, dtype=np.float64, seed=1234)
    local.gamma.array[...] = [1.5, 0.5, 1.0, 2.0]
    local.beta.array[...] = [0.1, -0.2, 0.0, 0.3]
    y = local(x[part]).array
    assert local.effective_components == 1          # rank 0 alone sees one cluster
    assert np.abs(y - ranks[0]['y0']).max() > 0.1


def test_import_mixnorm_needs_no_mpi4py():
    code = ('import sys; sys.modules["mpi4py"] = None\n'
            'import mixnorm\n'
            'class Comm: mpi_comm = object()\n'
            'try:\n'
            '    mixnorm.MultiNodeMixtureNormalization(4, Comm())\n'
            'except ImportError as e:\n'
            '    print(e)\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert 'pip install' in r.stdout and 'mpi4py' in r.stdout


# ---------------------------------------------------------------------------
# one rank's bad input: every rank raises the same error, and none hangs
# ---------------------------------------------------------------------------

FAULT_WORKER = os.path.join(HERE, 'mpi_workers', 'link_fault_worker.py')
#: a hang fails the case: far above the few seconds a case takes
FAULT_TIMEOUT = 60

#: case -> what every rank's error says, from where the joint message starts
FAULTS = {
    'nan_k1': ('the input of rank(s) [1] is not finite', 'rank 1: the input contains 1 NaN'),
    'nan_k3': ('the points of rank(s) [1] contain NaN/Inf', 'rank 1: x contains 1 NaN'),
    'nan_outside_fit': ('the points of rank(s) [1] cannot be scored',
                        'rank 1: x contains 1 NaN'),
    'channels': ('the input of rank(s) [1] of 2 fails the checks',
                 "(rank 1 of 2) expects input of shape (N, 4) or (N, 4, ...), got (400, 3)"),
    'int_dtype': ('the input of rank(s) [1] of 2 fails the checks',
                  'expects floating-point input, got int32'),
    'empty': ('the input of rank(s) [1] of 2 fails the checks', 'got an empty batch'),
    'size_none': ('the ranks of a synchronized layer got inputs with different channel '
                  'counts', 'rank 0: 4, rank 1: 3'),
    'overflow_k1': ('the input of rank(s) [1] is not finite',
                    'rank 1: the input is finite but its second moments overflow '
                    'float32 (max |x| = 1e+30)'),
    'overflow_k3': ('the magnitude of x overflows float32 variances',
                    'max |x| is 1e+30 (on rank 1 of 2)'),
}


def run_fault(tmp_path, case, hook, P=2):
    start = time.monotonic()
    r = subprocess.run([mpi_util.mpiexec(), '-n', str(P), sys.executable, FAULT_WORKER,
                        case, hook, str(tmp_path)], capture_output=True, text=True,
                       timeout=FAULT_TIMEOUT, env=mpi_util.env())
    return r, time.monotonic() - start


@pytest.mark.parametrize('case', sorted(FAULTS))
def test_a_bad_input_on_one_rank_raises_the_same_error_on_every_rank(tmp_path, case):
    head, detail = FAULTS[case]
    r, _ = run_fault(tmp_path, case, 'nohook')
    assert r.returncode != 0, r.stdout + r.stderr
    messages = [(tmp_path / ('rank%d.txt' % rank)).read_text() for rank in range(2)]
    for rank, message in enumerate(messages):
        assert message.startswith('ValueError: '), (rank, message)
        assert head in message and detail in message, (rank, message)
    # the same error on every rank, from the joint message on (each rank may prefix it
    # with its own layer label)
    cores = [m[m.index(head):] for m in messages]
    assert cores[0] == cores[1], messages


def hook_stderr(tmp_path, P=2):
    """What each rank wrote to its stderr file in the worker's ``hook`` mode."""
    paths = [tmp_path / ('rank%d.err' % rank) for rank in range(P)]
    return [p.read_text() if p.exists() else '' for p in paths]


@pytest.mark.parametrize('case', sorted(FAULTS))
def test_a_bad_input_on_one_rank_ends_the_job_through_the_crash_hook(tmp_path, case):
    head, detail = FAULTS[case]
    r, seconds = run_fault(tmp_path, case, 'hook')
    assert r.returncode != 0, r.stdout + r.stderr
    # each rank's stderr is its own file (hook_stderr): the rank whose hook aborted the
    # job wrote its whole report there before the abort
    reports = hook_stderr(tmp_path)
    aborted = [t for t in reports if 'Uncaught exception on rank' in t]
    assert aborted, reports
    assert all(head in t and detail in t for t in aborted), reports
    assert not any((tmp_path / ('rank%d.txt' % rank)).exists() for rank in range(2))
    assert seconds < FAULT_TIMEOUT


@pytest.mark.parametrize('hook', ['nohook', 'hook'])
def test_a_bad_input_at_inference_raises_on_its_rank_and_leaves_none_waiting(tmp_path,
                                                                            hook):
    """Inference communicates nothing (ranks may run it a different number of times),
    so the bad rank raises alone and the others finish."""
    r, seconds = run_fault(tmp_path, 'inference_nan', hook)
    assert r.returncode != 0, r.stdout + r.stderr
    says = "(rank 1 of 2) at inference, input (400, 4): x contains 1 NaN value"
    if hook == 'nohook':
        assert (tmp_path / 'rank0.txt').read_text() == 'ok'
        assert says in (tmp_path / 'rank1.txt').read_text()
    else:
        report = hook_stderr(tmp_path)[1]
        assert 'Uncaught exception on rank 1' in report and says in report
    assert seconds < FAULT_TIMEOUT


def test_good_inputs_run_through_every_case_layer(tmp_path):
    """The worker's layers run when no rank's input is bad (the faults are the inputs)."""
    r = subprocess.run([mpi_util.mpiexec(), '-n', '2', sys.executable, '-c',
                        'import sys; sys.argv = ["w", "nan_k3", "nohook", %r]\n'
                        'sys.path.insert(0, %r)\n'
                        'import link_fault_worker as w\n'
                        'w.bad_input = lambda case, link, x, rank, size: x\n'
                        'w.main()' % (str(tmp_path), os.path.dirname(FAULT_WORKER))],
                       capture_output=True, text=True, timeout=FAULT_TIMEOUT,
                       env=mpi_util.env())
    assert r.returncode == 0, r.stdout + r.stderr
    assert [(tmp_path / ('rank%d.txt' % rank)).read_text() for rank in range(2)] == \
        ['ok', 'ok']


# ---------------------------------------------------------------------------
# ChainerMN's synchronized BN, and its model conversion
# ---------------------------------------------------------------------------

def test_one_component_is_chainermns_synchronized_bn_and_models_convert():
    worker = os.path.join(HERE, 'mpi_workers', 'bn_contract_worker.py')
    r = subprocess.run([mpi_util.mpiexec(), '-n', '2', sys.executable, worker],
                       capture_output=True, text=True, timeout=90, env=mpi_util.env())
    assert r.returncode == 0 and r.stdout.split() == ['ok'], r.stdout + r.stderr
