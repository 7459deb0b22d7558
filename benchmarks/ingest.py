"""Section 1, ingestion: our consumer against its ceilings and the naive baseline.

Ours is ``purger consume --until-idle --workers N --json`` run as a subprocess with
its settings in ``PURGER_*`` variables, into a fresh database with a fresh group.
Its time runs from the first "partitions assigned" log line (written inside the
first poll, with microseconds in the JSON log format) to the moment the group's
committed offsets, read every 0.1 s through the admin API, reach the end offsets
of every partition: first poll to last offset commit, within about 0.1 s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from kafka import KafkaConsumer, TopicPartition
from psycopg import sql

from benchmarks.ceilings import Timed, copy_ceiling, naive, raw_consume
from benchmarks.config import BenchConfig
from benchmarks.machine import cpu_used, per_record, service_cpu_seconds
from benchmarks.produce import produce
from benchmarks.watch import ConsumerWatch
from benchmarks.workspace import REPO, Workspace
from purger.partitions import parent_table
from purger.settings import Settings

log = logging.getLogger("benchmarks")


def end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    """The end offset of every partition of ``topics``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","), client_id="bench-ends")
    try:
        parts = [
            TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))
        ]
        ends: dict[TopicPartition, int] = consumer.end_offsets(parts)
    finally:
        consumer.close()
    return ends


def _settings(ws: Workspace, config: BenchConfig, group: str) -> Settings:
    return Settings.model_validate(
        {
            "kafka_bootstrap_servers": config.kafka_bootstrap,
            "kafka_group_id": group,
            "kafka_client_id": f"bench-{ws.run_id}",
            "policy_file": ws.policy_file,
            "batch_max_records": config.batch_max_records,
        }
    )


