# Two commands matter: `make run` (the whole pipeline on the default data) and `make test`.
# Both bootstrap uv and the locked environment themselves; only Python 3.11 and make are needed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
export PYTHONUNBUFFERED := 1

.PHONY: setup run test test-all plots-offline help

help:
	@echo "make run    - install (if needed) and run the whole pipeline on the default data (dvc repro)"
	@echo "make test   - install (if needed) and run the test suite (what CI runs)"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

setup: $(VENV)/.synced

run: setup
	@test -d .dvc || dvc init --quiet $$(git rev-parse --git-dir >/dev/null 2>&1 || echo --no-scm)
	dvc repro
	@python -m edgeopt.summary

# Two test processes (pytest-xdist), each taking whole files so module fixtures are built once; files with slow
# tests are handed out first (tests/conftest.py), not reordered by test count. Most tests wait on subprocesses
# (DVC, Prefect servers, stage start-up), so two share a 2-core machine well. TEST_WORKERS=1 runs them one by one.
TEST_WORKERS ?= 2
PYTEST := python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: setup
	$(PYTEST) -m "not extended" --timeout=900

test-all: setup
	$(PYTEST) --timeout=1800

# `dvc plots show` pages without internet: Vega inlined into DVC's page template (downloads it once, sha512-checked)
plots-offline: setup
	python -m edgeopt.offline_plots .
