"""What every command line of the kit does with errors: :func:`entry_point`.

A user's mistake (a bad config or override, missing or damaged data, a run directory
that cannot be resumed or written, a full disk, missing FID weights, a table the paper
does not have) ends the command with ``error: <what and how to fix it>`` on stderr and
exit status 1, never a traceback; Ctrl-C ends it with one line saying where the run
stopped (exit status 130).  Anything else is a bug and keeps its traceback.

Under ``mpiexec -n P > 1`` a failure on any process ends every process, and one of them
prints it, naming itself (``error: rank <r>: ...``).  A failure the processes agreed on
(:class:`mixnorm._collectives.AgreedError`, see :mod:`experiments.parallel`) is raised
by every process: the rank it names prints it and they all exit.  Any other failure is
printed by the process that raised it, which then exits at once: ``mpiexec`` ends the
others.  (A Ctrl-C to ``mpiexec`` reaches every process, so two of them may each say
where they stopped.)
"""
import errno
import functools
import os
import sys
import traceback
import warnings


class UsageError(Exception):
    """A command asked for something that does not exist (a step, a table)."""


def user_errors():
    """The exception types that mean a user's mistake rather than a bug."""
    from experiments import config, data, rundir
    errors = [UsageError, config.ConfigError, data.DataError, rundir.RunError,
              FileNotFoundError,
              IsADirectoryError, NotADirectoryError, PermissionError]
    try:
        from experiments import fid
        errors.append(fid.FIDWeightsError)
    except ImportError:          # FID's dependencies missing: nothing of it can fail
        pass
    return tuple(errors)


def is_user_error(e):
    """Whether ``e`` is a user's mistake (:func:`user_errors`, or a full or read-only
    disk) rather than a bug."""
    return isinstance(e, user_errors()) or (isinstance(e, OSError) and e.errno in (
        errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM))


def describe(e):
    """The text of user error ``e``; a full or read-only disk says what to do."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ('%s: free some space (or train into --out on another disk) and run the '
                'same command again: it resumes from the newest complete snapshot' % e)
    if isinstance(e, OSError) and e.errno == errno.EROFS:
        return ('%s: make the run directory writable (or train into --out elsewhere) and '
                'run the same command again: it resumes from the newest complete snapshot'
                % e)
    return str(e)


def entry_point(main):
    """Decorate a command's ``main(argv=None)``: user errors become one ``error:`` line
    and exit status 1 (:class:`SystemExit`), Ctrl-C one line and exit status 130, bugs
    keep their traceback (:func:`leave`).  Under ``mpiexec`` MPI starts first, so that
    from then on a process that exits makes ``mpiexec`` end the others."""
    @functools.wraps(main)
    def wrapped(argv=None):
        warnings.formatwarning = format_warning
        from experiments import parallel
        rank, size = parallel.launched_world()
        if size > 1:
            try:
                from mpi4py import MPI  # noqa: F401  (initializes MPI)
            except ImportError:
                pass
        try:
            return main(argv)
        except (Exception, KeyboardInterrupt) as e:
            leave(e, rank, size)
    return wrapped


_KIT_DIR = os.path.dirname(os.path.abspath(__file__))
_format_warning = warnings.formatwarning


def format_warning(message, category, filename, lineno, line=None):
    """The kit's own warnings (a data source used instead of --data-dir, a snapshot
    fallen back from) as one ``warning:`` line; other packages' keep Python's form."""
    if os.path.abspath(filename).startswith(_KIT_DIR + os.sep):
        return 'warning: %s\n' % message
    return _format_warning(message, category, filename, lineno, line)


def leave(error, rank, size):
    """End the command after ``error``: print it (:func:`say`) and exit with status 130
    (Ctrl-C) or 1; a bug of a single process keeps Python's traceback.

    With several processes: an error with an :class:`AgreedError` in its chain of causes
    was raised by every process; the rank that error names prints it and every process
    exits.  Any other was raised by this process alone, while the others may wait for
    it in a collective: it prints it and exits at once, without Python's clean-up (which
    would wait for them too), and ``mpiexec`` ends the others."""
    status = 130 if isinstance(error, KeyboardInterrupt) else 1
    if size <= 1:
        if isinstance(error, KeyboardInterrupt):
            print(str(error) or 'interrupted', file=sys.stderr)
            raise SystemExit(status) from None
        if is_user_error(error):
            raise SystemExit('error: %s' % describe(error)) from None
        raise error
    from mixnorm._collectives import AgreedError
    agreed = error
    while agreed is not None and not isinstance(agreed, AgreedError):
        agreed = agreed.__cause__
    if error is agreed:         # it stands for the failure it agreed on
        error = error.__cause__ or error
    if agreed is None or agreed.rank == rank:
        sys.stderr.write(say(error, rank, size))
        sys.stderr.flush()
    if agreed is not None:
        raise SystemExit(status) from None
    sys.stdout.flush()
    os._exit(status)


def say(error, rank, size):
    """What process ``rank`` of ``size`` prints for ``error``: ``rank 1: interrupted
    ...``, ``error: rank 1: ...`` or, for a bug, ``rank 1 of 2: a bug`` and the
    traceback."""
    if isinstance(error, KeyboardInterrupt):
        return 'rank %d: %s\n' % (rank, str(error) or 'interrupted')
    if is_user_error(error):
        return 'error: rank %d: %s\n' % (rank, describe(error))
    return 'rank %d of %d: a bug; the traceback follows\n%s' % (
        rank, size, ''.join(traceback.format_exception(type(error), error,
                                                       error.__traceback__)))
