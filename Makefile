# onfinish: every target installs what it needs first, so each works on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The processors' native core (processors/native/, decision 0011): built with the machine's cargo.
NATIVE := processors/native
NATIVE_SOURCES := $(NATIVE)/Cargo.toml $(NATIVE)/Cargo.lock $(NATIVE)/pyproject.toml $(wildcard $(NATIVE)/src/*.rs) $(wildcard $(NATIVE)/*.pyi)
# The Vercel AI SDK client of onfinish collect's tests (tests/collect/node), from its lock file.
NODE_DIR   := tests/collect/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

.PHONY: install stack-install stack-up stack-down stack-status demo test test-unit test-native test-integration test-faults bench lint format clean

# The -W filter hides one note, not a warning: setuptools reports every editable install of a
# package-dir layout as "Editable installation" through the warnings channel (its InformationOnly
# class: it has no other way to reach pip's output). Packaging warnings still show.
$(STAMP): pyproject.toml constraints.txt $(NATIVE_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The native core first: the `processors` extra requires onfinish-native, which no index serves
	# yet, and a requirement that is already installed is satisfied from here.
	$(BIN)/python -m pip install --quiet -c constraints.txt ./$(NATIVE)
	$(BIN)/python -W "ignore:Editable installation:UserWarning" -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

## install: the virtualenv with onfinish and its dev tools, Kafka's jars, the schema registry binary and the Node test client
install: $(STAMP) stack-install $(NODE_STAMP)

stack-install: $(STAMP)
	$(BIN)/onfinish stack install

## stack-up / stack-down / stack-status: the local Kafka, schema registry and ClickHouse
stack-up: install
	$(BIN)/onfinish stack up

stack-down: $(STAMP)
	$(BIN)/onfinish stack down

stack-status: $(STAMP)
	$(BIN)/onfinish stack status

## demo: the main job on the embedded default (stack up, then a real round trip through it)
demo: install
	$(BIN)/onfinish demo

## test: the native core's Rust tests, then unit and integration tests against the real local stack
## (started and stopped by pytest)
test: install test-native
	$(BIN)/pytest

## test-native: the Rust unit tests of processors/native (its regex rewriting, below what Python sees);
## cargo links them against the virtualenv's Python
test-native: $(STAMP)
	cd $(NATIVE) && PYO3_PYTHON=$(abspath $(BIN)/python) cargo test --quiet

## test-unit: every test that needs no running stack or browser, over all of tests/, in seconds
## (property tests try a tenth of their examples here: tests/conftest.py; make test tries them all)
test-unit: $(STAMP)
	ONFINISH_TEST_PROFILE=unit $(BIN)/pytest -m "not integration"

## test-integration: the tests against the real local stack and Chromium, and the calibrations
test-integration: install
	$(BIN)/pytest -m integration

## test-faults: the fault suite alone (also part of `make test`)
test-faults: install
	$(BIN)/pytest -m faults tests/integration

## bench: benchmarks against a baseline measured in the same run (bench/results/latest.json, README table)
bench: install
	$(BIN)/python -m bench

## lint: ruff and mypy, clean
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info $(NATIVE)/target
