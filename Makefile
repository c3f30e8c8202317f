# One environment, two commands (see README.md):
#   make reproduce   set up .venv and run the main job
#   make test        set up .venv and run the test suite
# Chainer 7.8.1 is an sdist whose setup.py needs pkg_resources: it builds only
# with setuptools<70 and --no-build-isolation, which the venv target handles.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mixnorm-installed
PYTEST_ARGS ?=

.PHONY: venv test reproduce demo bench clean

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools<70" wheel
	$(PY) -m pip install -q --no-build-isolation chainer==7.8.1
	$(PY) -m pip install -q --no-build-isolation -e '.[dev]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

reproduce: demo

demo: venv
	$(PY) scripts/demo.py

bench: venv
	$(PY) bench/bench_gmm.py

clean:
	rm -rf $(VENV) build *.egg-info
