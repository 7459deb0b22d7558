"""Timing one purge pass, and the DELETE + VACUUM it is compared with."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.dataset import FLAT_SCHEMA, FLAT_TABLE
from purger.metrics import Metrics
from purger.policy import RetentionPolicy
from purger.purge import Purger


def checkpoint(url: str) -> None:
    """Flush what loading left dirty, so that a measurement does not pay for it."""
    with (
        psycopg.connect(url, autocommit=True, application_name="bench:checkpoint") as conn,
        contextlib.suppress(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("CHECKPOINT")


def timed_pass(url: str, policy: RetentionPolicy, now: datetime | None = None) -> dict[str, Any]:
    """One ``Purger.run_pass`` (at ``now``, default the clock) with the default settings, timed."""
    metrics = Metrics(categories=policy.categories, topics=policy.by_topic(), ingest=False)
    purger = Purger(url, policy, metrics)
    started = time.perf_counter()
    report = purger.run_pass(now=now)
    seconds = time.perf_counter() - started
    dropped = sum(c.partitions_dropped for c in report.categories.values())
    contended = sum(c.contended for c in report.categories.values())
    actions = [a for c in report.categories.values() for a in c.actions]
    drops = [a for a in actions if a.action == "drop"]
    deletes = [a for a in actions if a.action == "delete_rows"]
    return {
        # Where the pass's time went: the drops on its connection (each a detach, then
        # a transaction whose COMMIT removes the files), the partition containing T on
        # a second connection beside them.
        "phases": {
            "detach_seconds": round(sum(a.detach_seconds for a in drops), 3),
            "drop_transaction_seconds": round(sum(a.seconds - a.detach_seconds for a in drops), 3),
            "boundary_delete_seconds": round(sum(a.seconds for a in deletes), 3),
            "boundary_vacuum_seconds": round(sum(a.vacuum_seconds for a in deletes), 3),
        },
        "seconds": round(seconds, 3),
        "outcome": report.outcome,
        "error": report.error,
        "partitions_dropped": dropped,
        "partitions_contended": contended,
        "rows_purged": report.rows_purged,
        "seconds_per_partition": round(seconds / dropped, 4) if dropped else None,
        "started": started,
        "ended": started + seconds,
    }


def delete_and_vacuum(url: str) -> dict[str, Any]:
    """``DELETE ... WHERE expires_at <= now()`` on the unpartitioned twin, then its VACUUM."""
    table = sql.Identifier(FLAT_SCHEMA, FLAT_TABLE)
    with psycopg.connect(url, autocommit=True, application_name="bench:delete") as conn:
        started = time.perf_counter()
        cur = conn.execute(sql.SQL("DELETE FROM {} WHERE expires_at <= now()").format(table))
        deleted = cur.rowcount
        deleted_at = time.perf_counter()
        conn.execute(sql.SQL("VACUUM {}").format(table))
        vacuumed_at = time.perf_counter()
    return {
        "rows_deleted": deleted,
        "delete_seconds": round(deleted_at - started, 3),
        "vacuum_seconds": round(vacuumed_at - deleted_at, 3),
        "seconds": round(vacuumed_at - started, 3),
    }
