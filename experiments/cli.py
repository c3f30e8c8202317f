"""What every command line of the kit does with errors: :func:`entry_point`.

A user's mistake (a bad config or override, missing or damaged data, a run directory
that cannot be resumed or written, a full disk, missing FID weights, a table the paper
does not have) ends the command with ``error: <what and how to fix it>`` on stderr and
exit status 1, never a traceback; Ctrl-C ends it with one line saying where the run
stopped (exit status 130).  Anything else is a bug and keeps its traceback.

Under ``mpiexec -n P > 1`` a failure on any process ends every process at once: the
error is printed once, by the process that saw it, as ``error: rank <r>: ...``.  An
error that every process raised at the same step (agreed collectively, see
:mod:`experiments.parallel`) ends them together with the same status; any other one,
raised where the other processes may be waiting in a collective, ends the job with
``MPI_Abort``.  Processes other than rank 0 wait :data:`GRACE_S` before printing and
aborting, so that a failure seen by every process at nearly the same moment (Ctrl-C to
``mpiexec``) is reported by rank 0 alone.  (A full disk is agreed on at each snapshot,
however far apart the processes' writes fail: ``Parallel.snapshot``.)
"""
import errno
import functools
import os
import signal
import sys
import time
import traceback
import warnings

#: Seconds a process other than rank 0 waits before it reports a failure of its own and
#: aborts the job (rank 0, seeing the same failure, aborts the job first).
GRACE_S = 1.0
#: Seconds between printing a failure and aborting the job, for the launcher to forward
#: the text (an abort can cut off what it has not yet read from the process).
FORWARD_S = 0.5
#: Errors of the operating system that are the user's to fix (disk full, read-only).
USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class UsageError(Exception):
    """A command asked for something that does not exist (a step, a table)."""


def user_errors():
    """The exception types that mean a user's mistake rather than a bug."""
    from experiments import config, data, records
    errors = [UsageError, config.ConfigError, data.DataError, records.RunError,
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
    return isinstance(e, user_errors()) or (isinstance(e, OSError)
                                            and e.errno in USER_ERRNOS)


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


def with_rank(line, rank, size):
    """``line`` naming the process that prints it when there are several:
    ``error: rank 1: ...`` / ``rank 1: interrupted ...``."""
    if size <= 1:
        return line
    if line.startswith('error: '):
        return 'error: rank %d: %s' % (rank, line[len('error: '):])
    return 'rank %d: %s' % (rank, line)


def entry_point(main):
    """Decorate a command's ``main(argv=None)``: user errors become one ``error:`` line
    and exit status 1 (:class:`SystemExit`), Ctrl-C one line and exit status 130; under
    ``mpiexec`` every process ends (:func:`leave`)."""
    @functools.wraps(main)
    def wrapped(argv=None):
        warnings.formatwarning = format_warning
        try:
            return main(argv)
        except KeyboardInterrupt as e:
            leave(e, str(e) or 'interrupted', 130)
        except Exception as e:
            leave(e, 'error: %s' % describe(e) if is_user_error(e) else None, 1)
    return wrapped


_KIT_DIR = os.path.dirname(os.path.abspath(__file__))
_format_warning = warnings.formatwarning


def format_warning(message, category, filename, lineno, line=None):
    """The kit's own warnings (a data source used instead of --data-dir, a snapshot
    fallen back from) as one ``warning:`` line; other packages' keep Python's form."""
    if os.path.abspath(filename).startswith(_KIT_DIR + os.sep):
        return 'warning: %s\n' % message
    return _format_warning(message, category, filename, lineno, line)


def leave(error, line, status):
    """End this process after ``error`` (being handled): print ``line`` (None: the
    traceback of a bug) once for the job and exit with ``status``; with several
    processes, make every process end."""
    from experiments import parallel
    rank, size = parallel.launched_world()
    if size <= 1:
        if line is None:
            raise error
        if status == 1:
            raise SystemExit(line) from None
        print(line, file=sys.stderr)
        raise SystemExit(status) from None
    if getattr(error, 'raised_alike', False):       # every process leaves at this step
        if error.speaks:
            report(error, line, rank, size)
        raise SystemExit(status) from None
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a second Ctrl-C: abort all the same
    if rank != 0:
        time.sleep(GRACE_S)
    report(error, line, rank, size)
    time.sleep(FORWARD_S)
    parallel.abort(status)


def report(error, line, rank, size):
    """Print ``line`` (None: the traceback of a bug) for this process, in one write, so
    that the launcher forwards it whole before an abort."""
    if line is None:
        text = 'rank %d of %d: a bug; the traceback follows\n%s' % (
            rank, size, ''.join(traceback.format_exception(type(error), error,
                                                           error.__traceback__)))
    else:
        text = with_rank(line, rank, size) + '\n'
    sys.stderr.write(text)
    sys.stderr.flush()
