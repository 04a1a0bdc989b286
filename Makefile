# One entry point for a fresh clone: `make test` builds .venv (torch 2.13.0 CPU wheel + requirements)
# and runs the linters and the test suite; `.ci/run` calls exactly this.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint pytest
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
