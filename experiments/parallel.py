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
  continues where it stopped.
"""
import os

import numpy

from experiments import config as config_lib

INSTALL = "pip install -e '.[distributed]' (mpi4py and the mpich wheel)"
#: Offset of the data-order and augmentation seeds of rank r (r * RANK_SEED): rank 0
#: draws as a single process does.
RANK_SEED = 7919


def create(name):
    """The :class:`Parallel` of communicator ``name`` (None: one process)."""
    if name is None:
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
        # fails on them); the per-parameter copy compiles (tests/test_gpu_kernels.py)
        comm = chainermn.create_communicator(name, batched_copy=False)
    except Exception as e:
        raise config_lib.ConfigError('cannot create the ChainerMN communicator %r: %s '
                                     '(CPU processes use naive; GPUs pure_nccl)'
                                     % (name, ' '.join(str(e).split()))) from None
    import chainermn.global_except_hook
    chainermn.global_except_hook.add_hook()     # a crash on one rank ends them all
    from experiments import cli
    cli.set_rank(comm.rank)                     # rank 0 speaks for all
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
        """``data.batch_size / P``; a :class:`ConfigError` when P does not divide it."""
        batch = cfg['data']['batch_size']
        if batch % self.size:
            raise config_lib.ConfigError(
                'data.batch_size=%d (the global batch) does not divide among %d processes: '
                'run a number of processes that divides it, or --set data.batch_size=...'
                % (batch, self.size))
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
        if self.comm is None:
            return optimizer
        import chainermn
        return chainermn.create_multi_node_optimizer(optimizer, self.comm)

    def resumed(self, trainer):
        """After every process loaded its snapshot: the parameters already agree, so
        the multi-node optimizer must not spend the next update on broadcasting them
        (it does so when it first sees its parameters), or a resumed run would lose a
        step against an uninterrupted one."""
        if self.comm is not None:
            optimizer = trainer.updater.get_optimizer('main')
            optimizer.is_changed(optimizer.target)

    def evaluator(self, evaluator):
        if self.comm is None:
            return evaluator
        import chainermn
        return chainermn.create_multi_node_evaluator(evaluator, self.comm)

    # ------------------------------------------------------------------ agreement
    def decide(self, fn):
        """``fn()`` on rank 0, its result (or its error) on every process."""
        if self.comm is None:
            return fn()
        result = error = None
        if self.writer:
            try:
                result = fn()
            except Exception as e:          # re-raised on every rank
                error = e
        result, error = self.comm.bcast_obj((result, error) if self.writer else None)
        if error is not None:
            raise error
        return result

    def snapshot_suffix(self):
        return '' if self.rank == 0 else '.rank%d' % self.rank

    def own_snapshot(self, path):
        """This process's file of the snapshot rank 0 calls ``path``."""
        return path + self.snapshot_suffix()

    def barrier(self):
        if self.comm is not None:
            self.comm.mpi_comm.Barrier()


def rank_snapshots(out):
    """The other ranks' snapshot files in ``out`` (``snapshot_*.rank<r>``)."""
    if not os.path.isdir(out):
        return []
    return [os.path.join(out, f) for f in sorted(os.listdir(out))
            if f.startswith('snapshot_') and '.rank' in f]
