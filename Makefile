# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
DEV := $(VENV)/.installed-dev

.PHONY: demo test lint types unit sysdeps bench clean

$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(BASE)

$(DEV): $(BASE)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(DEV)

# unzip and zip: interop tests and benchmark baselines; xfsprogs: the reflink test.
sysdeps:
	@command -v unzip >/dev/null && command -v zip >/dev/null && command -v mkfs.xfs >/dev/null || \
		(apt-get update -q && apt-get install -y -q unzip zip xfsprogs)

demo: $(BASE)
	$(VENV)/bin/dspkg demo

lint: $(DEV)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

types: $(DEV)
	$(VENV)/bin/mypy

unit: $(DEV) sysdeps
	$(VENV)/bin/pytest -q

test: lint types unit

bench: $(DEV) sysdeps
	$(VENV)/bin/dspkg bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
