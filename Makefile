# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run migrate check-config test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

routing.toml:
	cp routing.example.toml routing.toml
	@echo "routing.toml created from routing.example.toml: edit the agencies' chat ids for your region."

run: install routing.toml
	$(PY) -m bot migrate
	$(PY) -m bot run

migrate: install
	$(PY) -m bot migrate

check-config: install routing.toml
	$(PY) -m bot check-config

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The suite runs twice: on SQLite, then on PostgreSQL when a server answers at TEST_POSTGRES_URL (a fresh
# database per test; the tests that use no database ran in the first pass already).
TEST_POSTGRES_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/test
export TEST_POSTGRES_URL

test: lint
	$(VENV)/bin/pytest -q
	@if $(PY) -m tests.databases; then $(VENV)/bin/pytest -q -rs --db=postgres; fi

# Benchmarks against the fake Telegram server (README, Performance); `make bench ARGS=--quick` for a
# short run.
bench: install
	$(PY) -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
