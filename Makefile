# canary-serve. Every target uses the project's own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0 on machines that carry it locally; a CUDA build from PyPI elsewhere.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/demo.yaml
DEMO_CONFIG ?= configs/demo-rollout.yaml
# Flags for `make bench`, e.g. BENCH_ARGS=--quick, or BENCH_ARGS="--models text --concurrency 1,32".
BENCH_ARGS ?=
# A PYTHONPATH from the caller could shadow our top-level packages (serving, models, rollout) in the CLI and in
# every Ray worker the head starts; the project's own venv has everything it needs.
unexport PYTHONPATH

.PHONY: setup demo up down test lint format artifacts bench clean

setup: $(VENV)/.installed  ## create .venv and install canary-serve with its test and lint tools

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $@

demo: setup  ## the main job: an automatic rollout that promotes, then a bad candidate rolled back on one tier
	$(VENV)/bin/canary demo --config $(DEMO_CONFIG)

up: setup  ## start a local Ray head and deploy $(CONFIG) in the background; returns once /healthz is 200
	$(VENV)/bin/canary up --config $(CONFIG)

down: setup  ## stop what `make up` started
	$(VENV)/bin/canary down

test: setup  ## the whole test suite (unit, integration on one shared local Ray, e2e)
	$(PY) -m pytest

lint: setup  ## ruff (lint + format check) on everything, mypy on the pure core
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup  ## throughput: raw model vs plain Ray Serve vs canary-serve, side by side -> benchmarks/results
	$(VENV)/bin/canary bench $(BENCH_ARGS)

artifacts: setup  ## retrain the example models deterministically into models/artifacts
	$(PY) -m models.train

# .canary holds the running head's PID file, the admin token and the rollout store: refuse while that head runs.
clean:  ## remove .venv, .canary (store, admin token) and caches; refused while `make up`'s Ray head runs
	@if [ -f .canary/ray-head.pid ] && kill -0 "$$(cut -d' ' -f1 .canary/ray-head.pid)" 2>/dev/null; then \
		echo "make clean: the Ray head \`make up\` started (PID $$(cut -d' ' -f1 .canary/ray-head.pid)) still runs;" \
			"run \`make down\` first (it also clears a stale PID file)" >&2; \
		exit 1; \
	fi
	rm -rf $(VENV) .canary .pytest_cache .mypy_cache .ruff_cache
