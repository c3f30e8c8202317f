# One environment, two commands (see README.md):
#   make reproduce   set up .venv and run the main job
#   make test        set up .venv and run the test suite
#   make test PYTHON=python3.12 VENV=.venv-3.12   the same under another interpreter
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

.PHONY: venv test reproduce demo bench clean

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools<70" wheel
	$(PY) -m pip install -q --no-build-isolation chainer==7.8.1
	$(PY) -m pip install -q --no-build-isolation -e '.[dev,distributed]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

reproduce: venv
	$(PY) scripts/reproduce.py $(REPRO_ARGS)

demo: venv
	$(PY) scripts/demo.py

bench: venv
	$(PY) bench/bench_gmm.py
	$(PY) bench/bench_layer.py
	$(PY) bench/bench_ops.py

clean:
	rm -rf $(VENV) build *.egg-info
