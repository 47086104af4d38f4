# `make test` is the one command that installs what the tests need and runs them.
# Everything lands in .venv; nothing is installed system-wide.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test test-fast lint typecheck pytest install clean up

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Everything on this machine: Redis, the panel and an agent, until Ctrl-C.
up: install
	$(BIN)/provision up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

# Under a minute, no services: the pure and unit tests, and the panel's stores on fakeredis.
test-fast: install
	$(BIN)/pytest tests/unit tests/fast -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
