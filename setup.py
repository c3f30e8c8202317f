"""mixnorm: Mixture Normalization for Chainer/CuPy (Kalayeh & Shah).

Install with the Makefile (``make test`` / ``make reproduce``), which handles
Chainer 7.8.1's build quirk (``setuptools<70`` and ``--no-build-isolation``).
"""
import os
import shutil
import sysconfig

from setuptools import find_packages, setup
from setuptools.command.develop import develop
from setuptools.command.editable_wheel import editable_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
PTH = 'mixnorm_numpy_compat.pth'
# data_files are placed relative to the install prefix; this is site-packages.
SITE_PACKAGES = os.path.relpath(sysconfig.get_path('purelib'), sysconfig.get_path('data'))


class DevelopWithPth(develop):
    """Legacy editable installs (``setup.py develop``) do not copy data_files."""

    def run(self):
        super().run()
        if not self.uninstall:
            shutil.copy(os.path.join(HERE, PTH), os.path.join(self.install_dir, PTH))


class EditableWheelWithPth(editable_wheel):
    """PEP 660 editable wheels (setuptools < 70) skip data_files: add the hook.

    The unpacked wheel's root is what pip installs into site-packages.
    """

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        out = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copy(os.path.join(HERE, PTH), os.path.join(str(unpacked_wheel), PTH))
        return out


with open(os.path.join(HERE, 'README.md'), encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='mixnorm',
    version='0.1.0',
    description='Mixture Normalization (Kalayeh & Shah) for Chainer/CuPy, '
                'with a kit that reproduces the paper\'s experiments',
    long_description=long_description,
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['mixnorm', 'mixnorm.*', 'experiments',
                                    'experiments.*', 'scripts']),
    py_modules=['mixnorm_numpy_hook'],
    # Start-up hook so that ``import chainer`` before ``import mixnorm`` works on NumPy 2.
    # Wheels carry it as a data file; editable installs copy it by hand.
    data_files=[(SITE_PACKAGES, [PTH])],
    cmdclass={'develop': DevelopWithPth, 'editable_wheel': EditableWheelWithPth},
    install_requires=['chainer==7.8.1', 'numpy', 'matplotlib', 'pyyaml'],
    extras_require={
        # CuPy with its CUDA libraries as wheels (cuBLAS, NVRTC, headers): CUDA 12 or 13
        'gpu': ['cupy-cuda12x[ctk]>=14'],
        'gpu-cuda13': ['cupy-cuda13x[ctk]>=14'],
        'dev': ['pytest', 'scikit-learn', 'scipy', 'h5py'],
        # ChainerMN's communicators; the MPICH wheel brings libmpi and bin/mpiexec.
        'distributed': ['mpi4py', 'mpich'],
    },
)
