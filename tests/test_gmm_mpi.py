"""fit_gmm over MPI ranks (mixnorm._collectives.MPIReducer), run with mpiexec.

Runs ``tests/mpi_workers/gmm_worker.py`` under ``mpiexec -n 2`` and ``-n 3`` (the
``mpiexec`` of this interpreter's environment, as ``pip install mpi4py mpich`` puts it)
and checks what the ranks wrote: the same mixture bitwise on every rank, equal to the
single-process fit of the concatenated points, different from a fit of a rank's own
points, in 4 collectives at K = 3, "EM iter." 2.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import mpi_util
from mixnorm import gmm as G
from mpi_util import needs_mpi

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, 'mpi_workers', 'gmm_worker.py')


def _worker_module():
    spec = importlib.util.spec_from_file_location('gmm_worker', WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(size, out_dir):
    proc = subprocess.run([mpi_util.mpiexec(), '-n', str(size), sys.executable, WORKER,
                           str(out_dir)], capture_output=True, text=True, timeout=60,
                          env=mpi_util.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [dict(np.load(os.path.join(out_dir, 'rank%d.npz' % r))) for r in range(size)]


@needs_mpi
@pytest.mark.parametrize('size', [2, 3])
def test_ranks_fit_the_union_to_one_mixture(size, tmp_path):
    worker = _worker_module()
    ranks = _run(size, tmp_path)
    parts = worker.split(worker.make_data(), size)
    assert [int(r['n_points']) for r in ranks] == [len(p) for p in parts]

    # every rank holds the same mixture, bitwise
    for r in ranks[1:]:
        for name in ('weights', 'means', 'variances'):
            np.testing.assert_array_equal(r[name], ranks[0][name])

    # ... that of one process fitting the concatenated points with the same seed
    ref, nu_ref = G.fit_gmm(np.concatenate(parts), worker.K, worker.KMEANS_ITERS,
                            worker.EM_ITERS, seed=worker.SEED, return_responsibilities=True)
    assert ref.n_components == 3
    np.testing.assert_allclose(ranks[0]['weights'], ref.weights, rtol=1e-12)
    np.testing.assert_allclose(ranks[0]['means'], ref.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ranks[0]['variances'], ref.variances, rtol=1e-10)
    np.testing.assert_allclose(np.concatenate([r['nu'] for r in ranks]), nu_ref, atol=1e-10)
    # the true cluster sizes 400, 250, 150
    np.testing.assert_allclose(ranks[0]['weights'], [0.5, 0.3125, 0.1875], atol=1e-6)

    # a rank fitting only its own points gets another mixture (rank 0: one cluster)
    assert not np.allclose(ranks[0]['local_means'], ref.means, atol=0.5)

    # the cost: 2 + kmeans_iters + em_iters collectives, whatever K: each rank
    # contributes to the frame (d+4), its share of the seeding subsample (rows of d+1,
    # padded to the largest share: between m / P and m rows), and per pass the moments
    # (K, 2d+2); none grows with the number of points
    K, d, m = worker.K, 4, G.seeding_points(worker.K)
    assert sum(len(p) for p in parts) > m
    passes = (d + 4) + (worker.KMEANS_ITERS + worker.EM_ITERS) * K * (2 * d + 2)
    for r in ranks:
        assert int(r['reductions']) == 4
        share, rest = divmod(int(r['numbers']) - passes, d + 1)
        assert rest == 0 and m / size <= share <= m, share

    # NaN on rank 1 is reported on every rank (none is left waiting)
    assert 'x contains 1 NaN value' in str(ranks[1]['nan_error'])
    for rank, r in enumerate(ranks):
        if rank != 1:
            assert 'rank(s) [1] contain NaN/Inf' in str(r['nan_error'])


def test_reducer_without_mpi4py_names_the_install_command(monkeypatch):
    import builtins
    from mixnorm import _collectives
    real_import = builtins.__import__

    def no_mpi4py(name, *args, **kwargs):
        if name.startswith('mpi4py'):
            raise ImportError('No module named %r' % name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', no_mpi4py)
    with pytest.raises(ImportError, match=r'pip install mixnorm\[distributed\].*'
                                          r'pip install mpi4py mpich'):
        _collectives.MPIReducer()
