# Every target bootstraps .venv from pyproject.toml first, so a bare machine with
# Python 3.11+ and make needs nothing else.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run test test-repeat test-unit test-chaos lint format bench bench-cpu clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/groupbuy run

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# the whole suite N times in a row on a fresh clone of HEAD, and a table of every run and
# every failed test with its first error line (docs/RELIABILITY.md, "The suite passes
# every time"); BUSY=1 (or alt) keeps both cores busy, AT=23:59:30 starts every
# process's clock at that local time (a comma list cycles); J=3 runs three at a time
N ?= 10
test-repeat: $(STAMP)
	$(BIN)/python -m tests.repeat -n $(N) -j $(or $(J),1) --busy $(or $(BUSY),0) --at $(or $(AT),now) $(if $(KEEP),--keep,)

# the long variants of the reliability suite: a larger fuzzing budget, more race rounds,
# a busier sale day through the fault proxy (see docs/RELIABILITY.md)
test-chaos: $(STAMP)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-25} RACE_ROUNDS=$${RACE_ROUNDS:-40} \
	FAULT_SHOPPERS=$${FAULT_SHOPPERS:-40} RESTART_SHOPPERS=$${RESTART_SHOPPERS:-30} \
	$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/security

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf .data build *.egg-info

bench: $(STAMP)
	$(BIN)/python -m bench.run $(if $(QUICK),--quick,)

# CPU per order, per process: where placing (and paying) an order spends its time
bench-cpu: $(STAMP)
	$(BIN)/python -m bench.cpu
