"""``MultiNodeMixtureNormalization``: Mixture Normalization synchronized over the
processes of a ChainerMN communicator (data-parallel training).

The link normalizes every process's part of the batch with the mixture of the
**global** batch, the union of all processes' points, as
``chainermn.links.MultiNodeBatchNormalization`` does for BN:

* one GMM is fitted to the union (:func:`mixnorm.gmm.fit_gmm` with a reducer):
  K-means++ seeds on a subsample of the union that does not depend on the split (at
  most :func:`mixnorm.gmm.seeding_points` points, gathered once), and every K-means
  and EM pass combines the (K, 2d+2) moments of all processes; the other points are
  never gathered;
* Eq. 34-36 and their gradients use the global moments: the (2C, K) moments of the
  forward and the (2C, K) sums of the backward are combined in one collective each
  (:func:`mixnorm.functions.mixture_normalization` with a reducer);
* every collective all-gathers small host arrays and adds them up in rank order, so
  all processes end every step with bitwise-identical mixtures and queues; inference
  needs no communication;
* it is exact for unequal local batch sizes (sums, not means of means), and with
  ``n_components=1`` it is ``L.BatchNormalization`` of the concatenated batch.

The ranks fail together.  In training, every check on a rank's input (shape, channel
count, dtype, an empty batch, NaN/Inf, a float32 overflow, the channel count that
``size=None`` takes from the first input) is decided collectively before any rank can
go its own way: a bad input on one rank raises the same error on every rank, naming
the rank(s), whether or not ChainerMN's crash hook is installed
(:func:`mixnorm._collectives.agree_on_next`: the checks of the input itself ride on the
step's first collective, one number more in it; a rank whose input fails them makes
that collective with a stand-in input of the layer's shape.  Only the first call of a
layer built with ``size=None``, one with ``axis``, or a recomputed forward agree in a
collective of their own).  The rule users must keep: **every rank calls the link the
same number of times in training** (as with ChainerMN's
``MultiNodeBatchNormalization``).  Inference
communicates nothing, so ranks may run it on batches of different counts (a test set
split unevenly), and a bad input there raises on its own rank only, leaving no rank
waiting in the link.

The collectives run through the communicator's MPI communicator (``comm.mpi_comm``)
on host arrays, whatever the communicator (``naive`` on CPUs, ``pure_nccl`` on
GPUs): the moments come to the host for the (K, C) arithmetic anyway.  Only this
module and :mod:`mixnorm._collectives` need mpi4py, imported when a link is built.
"""
from mixnorm import _compat  # noqa: F401

import copy
import weakref

import chainer

from mixnorm import _collectives
from mixnorm.links import MixtureNormalization

COMMUNICATION_BACKENDS = ('auto', 'mpi')


