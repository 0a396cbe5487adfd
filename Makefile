# moesim: `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REPORT ?= moesim-report
# The profiler's torch. 2.13.0 is a CPU build where a local wheel exists; on a GPU machine set
# TORCH_SPEC to the CUDA build you want (make TORCH_SPEC='torch==2.5.1' test).
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test bench lint format clean dashboard chromium wheel

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# one stamp per set of extras, redone when pyproject.toml changes
$(VENV)/.installed-torch: | $(BIN)/python
	$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)' triton
	touch $@

$(VENV)/.installed-report: pyproject.toml $(VENV)/.installed-torch | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[report]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-torch | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,report]'
	touch $@

$(VENV)/.installed-dashboard: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dashboard]'
	touch $@

# Debian's chromium for the real-browser test (Playwright's own browser download does not work here);
# checked on every run, installed when missing
chromium:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing Debian's chromium for the browser test"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; } \
		|| echo "chromium could not be installed: the browser test will be skipped"

demo: $(VENV)/.installed-report
	$(BIN)/moesim demo --out $(REPORT)

# The test runs keep Python's compiled modules (__pycache__/, ignored by git) even where the environment sets
# PYTHONDONTWRITEBYTECODE: each pytest process and each moesim it starts would otherwise compile every test module
# (with pytest's assertion rewriting) and every moesim module again.
test: $(VENV)/.installed-dev chromium
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -n 2 -m 'not wall_clock'
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -m wall_clock  # deadline tests, alone on the CPUs

dashboard: $(VENV)/.installed-dashboard
	$(BIN)/moesim dashboard

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# dist/moesim-*.whl and the sdist (the wheel is built from the sdist); build/ is cleared first, since setuptools
# would ship stale modules left in build/lib (editable installs never read build/)
wheel: | $(BIN)/python
	$(BIN)/python -m pip install --quiet build
	rm -rf build dist
	$(BIN)/python -m build

clean:
	rm -rf $(VENV) $(REPORT) .pytest_cache .ruff_cache build dist
