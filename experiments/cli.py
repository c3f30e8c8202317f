"""What every command line of the kit does with errors: :func:`entry_point`.

A user's mistake (a bad config or override, missing or damaged data, a run directory
that cannot be resumed, missing FID weights, a table the paper does not have) ends the
command with ``error: <what and how to fix it>`` on stderr and exit status 1, never a
traceback; Ctrl-C ends it with one line saying where the run stopped (exit status 130).
Anything else is a bug and keeps its traceback.
"""
import functools
import sys


#: This process's rank when a run has several (only rank 0 prints errors).
RANK = 0


def set_rank(rank):
    global RANK
    RANK = rank


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


def entry_point(main):
    """Decorate a command's ``main(argv=None)``: user errors become one ``error:`` line
    and exit status 1 (:class:`SystemExit`), Ctrl-C one line and exit status 130."""
    @functools.wraps(main)
    def wrapped(argv=None):
        try:
            return main(argv)
        except KeyboardInterrupt as e:
            if RANK == 0:
                print(str(e) or 'interrupted', file=sys.stderr)
            raise SystemExit(130) from None
        except Exception as e:
            if not isinstance(e, user_errors()):
                raise
            raise SystemExit('error: %s' % e if RANK == 0 else 1) from None
    return wrapped
