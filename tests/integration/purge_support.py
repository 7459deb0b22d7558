"""Helpers of the purge, scheduler and audit tests (records, seeding, replicas)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql
from psycopg.types.json import Jsonb

from purger.metrics import Metrics
from purger.partitions import PartitionManager, keys_table, parent_table, range_containing
from purger.policy import RetentionPolicy
from purger.purge import Purger
from purger.records import Record
from purger.settings import Settings
from purger.stats import Stats
from purger.storage import Envelope
from tests.integration.support import REPO, settings_env, wait_until

DAY = timedelta(days=1)
_ids = itertools.count(1)

Target = str | psycopg.Connection[Any]


@contextlib.contextmanager
def _connected(target: Target) -> Iterator[psycopg.Connection[Any]]:
    """A connection to ``target``: a URL (connected for the call) or an open connection."""
    if isinstance(target, str):
        with psycopg.connect(target, autocommit=True) as conn:
            yield conn
    else:
        yield target


@contextlib.contextmanager
def blocking_session(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A session whose open transaction (and its locks) the test controls; rolled back after."""
    conn = psycopg.connect(url)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def midnight(instant: datetime) -> datetime:
    """The UTC day boundary at or before ``instant`` (a P1D partition boundary)."""
    return range_containing(instant, DAY)[0]


def envelope(expires_at: datetime, *, record_id: str | None = None, tenant: str = "t1") -> Envelope:
    """A record that expires at ``expires_at`` (occurred_at is not used by storage)."""
    rid = record_id or f"r{next(_ids):08d}"
    record = Record(
        record_id=rid,
        occurred_at=expires_at - timedelta(days=90),
        tenant=tenant,
        subjects={"msisdn": [f"+3161234{next(_ids) % 10000:04d}"]},
        payload={"seq": rid, "bytes": 123},
    )
    return Envelope(record, expires_at, topic="test", partition=0, offset=next(_ids))


def make_purger(settings: Settings, policy: RetentionPolicy, **overrides: Any) -> Purger:
    """The purge engine on this test's database, with a private metrics registry."""
    options: dict[str, Any] = {
        "lock_timeout_ms": settings.lock_timeout_ms,
        "statement_timeout_ms": settings.statement_timeout_ms,
        "delete_batch_size": settings.delete_batch_size,
    }
    options.update(overrides)
    metrics = Metrics(CollectorRegistry(), list(policy.categories), ingest=False)
    return Purger(settings.conninfo(), policy, metrics, **options)


def make_stats(settings: Settings, policy: RetentionPolicy) -> Stats:
    """The read model on this test's database, with a private metrics registry."""
    metrics = Metrics(CollectorRegistry(), list(policy.categories), ingest=False)
    return Stats(settings.conninfo(), policy, metrics)


def seed_backdated(url: str, category: str, expiries: Iterable[datetime]) -> list[str]:
    """Store records that have already expired (the consumers would refuse them).

    Partitions come from the purger's own PartitionManager and the registry's
    row counts are kept exact, as ``Storage.store`` does; only the arrival check
    against the database clock is bypassed. Returns the record ids.
    """
    items = [envelope(e) for e in expiries]
    manager = PartitionManager(DAY)
    with psycopg.connect(url, autocommit=True) as conn:
        manager.ensure(conn, category, [i.expires_at for i in items])
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    sql.SQL(
                        "INSERT INTO purger.{} (record_id, tenant, occurred_at, expires_at, "
                        "subject_keys, subjects, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    ).format(sql.Identifier(parent_table(category))),
                    [
                        (
                            i.record.record_id,
                            i.record.tenant,
                            i.record.occurred_at,
                            i.expires_at,
                            i.record.subject_keys,
                            Jsonb(i.record.subjects),
                            Jsonb(i.record.payload),
                        )
                        for i in items
                    ],
                )
            count_into_registry(conn, category, [i.expires_at for i in items])
    return [i.record.record_id for i in items]


