# Breeze MCP — everything a fresh machine with Python 3.11+ needs.
#   make run    create .venv, install, migrate, serve on http://127.0.0.1:8000
#   make test   install the dev extras and run the whole test suite
#   make check  ruff + mypy (strict)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test check lint typecheck bench bench-instructions

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Breeze MCP needs Python 3.11 or newer (set PYTHON=python3.x)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/breeze-mcp serve --migrate

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

check: lint typecheck

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check breeze_mcp migrations tests bench conformance

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench

bench-instructions: $(VENV)/.installed-dev
	$(BIN)/python -m bench.instructions

# make conformance  the official MCP conformance suite against a fresh local Breeze: its
#                   authorization-server scenarios, and its MCP-server scenarios for the
#                   2026-07-28 and 2025-11-25 revisions (see conformance/README.md)
.PHONY: conformance

conformance/node_modules/.package-lock.json: conformance/package.json conformance/package-lock.json
	cd conformance && npm ci --no-audit --no-fund

$(VENV)/.installed-conformance: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[conformance]'
	@touch $@ $(VENV)/.installed

conformance: $(VENV)/.installed-conformance conformance/node_modules/.package-lock.json
	$(BIN)/python conformance/run.py
