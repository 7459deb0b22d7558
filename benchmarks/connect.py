"""Kafka Connect with Debezium's JDBC sink, the ingestion a platform team would assemble.

A standalone worker (``org.apache.kafka.connect.cli.ConnectStandalone``) of the
broker's version, resolved from Maven Central by ``scripts/bench/setup.sh`` into
``~/.cache/purger-bench``, with JsonConverter (schemas on) and the Debezium JDBC
sink tuned for throughput: ``insert.mode=insert``, ``batch.size`` and the
consumer's ``max.poll.records`` 5000, PostgreSQL's bulk insert through
``UNNEST``. It reads the same records as ours, each in the JsonConverter schema
envelope, into tables that have no index at all (the plain target) or are range
partitioned by day on ``occurred_at`` (the partitioned target): the sink at its
fastest. It does no contract validation, no identifier normalisation, computes no
expiry and keeps no dead letters.

Timed like ours: from the first "newly assigned partitions" line of the worker's
log to the moment the group's committed offsets reach the end of every
partition (offsets are flushed every second, so the end is late by up to one
second). The moment the last row was written (``clock_timestamp()`` default of a
column of the target) is recorded beside it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from kafka import TopicPartition
from psycopg import sql

from benchmarks.config import BenchConfig
from benchmarks.machine import cpu_used, per_record, service_cpu_seconds
from benchmarks.watch import ConsumerWatch
from benchmarks.workspace import REPO, Workspace

log = logging.getLogger("benchmarks")

LOG4J = REPO / "scripts" / "bench" / "connect" / "log4j2.xml"
MAIN_CLASS = "org.apache.kafka.connect.cli.ConnectStandalone"
DEBEZIUM_VERSION = os.environ.get("BENCH_DEBEZIUM_VERSION") or "3.6.0.Final"
ASSIGNED = "newly assigned partitions"
COLUMNS = """
    record_id text NOT NULL,
    occurred_at timestamptz NOT NULL,
    tenant text NOT NULL,
    subjects jsonb NOT NULL,
    payload jsonb,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
"""


class ConnectMissing(RuntimeError):
    """Kafka Connect or the Debezium plugin is not in the cache (scripts/bench/setup.sh)."""


@dataclass(frozen=True)
class ConnectHome:
    """Where setup.sh put the worker's class path and the plugin."""

    libs: Path
    plugins: Path

    @classmethod
    def find(cls, kafka_version: str) -> ConnectHome:
        """The cached installation for ``kafka_version``; ConnectMissing if absent."""
        cache = Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "purger-bench")
        home = cls(
            cache / f"connect-{kafka_version}" / "libs",
            cache / "connect-plugins" / DEBEZIUM_VERSION,
        )
        if not (home.libs / f"connect-runtime-{kafka_version}.jar").exists():
            raise ConnectMissing(f"no Kafka Connect {kafka_version} in {home.libs}: run setup.sh")
        if not (home.plugins / ".complete").exists():
            raise ConnectMissing(f"no Debezium JDBC sink in {home.plugins}: run setup.sh")
        return home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_targets(url: str, topics: list[str], partitioned: bool, now: datetime) -> None:
    """One table per topic (the sink's ``${topic}`` naming), plain or by day."""
    with psycopg.connect(url, autocommit=True) as conn:
        for topic in topics:
            table = sql.Identifier(topic)
            if not partitioned:
                conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(COLUMNS)))
                continue
            conn.execute(
                sql.SQL("CREATE TABLE {} ({}) PARTITION BY RANGE (occurred_at)").format(
                    table, sql.SQL(COLUMNS)
                )
            )
            today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            for d in range(-32, 3):
                start = today + timedelta(days=d)
                conn.execute(
                    sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                        sql.Identifier(f"{topic}_p{start:%Y%m%d}"),
                        table,
                        sql.Literal(start),
                        sql.Literal(start + timedelta(days=1)),
                    )
                )


