"""Reducers over MPI ranks for fitting one mixture to the points of several processes.

:func:`mixnorm.gmm.fit_gmm` takes a ``reducer``: ``size``, ``rank`` and ``sum(a)``, the
float64 array ``a`` summed over the ranks with the same bits on every rank.
:class:`MPIReducer` implements it with mpi4py.  mpi4py is imported only when a reducer
is built, so ``import mixnorm`` works without it.
"""
import numpy

INSTALL_HINT = ('pip install mixnorm[distributed]  (or: pip install mpi4py mpich, an '
                'MPI from the package registry; on a cluster, mpi4py built against the '
                'system MPI)')


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError('MPIReducer needs mpi4py and an MPI library: %s' % INSTALL_HINT) \
            from e
    return MPI


class MPIReducer:
    """``sum`` over the ranks of an MPI communicator, bitwise identical on every rank.

    ``comm``: an ``mpi4py.MPI.Comm``, a ChainerMN communicator (its ``mpi_comm`` is
    used), or None for ``MPI.COMM_WORLD``.  ``sum(a)`` gathers every rank's ``a``
    (``Allgather`` of float64 buffers) and adds them in rank order, so every rank
    computes the same floating-point sum (an ``Allreduce`` may add in an order that
    depends on the rank).  Costs one collective of P * a.size numbers; the fit's buffers
    are O(K d) numbers.
    """

    def __init__(self, comm=None):
        MPI = _mpi()
        comm = getattr(comm, 'mpi_comm', comm)
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.size = self.comm.Get_size()
        self.rank = self.comm.Get_rank()

    def sum(self, a):
        a = numpy.ascontiguousarray(a, dtype=numpy.float64)
        parts = numpy.empty((self.size,) + a.shape, dtype=numpy.float64)
        self.comm.Allgather(a, parts)
        total = parts[0].copy()
        for part in parts[1:]:
            total += part
        return total
