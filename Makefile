# One entry point per job. `make demo` and `make test` each set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVICES := scripts/services.sh
export PURGER_TEST_KAFKA_BOOTSTRAP ?= 127.0.0.1:19092
export PURGER_TEST_DATABASE_URL ?= postgresql://purger:purger@127.0.0.1:5432/purger

.PHONY: help venv services services-down tools test test-unit test-integration lint typecheck demo bench clean

help: ## This list.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed ## Create .venv with the project and its dev tools.

services: venv ## Start PostgreSQL and Kafka on loopback (idempotent).
	$(SERVICES) up

services-down: ## Stop PostgreSQL and Kafka.
	$(SERVICES) down

tools: ## Install helm (built with Go) and promtool (Debian) for the chart checks.
	scripts/install-tools.sh

lint: venv ## ruff and mypy.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-unit: venv ## Fast tests of pure logic.
	$(BIN)/pytest tests/unit -q

test: venv services tools ## Everything: lint, unit, integration and deploy checks on the real services.
	$(MAKE) lint
	$(BIN)/pytest -q

demo: venv services ## Ingest sample traffic of all four categories, purge, verify the audit trail.
	$(BIN)/python -m consumers.demo

# Size knobs of `make bench`, e.g. `make bench BENCH_RECORDS=1000000`; unset ones take the
# defaults of benchmarks/config.py, which finish within ten minutes on 2 cores.
BENCH_KNOBS := BENCH_RECORDS BENCH_NAIVE_RECORDS BENCH_TOPIC_PARTITIONS BENCH_PRODUCERS \
	BENCH_PURGE_EXPIRED BENCH_PURGE_LIVE BENCH_PURGE_PARTITIONS BENCH_LOAD_RATE BENCH_LOAD_BATCH \
	BENCH_HOLD_COUNTS BENCH_SECTIONS
export $(BENCH_KNOBS)

bench: venv services ## Benchmarks (not part of `make test`): bench-results/*.json, a table in BENCHMARKS.md.
	$(BIN)/python -m benchmarks.run

clean: ## Remove the virtualenv and caches (not the service data).
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
