"""One process or P: the data-parallel pieces of a run, on ChainerMN.

:func:`create` returns a :class:`Parallel` for a ChainerMN communicator name
(``naive`` on CPUs, ``pure_nccl`` on GPUs, ...) or, for None, the single process,
which is the P = 1 case of the same code: every method is then the identity.  Under
``mpiexec -n P``:

* the config's ``data.batch_size`` stays the global batch (the paper's); each process
  takes ``batch_size / P`` (:meth:`Parallel.per_rank_batch_size`, an error when P does
  not divide it);
* the training and test sets are split into P equal shards
  (``chainermn.scatter_index``: every process loads the data itself, nothing is sent);
* normalization is synchronized by default (``train.sync_normalization``): BN becomes
  ``chainermn.links.MultiNodeBatchNormalization`` and MN
  :class:`mixnorm.MultiNodeMixtureNormalization`, so that P processes normalize over
  the same global batch as the paper's single GPU;
* the optimizer and the evaluator are ChainerMN's multi-node ones;
* on GPUs process r uses device ``comm.intra_rank``;
* rank 0 writes the run directory; every process keeps its own snapshot
  (``snapshot_epoch_<e>`` on rank 0, ``snapshot_epoch_<e>.rank<r>`` on the others:
  each holds its shard's iterator and augmentation state), so that a resumed run
  continues where it stopped; the processes agree after each snapshot
  (:meth:`Parallel.snapshot`).

A failure on one process ends every process (:func:`experiments.cli.entry_point` prints
it once).  A step that every process runs alone (loading the config and the data,
writing its snapshot) is agreed on afterwards (:meth:`Parallel.agree`,
:func:`mixnorm._collectives.agree`): if it failed anywhere, every process raises the
same :class:`~mixnorm._collectives.AgreedError` and they leave together.  Any other
failure ends its process at once, and ``mpiexec`` ends the others.  Running under
``mpiexec -n P`` without ``--communicator`` is an error (:func:`launched_world` reads P
from the launcher).
"""
import os
import sys

import numpy

from experiments import config as config_lib
from experiments import rundir
from mixnorm import _collectives

INSTALL = "pip install -e '.[distributed]' (mpi4py and the mpich wheel)"
#: Offset of the data-order and augmentation seeds of rank r (r * RANK_SEED): rank 0
#: draws as a single process does.
RANK_SEED = 7919


#: The environment variables in which launchers pass (size, rank) to each process:
#: MPICH/Hydra and Intel MPI, Open MPI, MVAPICH, PMIx.
LAUNCHER_VARS = (('PMI_SIZE', 'PMI_RANK'), ('OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_RANK'),
                 ('MV2_COMM_WORLD_SIZE', 'MV2_COMM_WORLD_RANK'), ('PMIX_SIZE', 'PMIX_RANK'))


def launched_world():
    """``(rank, size)`` of this process as started: from MPI itself once mpi4py has
    initialized it, else from the launcher's environment (``mpiexec -n P`` sets
    ``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``, ...); ``(0, 1)`` for a plain process."""
    mpi = sys.modules.get('mpi4py.MPI')
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size()
    for size_var, rank_var in LAUNCHER_VARS:
        try:
            return int(os.environ.get(rank_var, 0)), int(os.environ[size_var])
        except (KeyError, ValueError):
            continue
    return 0, 1


def not_launched_alone():
    """Every process raises this when ``mpiexec -n P > 1`` started them without a
    communicator: the P processes would each train the whole run into one directory."""
    size = launched_world()[1]
    if size > 1:
        error = config_lib.ConfigError(
            'this process is one of %d started by mpiexec, but without --communicator: '
            'each would train the whole run alone into the same run directory; add '
            '--communicator naive (CPU processes) or pure_nccl (GPUs), or run one '
            'process without mpiexec' % size)
        raise _collectives.AgreedError(str(error), 0) from error


