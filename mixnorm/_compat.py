"""Chainer 7.8.1 on NumPy 2 and Python 3.12+; import this before ``import chainer``.

Chainer 7.8.1 reads ``numpy.sctypes`` at import time, an attribute removed in
NumPy 2.0, and imports ``numpy.distutils.system_info``, which NumPy does not ship
for Python >= 3.12.  Restoring the one and stubbing the other is enough for Chainer's
links, optimizers, trainer, serializers and gradient_check on NumPy 1.26 and 2.x.
The shim lives in the top-level module ``mixnorm_numpy_hook`` so that the start-up
hook (``mixnorm_numpy_compat.pth``, for scripts that ``import chainer`` before
``mixnorm``) and the package share one implementation.
"""
from mixnorm_numpy_hook import prepare_chainer

prepare_chainer()
