# One entry point for a fresh clone: `make test` builds .venv (torch 2.13.0 CPU wheel + requirements)
# and runs the linters and the test suite (`.ci/run` calls exactly this); `make demo` runs the write-up's
# whole workflow on the toy domain (demo/run_demo.py).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint pytest demo toy_base
setup: $(VENV)/.installed

# torch is pinned and installed first on its own: an unpinned torch from PyPI pulls a multi-GB CUDA build.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

pytest: setup
	$(PY) -m pytest -q

test: lint pytest

# The toy base is committed (demo/toy_base/); `make toy_base` rebuilds it (about 40 minutes on 2 CPU cores).
demo: setup
	$(PY) demo/run_demo.py --model_path demo/toy_base

toy_base: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(PY) demo/train_toy_base.py --output_dir demo/toy_base
