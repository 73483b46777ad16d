# The two commands of the README. Each sets itself up on a fresh machine (a venv in .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint setup

$(BIN)/bulkd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/bulkd

setup: $(BIN)/bulkd

# Main job: convert the bundled sample into var/out, then run the daemon on the default
# config and a local inbox (var/inbox) against the embedded Lexer simulator.
run: setup
	$(BIN)/bulkd demo

test: setup lint
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check bulkd tests benchmarks
	$(BIN)/ruff format --check bulkd tests benchmarks
	$(BIN)/mypy bulkd
