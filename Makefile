# One entry point per job. `make demo` and `make test` each set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVICES := scripts/services.sh
export PURGER_TEST_KAFKA_BOOTSTRAP ?= 127.0.0.1:19092
export PURGER_TEST_DATABASE_URL ?= postgresql://purger:purger@127.0.0.1:5432/purger

.PHONY: help venv services services-down tools test test-unit test-integration lint typecheck demo bench soak clean \
	image image-smoke e2e-images cluster cluster-down e2e

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
	$(BIN)/pytest -q --ignore=tests/e2e

demo: venv services ## Ingest sample traffic of all four categories, purge, verify the audit trail.
	$(BIN)/python -m examples.demo

# Size knobs of `make bench`, e.g. `make bench BENCH_RECORDS=1000000`; unset ones take the
# defaults of benchmarks/config.py, which finish within ten minutes on 2 cores.
BENCH_KNOBS := BENCH_RECORDS BENCH_NAIVE_RECORDS BENCH_TOPIC_PARTITIONS BENCH_PRODUCERS \
	BENCH_PURGE_EXPIRED BENCH_PURGE_LIVE BENCH_PURGE_PARTITIONS BENCH_LOAD_RATE BENCH_LOAD_BATCH \
	BENCH_HOLD_COUNTS BENCH_SECTIONS
export $(BENCH_KNOBS)

bench: venv services ## Benchmarks (not part of `make test`): bench-results/*.json, a table in BENCHMARKS.md.
	$(BIN)/python -m benchmarks.run

# Knobs of `make soak`, e.g. `make soak SOAK_SECONDS=600 SOAK_SEED=7`; unset ones take the
# defaults of soak/config.py (`.venv/bin/python -m soak --help` lists them all).
SOAK_KNOBS := SOAK_SECONDS SOAK_SEED SOAK_WORKERS SOAK_RATE SOAK_DRAIN_SECONDS \
	SOAK_BROKER_RESTARTS SOAK_POSTGRES_RESTARTS SOAK_WORKER_KILLS SOAK_PAUSES SOAK_HOLD_CHANGES \
	SOAK_PURGE_PASSES SOAK_TOPIC_PARTITIONS SOAK_PARTITION_GRANULARITY SOAK_KEEP SOAK_SELF_TEST
export $(SOAK_KNOBS)

soak: venv services ## Chaos run on the real services (restarts them!) + checker table; then the poison property test.
	status=0; \
	$(BIN)/python -m soak || status=$$?; \
	PURGER_HYPOTHESIS_PROFILE=soak $(BIN)/pytest tests/integration/test_poison_property.py -q \
		|| status=$$?; \
	exit $$status

image: ## Build the purger image from the Dockerfile (docker, else buildah + a Debian base) and smoke-test it.
	scripts/image.sh build
	scripts/image.sh smoke

e2e-images: ## Build the in-cluster PostgreSQL and Kafka images of the end-to-end suite.
	scripts/image.sh services

cluster: ## Start the single-node Kubernetes cluster on loopback (builds it once into ~/.cache).
	scripts/cluster.sh up

cluster-down: ## Stop the cluster and remove every trace of it.
	scripts/cluster.sh down

# The end-to-end suite (not part of `make test`): starts the cluster, installs the chart as the
# README says, tears everything down at the end; a trap tears down even when pytest is killed.
e2e: venv tools image e2e-images ## Image + cluster + chart end to end (tests/e2e), then teardown.
	@start=$$(date +%s); status=0; \
	trap 'scripts/cluster.sh down' EXIT INT TERM; \
	scripts/cluster.sh build || exit $$?; \
	$(BIN)/pytest tests/e2e -q -p no:cacheprovider || status=$$?; \
	echo "e2e: $$(( $$(date +%s) - start )) s"; \
	exit $$status

clean: ## Remove the virtualenv and caches (not the service data).
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
