# Two commands: `make run` (execute the notebook series) and `make test` (lint + unit tests + nbval).
# Both create .venv from nothing with the tested pins in requirements/constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= dev,semantic,monitor

.PHONY: install run test lint unit nbval lab bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e ".[$(EXTRAS)]"
	touch $@

run: $(STAMP)
	$(BIN)/python -m cookbook run

test: lint unit nbval

lint: $(STAMP)
	$(BIN)/ruff check cookbook tests benchmarks notebooks
	$(BIN)/lint-imports

unit: $(STAMP)
	COOKBOOK_PROFILE=smoke $(BIN)/python -m pytest -q tests

nbval: $(STAMP)
	COOKBOOK_PROFILE=smoke $(BIN)/python -m pytest -q --nbval-lax notebooks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

bench: $(STAMP)
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
