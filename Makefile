# Each target bootstraps .venv from pyproject.toml, so a fresh clone needs only `make demo` / `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(BIN)/python jobs/demo.py

test: $(STAMP_TEST)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP_TEST)
	$(BIN)/ruff check .

bench: $(STAMP_TEST)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/lloyd.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
