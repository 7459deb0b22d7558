# One entry point per job. `make demo` and `make test` each set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVICES := scripts/services.sh
export PURGER_TEST_KAFKA_BOOTSTRAP ?= 127.0.0.1:19092
export PURGER_TEST_DATABASE_URL ?= postgresql://purger:purger@127.0.0.1:5432/purger

.PHONY: help venv services services-down tools test test-no-e2e test-unit test-integration lint typecheck demo bench \
	soak clean image image-smoke e2e-images cluster cluster-down e2e

help: ## This list.
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

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

# `make test` = `make test-no-e2e` while the images and the cluster's binaries build in the
# background, then the end-to-end suite on a real cluster, its teardown (always), and how long
# each part took (scripts/e2e/run.sh). On 2 cores: 10-11 min warm, 16 min with empty build caches.
test: venv ## Everything: lint, unit, integration, deploy checks, then the end-to-end suite on a real cluster.
	PURGER_E2E_PYTEST=$(BIN)/pytest scripts/e2e/run.sh --label "lint, unit, integration and deploy tests" \
		-- $(MAKE) --no-print-directory test-no-e2e

test-no-e2e: venv services tools ## `make test` without the end-to-end suite: lint, unit, integration, deploy checks.
	$(MAKE) lint
	$(BIN)/pytest -q --ignore=tests/e2e

demo: venv services ## Ingest sample traffic of all four categories, purge, verify the audit trail.
	$(BIN)/python -m examples.demo

# Size knobs of `make bench`, e.g. `make bench BENCH_RECORDS=1000000`; unset ones take the
# defaults of benchmarks/config.py, which finish within about 20 minutes on 2 cores.
BENCH_KNOBS := BENCH_RECORDS BENCH_NAIVE_RECORDS BENCH_TOPIC_PARTITIONS BENCH_PRODUCERS \
	BENCH_PURGE_EXPIRED BENCH_PURGE_LIVE BENCH_PURGE_PARTITIONS BENCH_LOAD_RATE BENCH_LOAD_BATCH \
	BENCH_HOLD_COUNTS BENCH_SECTIONS BENCH_CONNECT_RECORDS BENCH_COMPARE_ROUNDS BENCH_PARTMAN_EXPIRED
export $(BENCH_KNOBS)

# The comparisons (sections connect and partman) need Kafka Connect, the Debezium JDBC sink
# (Maven Central, cached in ~/.cache/purger-bench) and Debian's pg_partman: setup.sh installs
# them once; a complete cache is reused.
bench: venv services ## Benchmarks (not part of `make test`): bench-results/*.json, a table in BENCHMARKS.md.
	scripts/bench/setup.sh
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

# The end-to-end suite alone (also part of `make test`): builds what it needs (in parallel,
# cached), starts the cluster, installs the chart as the README says, tears everything down at
# the end; a trap tears down even when pytest is killed.
e2e: venv ## Image + cluster + chart end to end (tests/e2e), then teardown.
	PURGER_E2E_PYTEST=$(BIN)/pytest scripts/e2e/run.sh

clean: ## Remove the virtualenv and caches (not the service data).
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
