# make demo : fresh machine -> .venv -> full pipeline on the bundled MOSES sample -> outputs/demo/
# make test : fresh machine -> .venv -> the test suite (fast part; `make test-slow` for the rest)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.molvae-installed

.PHONY: demo test test-slow test-all lint format benchmark peer clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "molvae needs Python >= 3.11"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev,sweeps]"
	@# ChemNet's published weights (the fcd wheel, 53 MB) for FCD, which the demo reports, and
	@# GuacaMol's scoring functions for the PMO tasks: fetched here, with the packages, so the
	@# runs themselves need no network.
	$(PY) -c 'from molvae import fetch; fetch.wheel_path(fetch.FCD); fetch.wheel_path(fetch.GUACAMOL)'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) experiments/pipeline.py experiment=demo hydra.run.dir=outputs/demo

test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(PY) -m pytest -m slow -q

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

benchmark: $(STAMP)
	$(PY) experiments/benchmark.py

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache

# The PyTorch MOSES VAE, for the speed comparison in experiments/benchmark.py (never in .venv).
.venv-peer/.installed:
	$(PYTHON) -m venv .venv-peer
	.venv-peer/bin/pip install --disable-pip-version-check -q torch==2.13.0 rdkit numpy pandas scipy six tqdm matplotlib
	.venv-peer/bin/pip install --disable-pip-version-check -q --no-deps molsets==0.3.1 fcd-torch==1.0.7
	@touch $@

peer: .venv-peer/.installed
