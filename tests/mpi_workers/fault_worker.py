"""A command whose process ``RANK`` fails in a chosen way while the others wait in a
collective (run by tests/test_faults.py under mpiexec).

    mpiexec -n P python tests/mpi_workers/fault_worker.py MODE RANK

MODE: ``user`` (a user's mistake inside training, where the others wait in a
collective), ``bug`` (an exception that is no user error, there), ``local`` (a user's
mistake in a step every process takes alone, agreed on afterwards), ``everywhere``
(every process raises the same user error outside any agreement; RANK ignored),
``sigint`` (Ctrl-C to that process alone), ``early`` (Ctrl-C to that process before it
initialized MPI, while the others wait for it in ``MPI_Init``), ``fullsnapshot`` (the
trainer's snapshot extension, :meth:`experiments.parallel.Parallel.snapshot`, finds the
disk full on every process: on that one first, on the others
2 x :data:`experiments.cli.GRACE_S` later).  It goes through
:func:`experiments.cli.entry_point`, as every command of the kit does.
"""
import errno
import os
import signal
import sys
import time
import types

import mixnorm._compat  # noqa: F401

import chainer

from experiments import cli, parallel, records


@cli.entry_point
def main(argv=None):
    mode, rank = sys.argv[1], int(sys.argv[2])
    if mode == 'early' and parallel.launched_world()[0] == rank:
        raise KeyboardInterrupt
    par = parallel.create('naive')
    me = par.rank == rank
    if mode == 'local':
        par.together(lambda: _fail(me, records.RunError('the data of rank %d is missing'
                                                        % par.rank)))
    elif mode == 'fullsnapshot':
        snapshot = par.snapshot('snapshot_epoch_6', target=chainer.Link(),
                                writer=FullDisk(0 if me else 2 * cli.GRACE_S))
        snapshot(types.SimpleNamespace(out='.'))
    elif mode == 'everywhere':
        raise records.RunError('the same mistake on every process')
    elif me and mode == 'user':
        raise records.RunError('snapshot_epoch_6.rank%d cannot be written' % par.rank)
    elif me and mode == 'bug':
        raise ZeroDivisionError('a bug on rank %d' % par.rank)
    elif me and mode == 'sigint':
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    par.barrier()                   # the others wait here, as in an all-reduce
    print('rank %d got past the failure' % par.rank, flush=True)


class FullDisk:
    """A snapshot writer that finds the disk full after ``delay`` seconds."""

    def __init__(self, delay):
        self.delay = delay

    def __call__(self, filename, outdir, target):
        time.sleep(self.delay)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)


def _fail(yes, error):
    if yes:
        raise error


if __name__ == '__main__':
    main()