def create(name):
    """The :class:`Parallel` of communicator ``name`` (None: one process)."""
    if name is None:
        not_launched_alone()
        return Parallel(None, None)
    try:
        import mpi4py  # noqa: F401
        import chainermn
    except ImportError as e:
        raise config_lib.ConfigError('--communicator %s needs mpi4py and an MPI: %s (%s)'
                                     % (name, INSTALL, e)) from None
    if 'nccl' in name:
        _require_nccl(name)
    try:
        # batched_copy=False: ChainerMN's batched gradient copy compiles two raw CUDA
        # kernels that declare `half`, which CuPy 14's headers no longer provide (NVRTC
        # fails on them); the per-parameter copy compiles (tests/test_gpu_kernels.py).
        comm = chainermn.create_communicator(name, batched_copy=False)
        # ChainerMN 7.8.1's PureNcclCommunicator.set_config forwards batched_copy without
        # its value (so it becomes True): set it through the base class
        from chainermn.communicators import mpi_communicator_base as base
        if isinstance(comm, base.MpiCommunicatorBase):
            base.MpiCommunicatorBase.set_config(comm, 'batched_copy', False)
    except Exception as e:
        raise config_lib.ConfigError('cannot create the ChainerMN communicator %r: %s '
                                     '(CPU processes use naive; GPUs pure_nccl)'
                                     % (name, ' '.join(str(e).split()))) from None
    return Parallel(name, comm)


def _require_nccl(name):
    """An NCCL communicator needs CuPy with NCCL (CuPy's own warning about it is
    quieted: mixnorm_numpy_hook.quiet_nccl_warning)."""
    try:
        from cupy.cuda import nccl
        available = nccl.available
    except Exception:
        available = False
    if not available:
        raise config_lib.ConfigError(
            '--communicator %s needs CuPy with NCCL, which cannot be loaded here: pip '
            'install nvidia-nccl-cu13 (CUDA 13) or nvidia-nccl-cu12 (CUDA 12); CPU '
            'processes use naive' % name)


