# The two commands a newcomer runs: `make demo` and `make test`.
# Both create (or refresh) the virtualenv in .venv themselves.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint proto bench-smoke clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m kvstore.proto
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/htapkv demo

# Everything, slow fault-injection suites included (this is what CI runs).
test: $(STAMP)
	$(BIN)/python -m pytest

# Skip the suites marked slow (real-process kills, long property runs).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# The protobuf modules are generated on import when the .proto files change;
# this makes sure they exist before mypy and import-linter read the tree.
proto: $(STAMP)
	$(BIN)/python -m kvstore.proto

lint: proto
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench-smoke: $(STAMP)
	$(BIN)/htapkv bench storage --quick --output bench-results/smoke
	$(BIN)/htapkv bench raft --quick --output bench-results/smoke

clean:
	rm -rf $(VENV) bench-results .pytest_cache .mypy_cache .ruff_cache .hypothesis
