"""Reducers: the collectives of synchronized MN over a group of processes (ranks).

:func:`mixnorm.gmm.fit_gmm` and :func:`mixnorm.functions.mixture_normalization` take a
``reducer``: an object with ``size`` (the number of ranks), ``rank`` (this one's),
``allgather(a)`` (every rank's float64 array ``a`` stacked in rank order, (P, *shape))
and ``sum(a)`` (``a`` summed over the ranks).  Both give **bitwise the same numbers on
every rank**: ``sum`` gathers and adds in rank order, since an MPI all-reduce may add
in an order that depends on the rank.  Each collective is counted (``calls``, and the
``bytes_sent``/``bytes_received`` of this rank).

Failing together.  A rank that raised alone would leave the others waiting in their
next collective, so every check whose outcome may differ between ranks is decided
collectively: :func:`raise_together` (on failure paths, with any reducer) and
:class:`StepReducer` (whose first collective of a layer call also carries every rank's
verdict on its input) make every rank raise the same error, naming the ranks that
failed (:func:`joint_error`).

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

    def reset_counts(self):
        self.calls = self.bytes_sent = self.bytes_received = 0

    def allgather(self, a):
        a = numpy.ascontiguousarray(a, dtype=numpy.float64)
        out = self._allgather(a)
        self.calls += 1
        self.bytes_sent += a.nbytes
        self.bytes_received += out.nbytes
        return out

    def allgather_objects(self, obj, nbytes=0):
        """Every rank's picklable ``obj`` in rank order (a list; one collective whatever
        the sizes), counted as ``nbytes`` sent by each rank."""
        out = self._allgather_objects(obj)
        self.calls += 1
        self.bytes_sent += nbytes
        self.bytes_received += nbytes * len(out)
        return out

    def sum(self, a):
        """``a`` summed over the ranks in rank order (the same bits on every rank)."""
        return _rank_order_sum(self.allgather(a))


def _rank_order_sum(parts):
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


def _kind(error):
    """The built-in class every rank raises for ``error``."""
    for cls in (ValueError, TypeError, RuntimeError):
        if isinstance(error, cls):
            return cls.__name__
    return 'RuntimeError'


_KINDS = {'ValueError': ValueError, 'TypeError': TypeError, 'RuntimeError': RuntimeError}


def joint_error(failures, size, what=None):
    """The exception every rank raises when the ranks of ``failures`` (a list of
    ``(rank, kind, message)``, rank order) failed: ``what`` (a phrase in which
    ``{ranks}`` names the failed ranks) then each failed rank's own message, of the
    class of the first one's error (``ValueError``, ``TypeError`` or
    ``RuntimeError``)."""
    ranks = [rank for rank, _, _ in failures]
    head = (what or 'rank(s) {ranks} of %d failed' % size).format(ranks=ranks)
    body = '; '.join('rank %d: %s' % (rank, message) for rank, _, message in failures)
    return _KINDS.get(failures[0][1], RuntimeError)('%s: %s' % (head, body))


def raise_together(reducer, error, what=None):
    """Raise the same error on every rank if any rank has one (collective).

    Every rank passes its own exception, or None.  The messages travel as float64 codes
    through the reducer's ``allgather`` (so any reducer will do): one collective when
    no rank failed (then it returns None), two when some did; then every rank raises
    :func:`joint_error` of those ranks.  Meant for failure paths, where a rank that
    raised alone would leave the others waiting in their next collective.
    """
    text = '' if error is None else '%s\n%s' % (_kind(error), error)
    data = numpy.frombuffer(text.encode('utf-8'), dtype=numpy.uint8)
    lengths = reducer.allgather([float(data.size)])[:, 0].astype(numpy.int64)
    if not lengths.any():
        return None
    buf = numpy.zeros(int(lengths.max()))
    buf[:data.size] = data
    codes = reducer.allgather(buf)
    failures = []
    for rank, (row, m) in enumerate(zip(codes, lengths)):
        if m:
            kind, message = row[:m].astype(numpy.uint8).tobytes().decode(
                'utf-8', 'replace').split('\n', 1)
            failures.append((rank, kind, message))
    raise joint_error(failures, reducer.size, what)


class LocalReducer(_Reducer):
    """The reducer of a single process (``size`` 1, ``rank`` 0): ``fit_gmm(x, K,
    reducer=LocalReducer())`` equals ``fit_gmm(x, K)``."""

    def _allgather(self, a):
        return a[None].copy()

    def _allgather_objects(self, obj):
        return [obj]


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

    def _allgather_objects(self, obj):
        return self.comm.allgather(obj)


class StepReducer:
    """The collectives of one call of a synchronized layer, whose first collective also
    settles, on every rank at once, whether every rank's input passed its checks.

    ``reducer``: the layer's reducer; ``error``: this rank's verdict on its input (an
    exception, or None); ``channels``: its channel count, which must be the same on
    every rank.  The first :meth:`allgather` (wherever the layer's math makes it)
    exchanges every rank's verdict with its payload in one all-gather of objects, so
    that a rank that failed, and contributes no payload, takes part in the same
    collective; if any rank failed, every rank raises the same error
    (:func:`joint_error`), naming the ranks.  Later collectives pass through.  A rank
    with no collective of its own to make (its input failed before it got to one)
    calls :meth:`settle` instead.  Counts go to ``reducer``.
    """

    def __init__(self, reducer, error=None, channels=None):
        self.reducer, self.error, self.channels = reducer, error, channels
        self.size, self.rank = reducer.size, reducer.rank
        self.pending = True

    def allgather(self, a):
        if not self.pending:
            return self.reducer.allgather(a)
        a = numpy.ascontiguousarray(a, dtype=numpy.float64)
        rows = self._exchange(a)
        return numpy.stack([payload for _, _, payload in rows])

    def sum(self, a):
        return _rank_order_sum(self.allgather(a))

    def settle(self, error=None):
        """Take part in the first collective if it is still to come, with ``error`` (this
        rank's failure, or None) added to the verdict; raises as :meth:`allgather`."""
        if error is not None and self.error is None:
            self.error = error
        if self.pending:
            self._exchange(None)

    def _exchange(self, payload):
        self.pending = False
        verdict = None if self.error is None else (_kind(self.error), str(self.error))
        rows = self.reducer.allgather_objects(
            (verdict, self.channels, payload),
            nbytes=0 if payload is None else payload.nbytes)
        failures = [(rank,) + tuple(verdict) for rank, (verdict, _, _) in enumerate(rows)
                    if verdict is not None]
        if failures:
            raise joint_error(failures, self.size,
                              'the input of rank(s) {ranks} of %d fails the checks of '
                              'the synchronized layer' % self.size)
        channels = [c for _, c, _ in rows]
        if len(set(channels)) > 1:
            raise ValueError(
                'the ranks of a synchronized layer got inputs with different channel '
                'counts (%s): every rank must pass the same number of channels'
                % ', '.join('rank %d: %s' % (rank, c) for rank, c in enumerate(channels)))
        return rows