class Parallel:
    """The processes of a run: ``size``, ``rank``, ``comm`` (None for one process)."""

    def __init__(self, name, comm):
        self.name = name
        self.comm = comm
        self.size = comm.size if comm is not None else 1
        self.rank = comm.rank if comm is not None else 0

    @property
    def writer(self):
        """Whether this process writes the run directory (rank 0)."""
        return self.rank == 0

    # ------------------------------------------------------------------ config
    def per_rank_batch_size(self, cfg):
        """``data.batch_size / P``; a :class:`ConfigError` naming the ``mpiexec -n`` to
        use when P does not divide it."""
        batch = cfg['data']['batch_size']
        if batch % self.size:
            fits = [n for n in range(1, batch + 1) if batch % n == 0]
            near = [n for n in (max([n for n in fits if n < self.size], default=None),
                                min([n for n in fits if n > self.size], default=None))
                    if n is not None]
            raise config_lib.ConfigError(
                'data.batch_size=%d (the global batch) does not divide among %d processes: '
                'run %s, or --set data.batch_size=... to a multiple of %d'
                % (batch, self.size, ' or '.join('mpiexec -n %d' % n for n in near),
                   self.size))
        return batch // self.size

    def record(self, cfg):
        """``cfg`` with the run's top-level ``world_size``, ``communicator`` and
        ``per_rank_batch_size``."""
        return dict(cfg, world_size=self.size, communicator=self.name,
                    per_rank_batch_size=self.per_rank_batch_size(cfg))

    def device(self, spec):
        """The device spec of this process: GPU ``comm.intra_rank`` when ``spec`` names a
        GPU and there are several processes, else ``spec``."""
        if self.comm is None or str(spec) in ('cpu', '-1', '@numpy'):
            return spec
        return str(self.comm.intra_rank)

    # ------------------------------------------------------------------ pieces
    def shard(self, dataset, seed, equal=True):
        """This process's shard of ``dataset`` (all of it for one process): a fixed
        permutation (``seed``) cut into P parts.  ``equal``: parts of one length (the
        training set: every process runs the same iterations; up to P - 1 examples
        appear twice an epoch); otherwise disjoint parts whose lengths differ by at most
        one (the test set: no example is evaluated twice)."""
        if self.comm is None:
            return dataset
        import chainer
        import chainermn
        order = numpy.random.RandomState(seed).permutation(len(dataset))
        begin, end = chainermn.scatter_index(len(dataset), self.comm,
                                             force_equal_length=equal)
        return chainer.datasets.SubDataset(dataset, begin, end, order)

    def normalization(self, model, cfg):
        """Synchronize the normalization of ``model`` (BN -> MultiNodeBatchNormalization)
        unless ``train.sync_normalization`` is off; MN is placed with the communicator
        by :meth:`mn_comm`."""
        if self.comm is None or not cfg['train']['sync_normalization']:
            return model
        import warnings
        import chainermn
        with warnings.catch_warnings():     # ChainerMN flags its BN as experimental
            warnings.filterwarnings('ignore', 'chainermn.links.MultiNodeBatchNormalization',
                                    FutureWarning)
            return chainermn.links.create_mnbn_model(model, self.comm)

    def mn_comm(self, cfg):
        """The communicator MN links are placed with (None: unsynchronized)."""
        if self.comm is None or not cfg['train']['sync_normalization']:
            return None
        return self.comm

    def optimizer(self, optimizer):
        """ChainerMN's multi-node optimizer around ``optimizer``, its target's
        parameters broadcast from rank 0 now: the multi-node optimizer would otherwise
        spend its first update on that broadcast, leaving the first snapshot without
        optimizer state (not resumable) and a resumed run a step apart from an
        uninterrupted one."""
        if self.comm is None:
            return optimizer
        import chainermn
        multi = chainermn.create_multi_node_optimizer(optimizer, self.comm)
        if multi.is_changed(multi.target):      # records the parameters it has seen
            self.comm.bcast_data(multi.target)
        return multi

    def evaluator(self, evaluator):
        if self.comm is None:
            return evaluator
        import chainermn
        return chainermn.create_multi_node_evaluator(evaluator, self.comm)

    # ------------------------------------------------------------------ agreement
    def agree(self, fn):
        """``fn()`` on every process (a step without collectives of its own, such as
        loading the data), then agree on how it went: if it raised on some, every
        process raises the same :class:`~mixnorm._collectives.AgreedError`, reported by
        the lowest rank that failed (:func:`mixnorm._collectives.agree`)."""
        if self.comm is None:
            return fn()
        return _collectives.agree(_collectives.MPIReducer(self.comm), fn)

    def decide(self, fn):
        """``fn()`` on rank 0, agreed on (:meth:`agree`), its result on every process."""
        result = self.agree(lambda: fn() if self.writer else None)
        return result if self.comm is None else self.comm.mpi_comm.bcast(result, root=0)

    def allgather(self, obj):
        """[``obj`` of rank 0, ..., of rank P - 1] on every process."""
        if self.comm is None:
            return [obj]
        return self.comm.mpi_comm.allgather(obj)

    def own_snapshot(self, path):
        """This process's file of the snapshot rank 0 calls ``path``."""
        return rundir.rank_file(path, self.rank)

    def snapshot(self, filename, writer=None, **kwargs):
        """The trainer's snapshot extension: every process writes its own file
        (:meth:`own_snapshot`) and they agree on how it went (:meth:`agree`), so that a
        disk filling up under all of them ends every process at that snapshot, with the
        error printed once."""
        from chainer.training import extensions
        own = writer or extensions.snapshot_writers.SimpleWriter()

        def agreed(filename, outdir, target):
            self.agree(lambda: own(filename, outdir, target))
        return extensions.snapshot(filename=self.own_snapshot(filename), writer=agreed,
                                   **kwargs)

    def barrier(self):
        if self.comm is not None:
            self.comm.mpi_comm.Barrier()


def rank_snapshots(out):
    """The other ranks' snapshot files in ``out`` (``snapshot_*.rank<r>``)."""
    if not os.path.isdir(out):
        return []
    return [os.path.join(out, f) for f in sorted(os.listdir(out))
            if f.startswith('snapshot_') and '.rank' in f]
