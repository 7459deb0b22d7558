"""Entry point of ``make bench``: run the sections, write the results, clean up.

Knobs (environment, also as make variables of the same name): BENCH_RECORDS,
BENCH_NAIVE_RECORDS, BENCH_TOPIC_PARTITIONS, BENCH_PRODUCERS,
BENCH_BATCH_MAX_RECORDS, BENCH_PURGE_EXPIRED, BENCH_PURGE_LIVE,
BENCH_PURGE_PARTITIONS, BENCH_LOAD_RATE, BENCH_LOAD_BATCH,
BENCH_LOAD_BASELINE_SECONDS, BENCH_HOLD_COUNTS, BENCH_SECTIONS
(ingest,purge,load,holds,connect,partman), BENCH_CONNECT_RECORDS,
BENCH_COMPARE_ROUNDS, BENCH_PARTMAN_EXPIRED, BENCH_DATABASE_URL,
BENCH_KAFKA_BOOTSTRAP, BENCH_RESULTS_DIR, BENCH_MARKDOWN. The comparisons
(connect, partman) need ``scripts/bench/setup.sh`` first (``make bench`` runs it).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from benchmarks import compare, holdcost, ingest, machine, partman, purging, report, underload
from benchmarks.config import (
    ISSUE_EXPIRED,
    ISSUE_RECORDS,
    BenchConfig,
    BenchConfigError,
    load_config,
)
from benchmarks.workspace import Workspace

log = logging.getLogger("benchmarks")

# Kafka Connect is resolved at the broker's version: scripts/services.sh's default, or the
# version it was told (the same variable; read before PURGER_* leave the environment).
KAFKA_VERSION = os.environ.get("PURGER_KAFKA_VERSION") or "4.3.1"


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s bench: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    # kafka-python warns about every slow event-loop task; the figures say what matters.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def _versions(config: BenchConfig) -> tuple[str, str]:
    postgresql = kafka = "?"
    try:
        with psycopg.connect(config.database_url("postgres")) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            postgresql = str(row[0]).split()[0] if row else "?"
    except psycopg.Error:
        pass
    try:
        admin = KafkaAdminClient(bootstrap_servers=config.kafka_bootstrap.split(","))
        try:
            broker = admin.describe_cluster()["brokers"][0]["broker_id"]
            found = re.search(r"\d+(\.\d+)+", str(admin.get_broker_version_data(broker)))
            kafka = found.group(0) if found else "?"
        finally:
            admin.close()
    except (KafkaError, KeyError, IndexError):
        pass
    return postgresql, kafka


def _section(result: dict[str, Any], name: str, action: Callable[[], dict[str, Any]]) -> None:
    started = time.perf_counter()
    log.info("section %s: start", name)
    try:
        result[name] = action()
    except Exception as exc:
        log.exception("section %s failed", name)
        result[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
    result.setdefault("section_seconds", {})[name] = round(time.perf_counter() - started, 1)
    log.info("section %s: %.0f s", name, time.perf_counter() - started)


def run(config: BenchConfig) -> dict[str, Any]:
    """Every selected section; the result as plain data."""
    started = time.perf_counter()
    result: dict[str, Any] = {
        "machine": machine.describe(),
        "config": config.as_dict(),
        "notes": [],
    }
    result["postgresql"], result["kafka"] = _versions(config)
    sections = config.sections
    holds_ok = holdcost.available()
    ws = Workspace(config)
    log.info("run %s: sections %s", ws.run_id, ", ".join(sections))
    try:
        if "ingest" in sections:
            _section(result, "ingest", lambda: ingest.run(ws, config))
        if {"purge", "load"} & set(sections):
            holds = list(config.hold_counts) if "holds" in sections and holds_ok else []
            prepared: list[purging.Prepared] = []

            def prepare() -> dict[str, Any]:
                p = purging.prepare(
                    ws, config, purge="purge" in sections, load="load" in sections, holds=holds
                )
                prepared.append(p)
                return {"held_rows": p.held_rows, "flat_rows": p.flat_rows}

            _section(result, "prepare", prepare)
            if prepared and "purge" in sections:
                _section(result, "purge", lambda: purging.run(ws, config, prepared[0]))
            if prepared and prepared[0].load_label:
                label = prepared[0].load_label
                _section(result, "load", lambda: underload.run(ws, config, label))
            if "holds" in sections:
                pass_m = (result.get("purge") or {}).get("pass_m")
                clones = prepared[0].hold_clones if prepared else {}
                held = prepared[0].held_rows if prepared else {}
                _section(result, "holds", lambda: holdcost.run(ws, config, clones, held, pass_m))
        if "connect" in sections:
            _section(result, "connect", lambda: compare.run(config, KAFKA_VERSION))
        if "partman" in sections:
            prepared_pm: list[dict[str, Any]] = []

            def prepare_pm() -> dict[str, Any]:
                prepared_pm.append(partman.prepare(ws, config))
                return prepared_pm[-1]

            _section(result, "partman_prepare", prepare_pm)
            if prepared_pm:
                _section(result, "partman", lambda: partman.run(ws, config, prepared_pm[0]))
    finally:
        problems = ws.close()
        if problems:
            result["notes"].append("cleanup problems: " + "; ".join(problems))
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["machine"]["load_average_at_end"] = machine.load_average()
    result["targets"] = report.targets(result)
    return result


def main() -> int:
    """Run, write ``bench-results/<timestamp>.json`` and append to BENCHMARKS.md."""
    _configure_logging()
    try:
        config = load_config()
    except BenchConfigError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    # Children get explicit PURGER_* settings; none of the caller's may leak in.
    for key in [k for k in os.environ if k.startswith("PURGER_")]:
        del os.environ[key]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = run(config)
    if "ingest" in config.sections and config.records != ISSUE_RECORDS:
        result["notes"].append(
            f"N = {config.records:,} records, not issue 6's {ISSUE_RECORDS:,} "
            "(the default; BENCH_RECORDS was set)."
        )
    if "purge" in config.sections and config.purge_expired != ISSUE_EXPIRED:
        result["notes"].append(
            f"M = {config.purge_expired:,} expired records, not issue 6's {ISSUE_EXPIRED:,}."
        )
    path = report.write_json(result, config.results_dir, stamp)
    report.append_markdown(result, config.markdown)
    log.info("results: %s; table appended to %s; %.0f s", path, config.markdown, result["seconds"])
    failed = [
        k
        for k in (
            "ingest",
            "prepare",
            "purge",
            "load",
            "holds",
            "connect",
            "partman_prepare",
            "partman",
        )
        if "error" in (result.get(k) or {})
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