class MultiNodeMixtureNormalization(MixtureNormalization):
    """Mixture Normalization over all processes of ``comm`` (a ChainerMN communicator).

    The arguments of ``chainermn.links.MultiNodeBatchNormalization`` in its positions
    (``size, comm, decay, eps, dtype, use_gamma, use_beta, initial_gamma, initial_beta,
    communication_backend``), then, by keyword only, every other argument of
    :class:`mixnorm.MixtureNormalization` (``n_components``, ``em_iters``, ``axis``,
    ...).  Every process must call the link the same number of times in training:
    those calls are collectives, and a bad input on any rank raises the same error on
    every rank (see the module docstring); inference communicates nothing.  The seed
    of the fits is rank 0's, so that all processes draw alike.  The running averages
    are those of the union of the ranks' points (their variance unbiased with this
    process's count, as ChainerMN's BN does).

    ``communication_backend``: ``'auto'`` or ``'mpi'`` (the collectives are small host
    arrays through MPI); ``'nccl'`` is refused.
    """

    def __init__(self, size, comm, decay=0.9, eps=2e-5, dtype=None, use_gamma=True,
                 use_beta=True, initial_gamma=None, initial_beta=None,
                 communication_backend='auto', *, n_components=3, em_iters=2, **kwargs):
        if communication_backend not in COMMUNICATION_BACKENDS:
            raise ValueError(
                "communication_backend=%r: the synchronized MN all-gathers small host "
                "arrays through MPI; use 'auto' or 'mpi'" % (communication_backend,))
        if not hasattr(comm, 'mpi_comm'):
            raise TypeError('comm must be a ChainerMN communicator '
                            '(chainermn.create_communicator(...)), got %s'
                            % type(comm).__name__)
        super().__init__(size, decay, eps, dtype, use_gamma, use_beta, initial_gamma,
                         initial_beta, n_components=n_components, em_iters=em_iters,
                         **kwargs)
        self.comm = comm
        self._reducer = _collectives.MPIReducer(comm.mpi_comm)
        self.seed = int(comm.mpi_comm.bcast(self.seed, root=0))

    def forward(self, x, **kwargs):
        if not chainer.config.train:
            return super().forward(x, **kwargs)     # no collective: checks stay local
        x_arr = x.array if isinstance(x, chainer.Variable) else x
        if self.size is None or self.axis is not None or chainer.config.in_recomputing:
            try:
                self._agree_on_input(x_arr)
            except ValueError as e:
                raise ValueError('%s: %s' % (self._label(), e)) from e
            return super().forward(x, **kwargs)
        # the checks ride on the step's first collective (the fit's frame, or with one
        # component the moments): a rank whose input fails them makes that collective
        # with a stand-in input of the layer's shape, and every rank raises there
        error = self._input_error(x_arr)
        _collectives.agree_on_next(self._reducer, error, self._INPUT_CHECKS
                                   % self._reducer.size)
        N = self.N
        try:
            return super().forward(x if error is None else self._stand_in(), **kwargs)
        except Exception:
            agreed = self._reducer.agreed
            if agreed is None:
                raise
            self._reducer.agreed = None
            if self.N != N:             # a finetune step that did not happen
                self.N = N
                self._share_counters()
            raise ValueError('%s: %s' % (self._label(), agreed)) from agreed
        finally:
            self._reducer.drop_pending()

    _INPUT_CHECKS = ('the input of rank(s) {ranks} of %d fails the checks of the '
                     'synchronized layer')

    def _stand_in(self):
        """A valid input (two zero points) that takes the path of any valid input to
        the step's first collective."""
        with chainer.using_device(self.device):
            return self.xp.zeros((2,) + tuple(self.param_shape), dtype=self._dtype)

    def _agree_on_input(self, x):
        """Every rank's input passes the checks (:meth:`_input_error`), and with
        ``size=None`` every rank's has the same channel count, or every rank raises."""
        size = self._reducer.size

        def check():
            error = self._input_error(x)
            if error is not None:
                raise error
        _collectives.agree(self._reducer, check, self._INPUT_CHECKS % size)
        if self.size is None:       # the channel count the layer takes from its input
            channels = self._reducer.allgather([x.shape[1]])[:, 0].astype(int)
            if len(set(channels)) > 1:
                raise _collectives.AgreedError(
                    'the ranks of a synchronized layer got inputs with different channel '
                    'counts (%s): every rank must pass the same number of channels'
                    % ', '.join('rank %d: %d' % rc for rc in enumerate(channels)), 0)

    def __deepcopy__(self, memo):
        # a copy (e.g. chainermn.links.create_mnbn_model's) shares the communicator
        memo[id(self.comm)] = self.comm
        memo[id(self._reducer)] = self._reducer
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key != '_sharing':
                new.__dict__[key] = copy.deepcopy(value, memo)
        new._sharing = [weakref.ref(new)]
        return new

    def _label(self):
        return 'MultiNodeMixtureNormalization %r (rank %d of %d)' % (
            self._where(), self._reducer.rank, self._reducer.size)


def create_mnbn_model(link, comm, communication_backend='auto'):
    """``chainermn.links.create_mnbn_model`` for models with MN: a copy of ``link``
    whose ``BatchNormalization`` links are ChainerMN's ``MultiNodeBatchNormalization``
    and whose :class:`~mixnorm.MixtureNormalization` links are
    :class:`MultiNodeMixtureNormalization`, each with the settings and state (queue,
    running averages, parameters) of the link it replaces.

    (ChainerMN's own ``create_mnbn_model`` keeps MN links as they are: each process
    then fits its own points' mixture.)"""
    from chainermn.links import create_mnbn_model as chainermn_create
    from mixnorm import placement
    model = chainermn_create(link, comm, communication_backend)
    local = [(path.lstrip('/'), mn) for path, mn in model.namedlinks(skipself=True)
             if type(mn) is MixtureNormalization]
    backend = 'auto' if communication_backend == 'nccl' else communication_backend
    for path, mn in local:
        settings = mn.settings()
        synced = MultiNodeMixtureNormalization(settings.pop('size'), comm,
                                               communication_backend=backend, **settings)
        synced.to_device(mn.device)
        synced.copyparams(mn)
        synced.seed = int(comm.mpi_comm.bcast(synced.seed, root=0))
        placement.replace_link(model, path, synced)
    return model
