"""A command whose process ``RANK`` fails in a chosen way while the others wait in a
collective (run by tests/test_faults.py under mpiexec).

    mpiexec -n P python tests/mpi_workers/fault_worker.py MODE RANK

MODE: ``user`` (a user's mistake inside training, where the others wait in a
collective), ``bug`` (an exception that is no user error, there), ``local`` (a user's
mistake in a step every process takes alone, agreed on afterwards), ``everywhere``
(every process makes the same mistake in such a step; RANK ignored), ``sigint``
(Ctrl-C to that process alone, while the others wait in a collective), ``early``
(Ctrl-C to that process before the communicator exists), ``fullsnapshot`` (the
trainer's snapshot extension, :meth:`experiments.parallel.Parallel.snapshot`, finds the
disk full on every process: on that one first, on the others a second later).  It
goes through :func:`experiments.cli.entry_point`, as every command of the kit does.
"""
import errno
import os
import signal
import sys
import time
import types

import mixnorm._compat  # noqa: F401

import chainer

from experiments import cli, parallel, rundir


@cli.entry_point
def main(argv=None):
    mode, rank = sys.argv[1], int(sys.argv[2])
    if mode == 'early' and parallel.launched_world()[0] == rank:
        _interrupt()
    par = parallel.create('naive')
    me = par.rank == rank
    if mode == 'local':
        par.agree(lambda: _fail(me, rundir.RunError('the data of rank %d is missing'
                                                     % par.rank)))
    elif mode == 'fullsnapshot':
        snapshot = par.snapshot('snapshot_epoch_6', target=chainer.Link(),
                                writer=FullDisk(0 if me else 1.0))
        snapshot(types.SimpleNamespace(out='.'))
    elif mode == 'everywhere':
        par.agree(lambda: _fail(True, rundir.RunError('the same mistake on every process')))
    elif me and mode == 'user':
        raise rundir.RunError('snapshot_epoch_6.rank%d cannot be written' % par.rank)
    elif me and mode == 'bug':
        raise ZeroDivisionError('a bug on rank %d' % par.rank)
    elif me and mode == 'sigint':
        _interrupt()
    par.barrier()                   # the others wait here, as in an all-reduce
    print('rank %d got past the failure' % par.rank, flush=True)


class FullDisk:
    """A snapshot writer that finds the disk full after ``delay`` seconds."""

    def __init__(self, delay):
        self.delay = delay

    def __call__(self, filename, outdir, target):
        time.sleep(self.delay)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


def _interrupt():
    """Ctrl-C to this process alone."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)


def _fail(yes, error):
    if yes:
        raise error


if __name__ == '__main__':
    main()