def _child_env(ws: Workspace, config: BenchConfig, url: str, group: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PURGER_")}
    env.update(
        {
            "PURGER_DATABASE_URL": url,
            "PURGER_KAFKA_BOOTSTRAP_SERVERS": config.kafka_bootstrap,
            "PURGER_KAFKA_GROUP_ID": group,
            "PURGER_KAFKA_CLIENT_ID": f"bench-{ws.run_id}",
            "PURGER_POLICY_FILE": str(ws.policy_file),
            "PURGER_BATCH_MAX_RECORDS": str(config.batch_max_records),
            "PURGER_LOG_FORMAT": "json",
            "PURGER_LOG_LEVEL": "INFO",
        }
    )
    return env


def _first_assignment(stderr: Path) -> float | None:
    first: float | None = None
    for line in stderr.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("message") == "partitions assigned":
            at = datetime.fromisoformat(entry["time"]).timestamp()
            first = at if first is None else min(first, at)
    return first


def _db_span(url: str, ws: Workspace) -> float | None:
    """Seconds between the first and the last batch transaction (ingested_at), a cross-check."""
    parts = [
        sql.SQL("SELECT min(ingested_at) AS a, max(ingested_at) AS b FROM purger.{}").format(
            sql.Identifier(parent_table(name))
        )
        for name in ws.policy.categories
    ]
    statement = sql.SQL("SELECT extract(epoch FROM max(b) - min(a)) FROM ({}) AS s").format(
        sql.SQL(" UNION ALL ").join(parts)
    )
    with psycopg.connect(url) as conn:
        row = conn.execute(statement).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def _db_rows(url: str, ws: Workspace) -> int:
    """Records in the category tables, counted by the database."""
    parts = [
        sql.SQL("SELECT count(*) AS n FROM purger.{}").format(sql.Identifier(parent_table(name)))
        for name in ws.policy.categories
    ]
    statement = sql.SQL("SELECT sum(n) FROM ({}) AS s").format(sql.SQL(" UNION ALL ").join(parts))
    with psycopg.connect(url) as conn:
        row = conn.execute(statement).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def run_ours(
    ws: Workspace,
    config: BenchConfig,
    workers: int,
    ends: dict[TopicPartition, int],
    *,
    label: str | None = None,
    settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``purger consume --until-idle --workers N`` over the whole backlog, fresh DB and group.

    ``settings``: more ``PURGER_*`` variables for the consumer (e.g. write-behind off).
    """
    label = label or f"w{workers}"
    url = ws.create_database(label)
    group = ws.group(label)
    stderr_path = ws.tmp / f"consume-{label}.stderr"
    stdout_path = ws.tmp / f"consume-{label}.stdout"
    command = [
        sys.executable,
        "-m",
        "purger.cli",
        "consume",
        "--until-idle",
        "--workers",
        str(workers),
        "--json",
    ]
    total = sum(ends.values())
    with stderr_path.open("wb") as err, stdout_path.open("wb") as out:
        services_before = service_cpu_seconds()
        started = time.time()
        env = _child_env(ws, config, url, group) | (settings or {})
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, cwd=REPO)
        watch = ConsumerWatch(proc.pid, config.kafka_bootstrap, group, ends)
        watch.start()
        try:
            code = proc.wait(timeout=max(300.0, total / 300))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            watch.stop()
        exited = time.time()
        services = cpu_used(services_before, service_cpu_seconds())
    summary: dict[str, Any] = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        summary = json.loads(stdout_path.read_text(encoding="utf-8"))
    stored = sum(int(c.get("stored", 0)) for c in summary.get("categories", {}).values())
    first = _first_assignment(stderr_path)
    last = watch.all_committed_at
    seconds = (last - first) if first is not None and last is not None else None
    span = _db_span(url, ws)
    rows = _db_rows(url, ws)
    if workers > 1:
        ws.drop_database(label)
    worker_peaks = watch.peaks_mb("main" if workers == 1 else "worker")
    result: dict[str, Any] = {
        "workers": workers,
        "exit_code": code,
        "records": total,
        "stored": stored,
        "seconds": round(seconds, 3) if seconds is not None else None,
        "records_per_second": round(total / seconds, 1) if seconds else None,
        "process_wall_seconds": round(exited - started, 3),
        "startup_seconds": round(first - started, 3) if first is not None else None,
        "db_batch_span_seconds": round(span, 3) if span is not None else None,
        "peak_rss_mb_per_worker": worker_peaks,
        # Of the consumer's own processes: the share of the cores the services did not get.
        "cpu_seconds": watch.cpu_seconds(),
        "cpu_us_per_record": round(watch.cpu_seconds() / total * 1e6, 1) if total else None,
        "peak_rss_mb_parent": watch.peaks_mb("main") if workers > 1 else [],
        # What the same records cost PostgreSQL and the broker (their CPU over the run).
        "service_cpu_seconds": services,
        "service_cpu_us_per_record": per_record(services, total),
        "errors": summary.get("errors", []),
        # Where the workers' time went (purger consume --json), summed over workers.
        "stage_us_per_record": {
            stage: round(float(seconds) / total * 1e6, 1)
            for stage, seconds in (summary.get("seconds") or {}).items()
        }
        if total
        else {},
    }
    result["rows_in_database"] = rows
    result["duplicates"] = sum(
        int(c.get("duplicates", 0)) for c in summary.get("categories", {}).values()
    )
    # A broker restart or a rebalance makes Kafka redeliver what the database already
    # holds: counted as duplicates, not stored again. Every record stored once is the test.
    if code != 0 or rows != total or seconds is None:
        result["problem"] = (
            f"exit code {code}, {rows} of {total} records in the database" + watch.unobserved(first)
        )
        # The workspace (and the log file) is removed at the end: keep the tail.
        lines = stderr_path.read_text(encoding="utf-8", errors="replace").splitlines()
        result["stderr_tail"] = lines[-20:]
    return result


def run(ws: Workspace, config: BenchConfig) -> dict[str, Any]:
    """The whole ingestion section."""
    ws.create_topics()
    topics = {name: c.topic for name, c in ws.policy.categories.items()}
    now = datetime.now(UTC)
    log.info("ingest: producing %s messages", config.records)
    produced = produce(
        config.kafka_bootstrap,
        topics=topics,
        run_id=ws.run_id,
        total=config.records,
        processes=config.producers,
        now=now,
    )
    ends = end_offsets(config.kafka_bootstrap, sorted(topics.values()))
    if sum(ends.values()) != config.records or produced.errors:
        raise RuntimeError(
            f"produced {sum(ends.values())} of {config.records} messages "
            f"({produced.errors} send errors)"
        )
    out: dict[str, Any] = {
        "produced": {
            "messages": produced.messages,
            "mean_message_bytes": round(produced.bytes / produced.messages, 1),
            "seconds": round(produced.seconds, 3),
            "messages_per_second": round(produced.messages / produced.seconds, 1),
            "topics": len(topics),
            "partitions_per_topic": config.topic_partitions,
            "producer_processes": config.producers,
        }
    }
    log.info("ingest: ceiling (a), raw consumption + JSON decoding")
    raw = raw_consume(_settings(ws, config, ws.group("raw")), list(topics.values()), config.records)
    out["ceiling_raw_consume"] = raw.as_dict()
    for workers in (1, 2):
        log.info("ingest: ours with %s worker(s)", workers)
        out[f"ours_{workers}_worker{'s' if workers > 1 else ''}"] = run_ours(
            ws, config, workers, ends
        )
    log.info("ingest: ceiling (b), COPY of the same rows")
    source = config.database_url(ws.db_name("w1"))
    copy = copy_ceiling(source, ws.create_database("copy"), ws.policy)
    ws.drop_database("copy")
    ws.drop_database("w1")
    out["ceiling_copy"] = copy.as_dict()
    log.info("ingest: baseline (c), naive consumer on %s records", config.naive_records)
    base = naive(
        _settings(ws, config, ws.group("naive")),
        ws.create_database("naive"),
        ws.policy,
        config.naive_records,
        now,
    )
    ws.drop_database("naive")
    out["baseline_naive"] = base.as_dict()
    _ratios(out, raw, copy, base)
    return out


def _ratios(out: dict[str, Any], raw: Timed, copy: Timed, base: Timed) -> None:
    one = out["ours_1_worker"].get("records_per_second") or 0.0
    two = out["ours_2_workers"].get("records_per_second") or 0.0
    out["ratios"] = {
        "ours_1_vs_raw_consume": round(one / raw.rate, 3) if raw.rate else None,
        "ours_2_vs_raw_consume": round(two / raw.rate, 3) if raw.rate else None,
        "ours_1_vs_copy": round(one / copy.rate, 3) if copy.rate else None,
        "ours_2_vs_copy": round(two / copy.rate, 3) if copy.rate else None,
        "ours_1_vs_naive": round(one / base.rate, 2) if base.rate else None,
        "ours_2_vs_naive": round(two / base.rate, 2) if base.rate else None,
        "ours_2_vs_ours_1": round(two / one, 3) if one else None,
    }