def count_into_registry(
    conn: psycopg.Connection[Any], category: str, expiries: Iterable[datetime]
) -> None:
    """Add rows seeded past ``Storage`` to the registry's counts and keys, as ``store`` does."""
    key_seeded(conn, category)
    per_start: dict[datetime, int] = {}
    for e in expiries:
        start = range_containing(e, DAY)[0]
        per_start[start] = per_start.get(start, 0) + 1
    for start, n in per_start.items():
        conn.execute(
            "UPDATE purger.partitions SET row_count = row_count + %s "
            "WHERE category = %s AND range_start = %s",
            (n, category, start),
        )


def key_seeded(conn: psycopg.Connection[Any], category: str) -> None:
    """Give rows seeded past ``Storage`` their key in the key registry."""
    conn.execute(
        sql.SQL(
            "INSERT INTO purger.{} (record_id, expires_at) SELECT record_id, expires_at "
            "FROM purger.{} ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(keys_table(category)), sql.Identifier(parent_table(category)))
    )


def stored(url: Target, category: str) -> dict[str, tuple[Any, ...]]:
    """Every stored row of ``category`` by record id (all columns, to compare unchanged)."""
    with _connected(url) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT record_id, tenant, occurred_at, expires_at, ingested_at, subject_keys, "
                "subjects, payload, source_topic, source_partition, source_offset FROM purger.{}"
            ).format(sql.Identifier(parent_table(category)))
        ).fetchall()
    return {str(r[0]): tuple(r) for r in rows}


def audit_entries(url: Target, kind: str | None = None) -> list[dict[str, Any]]:
    """Audit entries (seq, kind, recorded_at, content) in chain order."""
    with _connected(url) as conn:
        rows = conn.execute(
            "SELECT seq, kind, recorded_at, content FROM purger.audit_log "
            "WHERE %(kind)s::text IS NULL OR kind = %(kind)s ORDER BY seq",
            {"kind": kind},
        ).fetchall()
    return [{"seq": r[0], "kind": r[1], "recorded_at": r[2], "content": r[3]} for r in rows]


def audited_rows(url: str) -> int:
    """Records removed according to the audit trail (drops plus row deletes)."""
    return sum(
        int(e["content"]["rows"])
        for e in audit_entries(url)
        if e["kind"] in ("partition_dropped", "rows_deleted")
    )


def registry(url: Target, category: str) -> list[tuple[str, datetime, datetime, int, str]]:
    """The purger's partition registry of ``category``: name, start, end, row_count, state."""
    with _connected(url) as conn:
        return [
            (str(r[0]), r[1], r[2], int(r[3]), str(r[4]))
            for r in conn.execute(
                "SELECT partition_name, range_start, range_end, row_count, state "
                "FROM purger.partitions WHERE category = %s ORDER BY range_start",
                (category,),
            )
        ]


def detach_pending(url: str, partition: str) -> bool | None:
    """pg_inherits' view of ``partition``: True pending, False attached, None detached."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE c.relname = %s",
            (partition,),
        ).fetchone()
    return None if row is None else bool(row[0])


def purge_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """PURGER_* variables of ``settings`` plus ``extra`` (name without prefix)."""
    env = settings_env(settings)
    env.update({f"PURGER_{k.upper()}": str(v) for k, v in extra.items()})
    return env


@dataclass
class Replica:
    """A ``purger`` service process with its log in a file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> Replica:
        """Start the process (its stderr and stdout go to ``log_path``)."""
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "purger.cli", *self.args],
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        return self

    def log(self) -> str:
        """What the process logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def port(self) -> int | None:
        """The HTTP port the process announced, once it did."""
        match = re.search(r"on port (\d+)", self.log())
        return int(match.group(1)) if match else None

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Scrape /metrics: (sample name, sorted labels) -> value."""
        port = wait_until(self.port, 60, f"{self.name} to serve HTTP")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def runs(self, outcome: str) -> float:
        """purger_purge_runs_total{outcome} of this replica."""
        return self.metrics().get(("purger_purge_runs_total", (("outcome", outcome),)), 0.0)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.close()

    def close(self) -> None:
        """Close the log file."""
        if self._log is not None:
            self._log.close()
            self._log = None


def parse_json_output(stdout: str) -> Any:
    """The JSON document a ``--json`` command printed."""
    return json.loads(stdout)


def utcnow() -> datetime:
    """Now, aware UTC."""
    return datetime.now(UTC)
