# lwkit: `make run` executes every notebook and prints the results table; `make test` checks everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lwkit-installed
# Same thread count everywhere so timings and results reproduce.
export OMP_NUM_THREADS ?= 2
export PYTHONHASHSEED := 0

.PHONY: setup run test lint unit nbtest lab student clean

setup: $(STAMP)

# Installs only when pyproject.toml changed or the venv is missing: a second call is a no-op.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	LWKIT_HEADLESS=1 $(BIN)/python -m lwkit.run

lint: setup
	$(BIN)/ruff check lwkit tests scripts notebooks

unit: setup
	$(BIN)/python -m pytest -q tests

nbtest: setup
	LWKIT_HEADLESS=1 $(BIN)/python -m pytest -q --nbval-lax --nbval-cell-timeout=600 notebooks

test: lint unit nbtest

lab: setup
	$(BIN)/jupyter lab notebooks

student: setup
	$(BIN)/python -m lwkit.course student student

clean:
	rm -rf build student
