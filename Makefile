# Two commands on a fresh machine:
#   make demo   set up .venv (the core service), then run the quick-start workflow
#               (local executor, SQLite trace, no API key, no network)
#   make test   set up .venv with everything the tests use, then lint (ruff) and run the tests
#               (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench setup setup-all clean

setup: $(VENV)/.core
setup-all: $(VENV)/.all

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.all: pyproject.toml $(VENV)/.core
	# torch first, pinned: the CPU build; an unpinned torch pulled in by transformers or
	# outlines would download several GB of CUDA
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	touch $@

demo: setup
	$(BIN)/dagwright run workflows/examples/quickstart.yaml

test: setup-all
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: setup-all
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/dag_bench.py

clean:
	rm -rf $(VENV) .dagwright .pytest_cache
