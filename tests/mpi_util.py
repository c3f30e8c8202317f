"""What the MPI tests share: the ``mpiexec`` of this interpreter's environment (as
``pip install mpi4py mpich`` puts it; else the one on the PATH), the skip when MPI is
missing, and the environment of the processes (one BLAS thread each, so that P
processes do not oversubscribe the cores)."""
import importlib.util
import os
import shutil
import sys

import pytest


def mpiexec():
    local = os.path.join(os.path.dirname(sys.executable), 'mpiexec')
    return local if os.access(local, os.X_OK) else shutil.which('mpiexec')


def skip_reason():
    if importlib.util.find_spec('mpi4py') is None:
        return 'mpi4py is not installed (pip install mpi4py mpich)'
    if mpiexec() is None:
        return 'no mpiexec next to %s or on the PATH (pip install mpich)' % sys.executable
    return None


needs_mpi = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


def env():
    return dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1')
