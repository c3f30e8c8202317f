# One environment, two commands (see README.md):
#   make reproduce   set up .venv and run the main job
#   make test        set up .venv and run the fast tier of the test suite
#   make test PYTHON=python3.12 VENV=.venv-3.12   the same under another interpreter
#   make test-all    CI (.ci/run): both tiers under every Python 3.10-3.13 found, and
#                    the GPU machine's rehearsal
# The tiers (tests/conftest.py, SLOW): the slow one is the MPI fault suite and the tests
# that train runs end to end, launch mpiexec or a script, or build the deep models.
# `make test` leaves it out (-m "not slow"): on a fresh clone with 2 cores busy with
# other work (load 5), 2 min 53 s, its venv included (2 min 27 s of tests; idle, about
# 1.5 min); and --check-modules (Python 3.12+) fails it unless its tests run code of
# every module of mixnorm/, experiments/ and scripts/.  TIER=all runs both tiers with
# this one Python, TIER=slow the slow tier alone (6.5 min at load 4).
# Chainer 7.8.1 is an sdist whose setup.py imports pkg_resources, and so does every
# `import chainer`: the venv needs a setuptools that still ships pkg_resources, and the
# build --no-build-isolation (an isolated build gets the newest setuptools, which has
# none).  Tried on each of Python 3.10-3.13: the sdist builds with setuptools 69.5.1
# and 81.0.0 (also 70.0, 75.3, 80.10 on 3.12) and fails from 82.0 on, which removed
# pkg_resources; so setuptools<70 is not what Chainer needs, <82 is.  The pin stays at
# <70 for our own editable install, which copies the start-up hook (setup.py): it is
# tested with <70, and with setuptools 81 pip's `setup.py develop` path fails in it.
# Also, from setuptools 80 on, pkg_resources adds a UserWarning to every import chainer.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mixnorm-installed
PYTEST_ARGS ?=
TIER   ?= fast
ifeq ($(filter $(TIER),fast slow all),)
$(error TIER=$(TIER): choose TIER=fast (make test), TIER=slow or TIER=all)
endif
TIER_ARGS_fast := -m "not slow" --check-modules
TIER_ARGS_slow := -m slow
TIER_ARGS_all  := --check-modules
# `make reproduce` trains BN-2 and MN-2 of Table 2 (CIFAR-10, smoke preset) and prints
# them beside the paper's numbers.  CIFAR-10 comes from DATA_DIR, Chainer's cache, or a
# download.  Offline, on real images: `make reproduce DATA=fashion-mnist` (Fashion-MNIST
# from DATA_DIR, the Debian package dataset-fashion-mnist, Chainer's cache or a
# download; BN beside MN, marked NOT COMPARABLE to the paper); on generated images:
# `make reproduce DATA=synthetic`.  Full runs: PRESET= DEVICE=0 (a GPU) ROWS= (all rows).
DATA   ?= cifar10
PRESET ?= $(if $(filter fashion-mnist,$(DATA)),fmnist-cpu,smoke)
ROWS   ?= BN-2,MN-2
DEVICE ?= cpu
DATA_DIR ?=
ifeq ($(filter $(DATA),cifar10 fashion-mnist synthetic),)
$(error DATA=$(DATA): choose DATA=cifar10, DATA=fashion-mnist or DATA=synthetic)
endif
REPRO_ARGS = table2 --dataset $(if $(filter fashion-mnist,$(DATA)),fashion-mnist,cifar10) \
	--device $(DEVICE) $(if $(PRESET),--preset $(PRESET)) $(if $(ROWS),--rows $(ROWS)) \
	$(if $(filter synthetic,$(DATA)),--synthetic,--download) \
	$(if $(DATA_DIR),--data-dir $(DATA_DIR))

# `make gpu-wheels` writes into .whl/ the exact wheel set carried to an offline GPU machine
# (Python 3.12 with NumPy, CuPy, NCCL and mpi4py of its own; scripts/gpu_check.py says how
# it is installed and run there): Chainer 7.8.1 built here, a setuptools that still ships
# pkg_resources (which every `import chainer` needs; gone from 82 on, and from 80 on it
# warns at every import), mpi4py, PyYAML and pytest; and, in .whl/mpich/, the real MPICH
# wheel with mpiexec and libmpi (PyPI's manylinux2014 tag gets only the empty
# mpich-0.0.0 placeholder; the real one is tagged manylinux_2_28).  MPICH installs with
# --prefix: a --target install drops its lib/.  --no-deps: the machine's own NumPy and
# CuPy stay.  Fails if the set outgrows GPU_WHEELS_MAX_MB (a run may carry 64 MiB in all,
# with the tree and the Fashion-MNIST files).
# `make gpu-rehearsal` installs that set the way the GPU machine does (--target, used
# through PYTHONPATH, Python 3.12 beside CuPy 14 with NVRTC) and runs every gpu_check
# step that needs no device (tests/gpu_rehearsal.py).
GPU_PYTHON_VERSION ?= 3.12
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux2014_x86_64 manylinux1_x86_64
GPU_WHEELS := "setuptools<80" filelock typing_extensions six pyyaml mpi4py \
	pytest iniconfig pluggy packaging pygments
GPU_DOWNLOAD = $(PY) -m pip download -q --no-deps --only-binary=:all: \
	--python-version $(GPU_PYTHON_VERSION) --implementation cp \
	$(foreach p,$(GPU_PLATFORMS),--platform $(p))
GPU_WHEELS_MAX_MB ?= 24

.PHONY: venv test test-all reproduce demo bench clean gpu-wheels gpu-rehearsal

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools<70" wheel
	$(PY) -m pip install -q --no-build-isolation chainer==7.8.1
	$(PY) -m pip install -q --no-build-isolation -e '.[dev,distributed]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q $(TIER_ARGS_$(TIER)) $(PYTEST_ARGS)

test-all:
	.ci/run

reproduce: venv
	$(PY) scripts/reproduce.py $(REPRO_ARGS)

demo: venv
	$(PY) scripts/demo.py

bench: venv
	$(PY) bench/bench_gmm.py
	$(PY) bench/bench_layer.py
	$(PY) bench/bench_ops.py

gpu-wheels: venv
	rm -rf .whl && mkdir -p .whl/mpich
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w .whl chainer==7.8.1
	$(GPU_DOWNLOAD) -d .whl $(GPU_WHEELS)
	$(GPU_DOWNLOAD) -d .whl/mpich "mpich>=4"
	@ls .whl/mpich/mpich-*-manylinux*.whl >/dev/null 2>&1 || \
		{ echo "gpu-wheels: no real MPICH wheel (only the mpich-0.0.0 placeholder?)"; exit 1; }
	@size=$$(du -sm .whl | cut -f1); ls -1R .whl; echo "gpu-wheels: $$size MB in .whl/"; \
		[ $$size -le $(GPU_WHEELS_MAX_MB) ] || \
		{ echo "gpu-wheels: over $(GPU_WHEELS_MAX_MB) MB"; exit 1; }

gpu-rehearsal: gpu-wheels
	$(PY) tests/gpu_rehearsal.py

clean:
	rm -rf $(VENV) build *.egg-info .whl .gpu-rehearsal
