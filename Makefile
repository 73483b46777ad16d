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

# Main job: the daemon on the default config and a local inbox (var/inbox). With no
# upload.api_url it uploads to the embedded Lexer simulator, and --sample drops the bundled
# sample CSV into var/inbox/demo/customer_record/ so there is something to watch. Ctrl-C stops.
run: setup
	$(BIN)/bulkd run --config config/bulkd.example.toml --sample

test: setup lint
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check bulkd tests benchmarks
	$(BIN)/ruff format --check bulkd tests benchmarks
	$(BIN)/mypy bulkd
