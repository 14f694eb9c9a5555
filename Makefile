# p2p developer entry points. `make demo` and `make test` are all a new user needs.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint format demo bench gpu-check clean

# Idempotent: reinstalls only when requirements.lock or pyproject.toml change.
setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24" "setuptools>=77"
	@# torch first, exact: a loose torch requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)
	@echo "setup: environment ready in $(VENV)"

# The whole suite, slow integration tests included (Ray, S3, MLflow, Prefect, DVC); GPU tests skip without a GPU.
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check p2p pipelines tests
	$(BIN)/ruff format --check p2p pipelines tests

format: setup
	$(BIN)/ruff format p2p pipelines tests
	$(BIN)/ruff check --fix p2p pipelines tests

demo: setup
	$(BIN)/python -m p2p demo

bench: setup
	$(BIN)/python -m p2p bench loader
	$(BIN)/python -m p2p bench train

# On a lent GPU machine: plain python3 with torch, pillow, pyyaml, numpy (no venv, Ray or MLflow).
# GPU tests (or a built-in parity check), `p2p bench train --device cuda` eager / compiled / CUDA
# graphs, loader workers per GPU, 1 -> 2 GPU scaling; figures appended to bench/RESULTS.md.
# Dry run on a CPU: make gpu-check GPU_CHECK_ARGS="--device cpu --tiny --results -"
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=. python3 -m p2p.bench.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
