# moesim: `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REPORT ?= moesim-report
# The profiler's torch. 2.13.0 is a CPU build where a local wheel exists; on a GPU machine set
# TORCH_SPEC to the CUDA build you want (make TORCH_SPEC='torch==2.5.1' test).
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test bench lint format clean

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

demo: $(VENV)/.installed-report
	$(BIN)/moesim demo --out $(REPORT)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run.py

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(REPORT) .pytest_cache .ruff_cache
