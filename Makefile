# lwkit: `make run` executes every notebook and prints the results table; `make test` checks everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lwkit-installed
# Same thread count everywhere so timings and results reproduce.
export OMP_NUM_THREADS ?= 2
export PYTHONHASHSEED := 0

.PHONY: setup run test lint unit nbtest test-browser lab student guide site kit test-kit clean
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings

setup: $(STAMP)

# Installs only when pyproject.toml changed or the venv is missing: a second call is a no-op.
$(STAMP): pyproject.toml jupyter/overrides.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# JupyterLab settings for the course (no news prompt, no update check): overrides.json in the venv.
	mkdir -p $(LAB_SETTINGS) && cp jupyter/overrides.json $(LAB_SETTINGS)/overrides.json
	touch $(STAMP)

run: setup
	LWKIT_HEADLESS=1 $(BIN)/python -m lwkit.run

lint: setup
	$(BIN)/ruff check lwkit tests scripts notebooks

unit: setup
	$(BIN)/python -m pytest -q tests

nbtest: setup
	LWKIT_HEADLESS=1 $(BIN)/python -m pytest -q --nbval-lax --nbval-cell-timeout=600 notebooks/*.ipynb

test: lint unit nbtest

# Every widget driven in a real JupyterLab in Debian's chromium (apt-get install chromium); screenshots in
# build/browser/. .ci/run runs it after `make test`.
test-browser: setup
	LWKIT_BROWSER=1 $(BIN)/python -m pytest -q tests/browser

lab: setup
	$(BIN)/jupyter lab notebooks

student: setup
	$(BIN)/python -m lwkit.course student student $(if $(FORCE),--force)

# docs/instructor-guide.md from the notebooks and build/results.json (run `make run` first for your timings).
guide: setup
	$(BIN)/python -m lwkit.course guide

# A static HTML site of the executed notebooks in build/ (after `make run`): build/site/index.html.
site: setup
	$(BIN)/python -m lwkit.site

# Offline install kit in build/kit (wheels of the locked set, the course, install.sh); test-kit installs it
# with the network unreachable and runs notebook 00 (slow: not part of `make test`).
kit: setup
	bash scripts/make_kit.sh build/kit

test-kit: setup
	bash scripts/test_kit.sh

clean:
	rm -rf build student
