# Two entry points, each doing its own set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench bench-peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/quickstart.py

lint: $(STAMP)
	$(BIN)/ruff check polaris_sdk tests examples bench
	$(BIN)/ruff format --check polaris_sdk tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict polaris_sdk

unit: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck unit

bench-peers: $(STAMP)
	$(BIN)/python bench/peers/run.py

bench: $(STAMP)
	$(BIN)/python bench/server_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
