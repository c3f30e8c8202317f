"""NumPy-2 compatibility for Chainer 7.8.1; import this before ``import chainer``.

Chainer 7.8.1 reads ``numpy.sctypes`` at import time, an attribute removed in
NumPy 2.0.  Restoring that one attribute is enough for Chainer's links,
optimizers, trainer, serializers and gradient_check on NumPy 1.26 and 2.x.
The patch itself lives in the top-level module ``mixnorm_numpy_hook`` so that the
start-up hook (``mixnorm_numpy_compat.pth``, for scripts that ``import chainer``
before ``mixnorm``) and the package share one implementation.
"""
from mixnorm_numpy_hook import patch_numpy

patch_numpy()
