"""Reducers: the collectives of synchronized MN over a group of processes (ranks).

:func:`mixnorm.gmm.fit_gmm` and :func:`mixnorm.functions.mixture_normalization` take a
``reducer``: an object with ``size`` (the number of ranks), ``rank`` (this one's),
``allgather(a)`` (every rank's float64 array ``a`` stacked in rank order, (P, *shape))
and ``sum(a)`` (``a`` summed over the ranks).  Both give **bitwise the same numbers on
every rank**: ``sum`` gathers and adds in rank order, since an MPI all-reduce may add
in an order that depends on the rank.  Each collective is counted (``calls``, and the
``bytes_sent``/``bytes_received`` of this rank).

Failing together.  A rank that raised alone would leave the others waiting in their
next collective, so every check whose outcome may differ between ranks runs inside
:func:`agree`: each rank runs the check, one collective tells every rank how it went
on all of them, and if it failed anywhere every rank raises the same
:class:`AgreedError`, naming the ranks that failed.

:class:`LocalReducer` is the group of one process; :class:`MPIReducer` wraps an
mpi4py communicator.  mpi4py is imported only when an :class:`MPIReducer` is built,
so ``import mixnorm`` works without it.
"""
import numpy

INSTALL_HINT = ('pip install mixnorm[distributed]  (or: pip install mpi4py mpich, an '
                'MPI from the package registry; on a cluster, mpi4py built against the '
                'system MPI)')


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError('the synchronized MixtureNormalization needs mpi4py and an MPI '
                          'library: %s' % INSTALL_HINT) from e
    return MPI


class _Reducer:
    """Counting and ``sum`` on top of ``allgather``."""
    size = 1
    rank = 0

    def __init__(self):
        self.reset_counts()

    _pending = None     # a check that rides on the next collective (agree_on_next)
    agreed = None       # the AgreedError that check raised

    def reset_counts(self):
        self.calls = self.bytes_sent = self.bytes_received = 0

    def _counted(self, a):
        out = self._allgather(a)
        self.calls += 1
        self.bytes_sent += a.nbytes
        self.bytes_received += out.nbytes
        return out

    def allgather(self, a):
        a = numpy.ascontiguousarray(a, dtype=numpy.float64)
        pending, self._pending = self._pending, None
        if pending is None:
            return self._counted(a)
        data, what, error = pending
        out = self._counted(numpy.concatenate([[float(data.size)], a.ravel()]))
        lengths = out[:, 0].astype(numpy.int64)
        if lengths.any():
            try:
                _raise_agreed(self, data, lengths, what, error)
            except AgreedError as e:
                self.agreed = e
                raise
        return out[:, 1:].reshape((self.size,) + a.shape)

    def drop_pending(self):
        """Forget a check of :func:`agree_on_next` that no collective carried."""
        self._pending = None

    def sum(self, a):
        """``a`` summed over the ranks in rank order (the same bits on every rank)."""
        return _rank_order_sum(self.allgather(a))


def _rank_order_sum(parts):
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


class AgreedError(ValueError):
    """What every rank raises when :func:`agree` found that its step failed on some rank.

    ``rank`` is the lowest rank on which it failed: that rank alone reports it (the
    others leave quietly).  On a rank where the step failed, ``__cause__`` is this
    rank's own exception; the message names every failed rank with its error's text.
    A ``ValueError``, as the checks the library agrees on are."""

    def __init__(self, message, rank):
        super().__init__(message)
        self.rank = rank

    def __reduce__(self):
        return type(self), (self.args[0], self.rank)


def agree(reducer, fn, what=None):
    """``fn()`` on every rank, then agree on how it went (collective): ``fn``'s result
    when it raised on no rank, else the same :class:`AgreedError` on every rank.

    Each rank all-gathers the text of its failure (or nothing) as float64 codes
    through ``reducer.allgather``, so any reducer will do: one collective when no rank
    failed, two when some did.  ``what``: the error's opening phrase, in which
    ``{ranks}`` names the failed ranks; every failed rank's text follows
    (``rank 1: ...``).  ``fn`` may make collectives of its own, as long as every rank
    makes the same ones before it can raise.
    """
    try:
        result, error = fn(), None
    except Exception as e:
        result, error = None, e
    data = _error_codes(error)
    lengths = reducer.allgather([float(data.size)])[:, 0].astype(numpy.int64)
    if not lengths.any():
        return result
    _raise_agreed(reducer, data, lengths, what, error)


def agree_on_next(reducer, error, what=None):
    """:func:`agree` on ``error`` (this rank's outcome of a check: an exception or None)
    without a collective of its own: the agreement rides on the reducer's next
    collective (one number more in its buffer).  If ``error`` is not None on some rank,
    that collective raises the same :class:`AgreedError` on every rank (one more
    collective brings the texts), and ``reducer.agreed`` holds it.  Every rank must make
    that next collective with a buffer of the same size: a rank whose check failed
    still has to reach it (e.g. with a stand-in input of the right shape)."""
    reducer.agreed = None
    reducer._pending = (_error_codes(error), what, error)


def _error_codes(error):
    """The text of ``error`` (or nothing for None) as uint8 codes."""
    return numpy.frombuffer(('' if error is None else str(error) or type(error).__name__)
                            .encode('utf-8'), dtype=numpy.uint8)


def _raise_agreed(reducer, data, lengths, what, error):
    """Gather the failed ranks' texts (one collective) and raise the AgreedError."""
    buf = numpy.zeros(int(lengths.max()))
    buf[:data.size] = data
    codes = reducer.allgather(buf)
    failed = [(rank, row[:m].astype(numpy.uint8).tobytes().decode('utf-8', 'replace'))
              for rank, (row, m) in enumerate(zip(codes, lengths)) if m]
    head = (what or 'rank(s) {ranks} of %d failed' % reducer.size).format(
        ranks=[rank for rank, _ in failed])
    raise AgreedError('%s: %s' % (head, '; '.join('rank %d: %s' % f for f in failed)),
                      failed[0][0]) from error


class LocalReducer(_Reducer):
    """The reducer of a single process (``size`` 1, ``rank`` 0): ``fit_gmm(x, K,
    reducer=LocalReducer())`` equals ``fit_gmm(x, K)``."""

    def _allgather(self, a):
        return a[None].copy()


class MPIReducer(_Reducer):
    """Collectives over an MPI communicator: ``comm`` an ``mpi4py.MPI.Comm``, a
    ChainerMN communicator (its ``mpi_comm``), or None for ``MPI.COMM_WORLD``.  One
    ``Allgather`` of float64 buffers per collective (P * a.size numbers received)."""

    def __init__(self, comm=None):
        MPI = _mpi()
        super().__init__()
        comm = getattr(comm, 'mpi_comm', comm)
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.size = self.comm.Get_size()
        self.rank = self.comm.Get_rank()

    def _allgather(self, a):
        out = numpy.empty((self.size,) + a.shape, dtype=numpy.float64)
        self.comm.Allgather(a, out)
        return out
