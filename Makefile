# make demo : fresh machine -> .venv -> full pipeline on the bundled MOSES sample -> outputs/demo/
# make test : fresh machine -> .venv -> the test suite (fast part; `make test-slow` for the rest)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.molvae-installed

.PHONY: demo test test-slow test-all lint format benchmark clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "molvae needs Python >= 3.11"'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]"
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
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

benchmark: $(STAMP)
	$(PY) experiments/benchmark.py

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
