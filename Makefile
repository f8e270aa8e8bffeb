# Two commands on a fresh machine:
#   make demo   set up .venv (the core service), then run the quick-start workflow
#               (local executor, SQLite trace, no API key, no network)
#   make test   set up .venv with everything the tests use, then lint (ruff) and run the tests
#               (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# setuptools adds a note to every editable install whose package is mapped onto a folder
# (here `dagwright` = the repository root): "Editable installation. Please be careful with
# folders in your working directory with the same name as your package". The layout is
# deliberate, so that one note is filtered out of our installs; every other warning shows.
$(VENV)/.core $(VENV)/.all bench: export PYTHONWARNINGS = ignore:Editable installation
# pip's own warnings (e.g. a package index in the machine's pip.conf that does not exist, one line
# per package) are not ours to fix: installs show pip's errors only.
PIP := $(BIN)/python -m pip install -qq

.PHONY: demo test typecheck bench setup setup-all clean

setup: $(VENV)/.core
setup-all: $(VENV)/.all

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e .
	touch $@

$(VENV)/.all: pyproject.toml $(VENV)/.core
	# torch first, pinned: the CPU build; an unpinned torch pulled in by transformers or
	# outlines would download several GB of CUDA
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev,local,retrieval,agents]'
	touch $@

demo: setup
	$(BIN)/dagwright run workflows/examples/quickstart.yaml

test: setup-all
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory typecheck
	# pytest-xdist: a worker per core (at most 4), each test file whole on one worker, so a
	# file's module fixtures (a Celery cluster, a server) start once; every worker starts its own
	# redis-server, and PostgreSQL tests each use a fresh schema
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile

# mypy strict ([tool.mypy] in pyproject.toml). mypy cannot follow setuptools' editable-install
# hook, so it sees the package through a path named `dagwright`: a symlink to this folder.
typecheck: setup-all
	mkdir -p $(VENV)/mypy-path && ln -sfn $(CURDIR) $(VENV)/mypy-path/dagwright
	MYPYPATH=$(VENV)/mypy-path $(BIN)/mypy -p dagwright

bench: setup-all
	$(PIP) -e '.[bench]'
	$(BIN)/python bench/dag_bench.py

clean:
	rm -rf $(VENV) .dagwright .pytest_cache .mypy_cache
