"""mixnorm: Mixture Normalization for Chainer/CuPy.

Kalayeh & Shah, "Training Faster by Separating Modes of Variation in
Batch-normalized Models".  Public API:

* :class:`MixtureNormalization` -- the link, a drop-in for
  ``chainer.links.BatchNormalization`` (``mixnorm.links``);
* :func:`replace_batch_normalization` -- swap named BN links of a model for MN;
* ``mixnorm.functions`` -- the differentiable transform (Eq. 34-40) given posteriors;
* :func:`fit_gmm`, :func:`responsibilities`, :func:`log_likelihood`, :class:`GMM` --
  the per-batch diagonal Gaussian mixture (``mixnorm.gmm``).
"""
from mixnorm import _compat  # noqa: F401  (must precede every chainer import)
from mixnorm.gmm import GMM, fit_gmm, log_likelihood, responsibilities, split_em_iters  # noqa: F401

__version__ = '0.1.0'
from mixnorm import functions  # noqa: F401,E402
from mixnorm.links import MixtureNormalization  # noqa: F401,E402
from mixnorm.placement import expand_names, replace_batch_normalization  # noqa: F401,E402
