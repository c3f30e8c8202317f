"""mixnorm: Mixture Normalization for Chainer/CuPy.

Kalayeh & Shah, "Training Faster by Separating Modes of Variation in
Batch-normalized Models".  Public API:

* :class:`MixtureNormalization` -- the link, a drop-in for
  ``chainer.links.BatchNormalization`` (``mixnorm.links``);
* :func:`replace_batch_normalization` -- swap named BN links of a model for MN;
* :class:`MultiNodeMixtureNormalization` -- MN synchronized over the processes of a
  ChainerMN communicator (``mixnorm.distributed``; needs mpi4py only when built), and
  :func:`create_mnbn_model`, ChainerMN's model conversion that synchronizes MN too;
* ``mixnorm.functions`` -- the differentiable transform (Eq. 34-40) given posteriors;
* :func:`fit_gmm`, :func:`responsibilities`, :func:`log_likelihood`, :class:`GMM` --
  the per-batch diagonal Gaussian mixture (``mixnorm.gmm``).
"""
from mixnorm import _compat  # noqa: F401  (must precede every chainer import)
from mixnorm.gmm import (GMM, check_finite, fit_gmm, log_likelihood, responsibilities,  # noqa: F401
                         split_em_iters)

__version__ = '0.1.0'
from mixnorm import functions  # noqa: F401,E402
from mixnorm.links import MixtureNormalization  # noqa: F401,E402
from mixnorm.placement import (expand_names, name_layers,  # noqa: F401,E402
                               replace_batch_normalization)


def __getattr__(name):
    # the synchronized link is imported on first use only
    if name in ('MultiNodeMixtureNormalization', 'create_mnbn_model'):
        from mixnorm import distributed
        return getattr(distributed, name)
    raise AttributeError('module %r has no attribute %r' % (__name__, name))
