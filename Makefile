# chainlens-ops: install, test, lint, bench.
#
# The venv is made from Debian's /usr/bin/python3, readable by all, with a+x (only) on the
# folders above it (scripts/venv-perms.sh), and the
# project is installed into it non-editably: PostgreSQL runs archive_command as the
# `postgres` OS user, who can neither run root's pyenv Python nor enter this clone.

SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV ?= /opt/chainlens-ops/venv
PIP := $(VENV)/bin/pip
PIP_FLAGS := --disable-pip-version-check -q
PYTEST_ARGS ?=
# As many pytest workers as the machine has cores, at most 4.
JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: system-deps bench-deps install deps test unit lint format bench clean demo

# Debian packages (PostgreSQL 15, python3-venv); bench-deps adds the benchmark anchors.
system-deps:
	bash scripts/install-system-deps.sh

bench-deps:
	bash scripts/install-system-deps.sh --bench

$(VENV)/bin/python:
	umask 022; mkdir -p $(dir $(VENV)) && $(PYTHON) -m venv $(VENV)
	bash scripts/venv-perms.sh $(VENV)

# Dependencies are reinstalled only when pyproject.toml changes.
$(VENV)/.deps: pyproject.toml | $(VENV)/bin/python
	umask 022; $(PIP) install $(PIP_FLAGS) --upgrade pip
	umask 022; $(PIP) install $(PIP_FLAGS) "$$(sed -n 's/^\s*"\(hatchling[^"]*\)".*/\1/p' pyproject.toml | head -1)"
	umask 022; $(PIP) install $(PIP_FLAGS) --no-build-isolation ".[dev]"
	# Nothing here needs setuptools at run time, and its .pth file costs every start of
	# the interpreter (~0.6 ms of a `wal push` that PostgreSQL runs once per segment).
	$(PIP) uninstall $(PIP_FLAGS) -y setuptools || true
	touch $@

deps: $(VENV)/.deps

# Reinstall the project itself every time: it is what the postgres user runs.
install: deps
	umask 022; $(PIP) install $(PIP_FLAGS) --no-deps --no-build-isolation --force-reinstall .
	rm -rf build
	# Only this venv (recursively) and a+x on the folders above it: never -R above the
	# venv (VENV=$$HOME/venv must not make ~/.ssh readable), and other venvs beside it
	# may be mid-install (pip's ~renamed folders).
	bash scripts/venv-perms.sh $(VENV)

# Both tiers: the unit tier (pure logic, tests/unit) and the integration tier (real
# clusters as the postgres user, moto; tests/integration), which needs root and the install.
test: install
	CHAINLENS_TEST_VENV=$(VENV) $(VENV)/bin/python -m pytest -n $(JOBS) $(PYTEST_ARGS)

# The fast tier alone: no root, no PostgreSQL, no network, no install (imports the work tree).
unit: deps
	$(VENV)/bin/python -m pytest -n $(JOBS) -p no:cacheprovider tests/unit $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check chainlens_ops tests bench scripts
	$(VENV)/bin/ruff format --check chainlens_ops tests bench scripts
	$(VENV)/bin/mypy

format: deps
	$(VENV)/bin/ruff format chainlens_ops tests bench scripts
	$(VENV)/bin/ruff check --fix chainlens_ops tests bench scripts

# The newcomer path: PostgreSQL when missing, the venv, then the narrated demo.
DEMO_ARGS ?=
demo:
	@test -x /usr/lib/postgresql/15/bin/initdb || bash scripts/install-system-deps.sh
	$(MAKE) install VENV=$(VENV)
	$(VENV)/bin/chainlens-ops demo $(DEMO_ARGS)

bench: bench-deps install
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
