# neurodata: `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := test,celegans,mcmc,community,dist
# Real recordings resolve from ../shared/data when it exists (CI and the team's machines).
ifneq ($(wildcard ../shared/data),)
export NEURODATA_MIRROR ?= $(abspath ../shared/data)
endif
export MPLBACKEND := Agg

.PHONY: install test demo bench lint tutorials clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -n 2 -q --durations=15

demo: install
	$(BIN)/python -m demo --out out

bench: install
	$(BIN)/python -m benchmarks

tutorials: install
	$(BIN)/python -m pytest -q tests/test_tutorials.py

lint: install
	$(BIN)/ruff check neurodata tests benchmarks demo

clean:
	rm -rf out .pytest_cache
