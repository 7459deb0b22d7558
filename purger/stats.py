"""The read model: every read-side query of the operator surface, in one place.

What ``purger stats`` shows, the overdue and legal-hold gauges the scheduler
refreshes, and the time of the last completed pass it exports at start-up all
come from here. Nothing here writes to the database: ``Storage`` is the ingest
writer, ``Purger`` the pass; reading separately keeps both of them about one job.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from purger import audit, held_storage, subject_requests
from purger.audit_entries import Kind
from purger.db import connect, wrap_errors
from purger.metrics import Metrics
from purger.partitions import owned_parent, parent_table
from purger.policy import RetentionPolicy
from purger.purge_report import COMPLETED
from purger.queries import query, template
from purger.request_rules import utc_today


class Stats:
    """Read-side queries on one database; each call opens its own connection."""

    def __init__(self, conninfo: str, policy: RetentionPolicy, metrics: Metrics) -> None:
        self.conninfo = conninfo
        self.policy = policy
        self.metrics = metrics

    def _connect(self, application: str) -> psycopg.Connection[Any]:
        return connect(self.conninfo, autocommit=True, application=application)

    # -- what `purger stats` shows -------------------------------------------------
    def show(self) -> dict[str, Any]:
        """Per category stored, held and overdue records, partitions, expiry range; the last pass.

        Counting the overdue records refreshes the gauges as ``overdue`` does.
        """
        with self._connect("stats") as conn:
            categories = self._categories(conn)
            for name, n in self._overdue(conn, None).items():
                categories[name]["overdue"] = n
            last = self._last_pass(conn)
        return {"categories": categories, "last_pass": last}

    def _categories(self, conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
        # From the partition registry (counts kept by ingest and purge), not count(*):
        # a large category answers from one row per partition.
        out: dict[str, dict[str, Any]] = {}
        with wrap_errors("stats"), conn.transaction():
            for name in self.policy.categories:
                row = conn.execute(query("category_stats"), {"category": name}).fetchone()
                rng = conn.execute(
                    template("expiry_range", parent=sql.Identifier(parent_table(name)))
                ).fetchone()
                out[name] = {
                    "records": int(row[1]) if row else 0,
                    "held": held_storage.held_count(conn, name),
                    "partitions": int(row[0]) if row else 0,
                    "oldest_expiry": rng[0].isoformat() if rng and rng[0] else None,
                    "newest_expiry": rng[1].isoformat() if rng and rng[1] else None,
                }
        return out

    @staticmethod
    def _last_pass(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
        last = audit.last_of_kind(conn, Kind.PURGE_PASS.value)
        if last is None:
            return None
        return {
            "pass_id": last.content.get("pass_id"),
            "outcome": last.content.get("outcome"),
            "started_at": last.content.get("started_at"),
            "finished_at": last.content.get("finished_at"),
        }

    # -- gauges ----------------------------------------------------------------------
    def overdue(self, now: datetime | None = None) -> dict[str, int]:
        """Stored records already past expiry that no active hold covers, per category.

        The compliance signal; it also refreshes the legal-hold gauges (active
        holds, records kept past expiry by them) and the data-subject request
        gauges (open and overdue requests per type).
        """
        with self._connect("overdue") as conn:
            return self._overdue(conn, now)

    def _overdue(self, conn: psycopg.Connection[Any], now: datetime | None) -> dict[str, int]:
        out: dict[str, int] = {}
        held: dict[str, int] = {}
        with wrap_errors("count overdue records"):
            t = now or conn.execute(query("db_now")).fetchone()[0]  # type: ignore[index]
            for name in self.policy.categories:
                owned_parent(conn, name)
                coverage = held_storage.expired_coverage(conn, name, t)
                out[name] = coverage.overdue
                held[name] = coverage.held
            active = held_storage.active_count(conn)
            requests = subject_requests.counts(conn, utc_today(t))
        for kind, (n_open, n_overdue) in requests.items():
            self.metrics.subject_requests_open.labels(kind).set(n_open)
            self.metrics.subject_requests_overdue.labels(kind).set(n_overdue)
        for name, n in out.items():
            self.metrics.overdue_records.labels(name).set(n)
            self.metrics.records_held.labels(name).set(held[name])
        self.metrics.legal_holds_active.set(active)
        return out

    def last_success(self) -> datetime | None:
        """Time of the last pass that ran to completion, from the audit trail."""
        with self._connect("stats") as conn, wrap_errors("read last pass"):
            row = conn.execute(
                query("last_successful_pass"),
                {"kind": Kind.PURGE_PASS.value, "outcomes": list(COMPLETED)},
            ).fetchone()
        return row[0] if row else None
