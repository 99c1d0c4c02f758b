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
	$(BIN)/pip install -q -e ".[plot]"
	touch $@

$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@ $(STAMP_RUN)

# The demo: 1,000,000 synthetic customers written as Parquet, clustered by jobs/demo.yaml
# (profile table, scatter PNG) and swept over K by jobs/sweep.yaml (elbow PNG), each on a
# local cluster of 2 worker processes. `make demo DEMO_DIR=/tmp/demo` writes elsewhere.
DEMO_DIR ?= demo-output
DEMO_SET := --set input.url=$(DEMO_DIR)/customers --set output.overwrite=true

demo: $(STAMP_RUN)
	@$(BIN)/python jobs/demo.py --write-parquet $(DEMO_DIR)/customers
	@$(BIN)/dask-kmeans run jobs/demo.yaml $(DEMO_SET) --set output.model=$(DEMO_DIR)/model \
	    --set output.labels=$(DEMO_DIR)/labels --set output.plot=$(DEMO_DIR)/clusters.png
	@echo
	@$(BIN)/dask-kmeans run jobs/sweep.yaml $(DEMO_SET) --set output.table=$(DEMO_DIR)/sweep.csv \
	    --set output.plot=$(DEMO_DIR)/elbow.png
	@echo
	@echo "demo files in $(DEMO_DIR)/: customers/ (the input, Parquet), model/ (centres," \
	    "profile.csv, profile.md), labels/ (each customer's cluster), clusters.png (scatter)," \
	    "elbow.png and sweep.csv (choosing K)"

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
