# `make demo` and `make test` each set themselves up from nothing: venv, pip, npm ci.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
NODE_MODULES := node_modules/.package-lock.json

.PHONY: setup demo test lint unit bench node-pyz node-bundle clean local-up local-down

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $@

$(NODE_MODULES): package.json package-lock.json tools/entra-azurite/package.json tools/entra-azurite/package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	# Azurite with OAuth and the Node 22 it needs, for the Entra ID end-to-end test (apart: own bin links).
	npm ci --prefix tools/entra-azurite --no-audit --no-fund --loglevel=error
	touch $@

setup: $(INSTALLED) $(NODE_MODULES)

demo: setup
	$(VENV)/bin/topn run examples/texts

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The suite in PYTEST_WORKERS processes (pytest-xdist). Most slow tests wait on subprocesses and
# timers, so 3 workers on 2 cores finish well before one worker would. Each worker starts its own
# Azurite and emulator on free ports (the end-to-end tests that need no pool of their own share the
# pools of tests/e2e/run_cli.py on it). `--dist loadgroup` hands out tests one by one in collection
# order, so the long end-to-end ones start first and the short unit tests fill the end; tests marked
# xdist_group would stay on one worker. The 25 slowest are listed.
PYTEST_WORKERS ?= 3

test: setup lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=25

unit: setup
	$(PY) -m pytest tests/unit

node-pyz: setup
	$(PY) -m node.pack dist/node.pyz

# The node program with its dependencies as wheels (node/bundle.lock), for a node's own python3.
# Wheels are downloaded once into .topn/node-wheels; later builds are offline and take a second.
node-bundle: setup
	$(PY) -m node.bundle dist/node-bundle.pyz --wheel-cache .topn/node-wheels

bench: setup
	$(PY) bench/node_throughput.py
	$(PY) bench/emulator_throughput.py
	$(PY) bench/seed_baseline.py
	$(PY) -m bench.status_query

local-up: setup
	$(VENV)/bin/topn local up

local-down: setup
	$(VENV)/bin/topn local down

clean:
	rm -rf $(VENV) node_modules .topn results dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