def _properties(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return path


def _first_assignment(log_file: Path) -> float | None:
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        if ASSIGNED in line and line.startswith("["):
            stamp = line[1 : line.index("]")]
            return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
    return None


def _last_row(url: str, topics: list[str]) -> tuple[int, float | None]:
    parts = [
        sql.SQL("SELECT count(*) AS n, max(written_at) AS t FROM {}").format(sql.Identifier(t))
        for t in topics
    ]
    statement = sql.SQL("SELECT sum(n), extract(epoch FROM max(t)) FROM ({}) AS s").format(
        sql.SQL(" UNION ALL ").join(parts)
    )
    with psycopg.connect(url) as conn:
        row = conn.execute(statement).fetchone()
    assert row is not None
    return int(row[0] or 0), float(row[1]) if row[1] is not None else None


def run_connect(
    ws: Workspace,
    config: BenchConfig,
    home: ConnectHome,
    *,
    tasks: int,
    partitioned: bool,
    topics: list[str],
    ends: dict[TopicPartition, int],
    label: str,
) -> dict[str, Any]:
    """One standalone worker with the sink over the whole envelope backlog, fresh DB and group."""
    url = ws.create_database(label, migrate=False)
    create_targets(url, topics, partitioned, datetime.now(UTC))
    name = f"bench-{ws.run_id}-{label}"
    ws.groups.append(f"connect-{name}")
    work = ws.tmp / label
    work.mkdir()
    worker = _properties(
        work / "worker.properties",
        {
            "bootstrap.servers": config.kafka_bootstrap,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "false",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": "true",
            "offset.storage.file.filename": str(work / "connect.offsets"),
            "offset.flush.interval.ms": "1000",
            "plugin.path": str(home.plugins),
            "listeners": f"http://127.0.0.1:{_free_port()}",
            "consumer.max.poll.records": str(config.batch_max_records),
            "consumer.auto.offset.reset": "earliest",
        },
    )
    info = psycopg.conninfo.conninfo_to_dict(url)
    connector = _properties(
        work / "sink.properties",
        {
            "name": name,
            "connector.class": "io.debezium.connector.jdbc.JdbcSinkConnector",
            "tasks.max": str(tasks),
            "topics": ",".join(topics),
            "connection.url": (
                f"jdbc:postgresql://{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}"
                f"/{info['dbname']}"
            ),
            "connection.username": str(info.get("user", "")),
            "connection.password": str(info.get("password", "")),
            "insert.mode": "insert",
            "primary.key.mode": "none",
            "schema.evolution": "none",
            "collection.name.format": "${topic}",
            "batch.size": str(config.batch_max_records),
            "dialect.postgres.unnest.insert.enabled": "true",
            "use.time.zone": "UTC",
        },
    )
    log_file = work / "connect.log"
    command = [
        "java",
        f"-Dlog4j2.configurationFile={LOG4J}",
        f"-Dconnect.log.file={log_file}",
        "-cp",
        f"{home.libs}/*",
        MAIN_CLASS,
        str(worker),
        str(connector),
    ]
    total = sum(ends.values())
    services_before = service_cpu_seconds()
    started = time.time()
    with (work / "connect.out").open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=work)
    watch = ConsumerWatch(proc.pid, config.kafka_bootstrap, f"connect-{name}", ends)
    watch.start()
    deadline = time.monotonic() + max(300.0, total / 300)
    try:
        # The worker never exits by itself: wait for the offsets (or its death).
        while not watch.done.wait(0.5) and proc.poll() is None:
            if time.monotonic() > deadline:
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        watch.stop()
    services = cpu_used(services_before, service_cpu_seconds())
    rows, last_row = _last_row(url, topics)
    first = _first_assignment(log_file) if log_file.exists() else None
    last = watch.all_committed_at
    seconds = (last - first) if first is not None and last is not None else None
    to_last_row = (last_row - first) if first is not None and last_row is not None else None
    ws.drop_database(label)
    result: dict[str, Any] = {
        "tasks": tasks,
        "target": "partitioned by day" if partitioned else "plain",
        "records": total,
        "stored": rows,
        "seconds": round(seconds, 3) if seconds is not None else None,
        "records_per_second": round(total / seconds, 1) if seconds else None,
        "seconds_to_last_row": round(to_last_row, 3) if to_last_row is not None else None,
        "startup_seconds": round(first - started, 3) if first is not None else None,
        "peak_rss_mb": max(watch.peaks_mb("main"), default=None),
        # Start-up included (about 10 s of CPU for the JVM and the plugin scan).
        "cpu_seconds": watch.cpu_seconds(),
        "cpu_us_per_record": round(watch.cpu_seconds() / total * 1e6, 1) if total else None,
        # What the same records cost PostgreSQL and the broker (their CPU over the run).
        "service_cpu_seconds": services,
        "service_cpu_us_per_record": per_record(services, total),
    }
    if rows != total or seconds is None:
        result["problem"] = f"stored {rows} of {total}" + watch.unobserved(first)
        with contextlib.suppress(OSError):
            tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            result["log_tail"] = (
                tail
                + (work / "connect.out")
                .read_text(encoding="utf-8", errors="replace")
                .splitlines()[-10:]
            )
    return result
