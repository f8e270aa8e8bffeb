# Two commands on a fresh machine:
#   make demo   set up .venv, then run the quick-start workflow (local executor, SQLite trace, offline)
#   make test   set up .venv, then lint (ruff) and run the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build; an unpinned torch pulled in by transformers or
	# outlines would download several GB of CUDA
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	touch $@

demo: setup
	$(BIN)/dagwright run workflows/examples/quickstart.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/dag_bench.py

clean:
	rm -rf $(VENV) .dagwright .pytest_cache
