"""mixnorm: Mixture Normalization for Chainer/CuPy.

Kalayeh & Shah, "Training Faster by Separating Modes of Variation in
Batch-normalized Models".  Public API:

* :func:`fit_gmm`, :func:`responsibilities`, :func:`log_likelihood`, :class:`GMM` --
  the per-batch diagonal Gaussian mixture (``mixnorm.gmm``).
"""
from mixnorm import _compat  # noqa: F401  (must precede every chainer import)
from mixnorm.gmm import GMM, fit_gmm, log_likelihood, responsibilities, split_em_iters  # noqa: F401

__version__ = '0.1.0'
