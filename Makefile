# One entry point for a fresh clone: `make test` builds .venv (torch 2.13.0 CPU wheel + requirements)
# and runs the linters and the test suite (`.ci/run` calls exactly this); `make demo` runs the write-up's
# whole workflow on the toy domain (demo/run_demo.py).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint pytest demo
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

# Trains the toy base first when the clone has none: about 4 minutes on one GPU; on a CPU it stops after
# TOY_BASE_BUDGET_S seconds, far too few for a base that draws its world well (see README, Results).
TOY_BASE_BUDGET_S ?= 900
demo: setup
	test -f demo/toy_base/model_index.json || OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
		$(PY) demo/train_toy_base.py --output_dir demo/toy_base --device auto --batch_size 32 --pool_size 20000 --time_budget_s $(TOY_BASE_BUDGET_S)
	$(PY) demo/run_demo.py --model_path demo/toy_base
