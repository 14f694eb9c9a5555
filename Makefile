# p2p developer entry points. `make demo` and `make test` are all a new user needs.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup test test-fast lint format demo bench clean

# Idempotent: reinstalls only when requirements.lock or pyproject.toml change.
setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
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

clean:
	rm -rf $(VENV) .pytest_cache
