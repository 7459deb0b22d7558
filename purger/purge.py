"""The purge pass: everything expired at T destroyed, nothing else touched, all audited.

Wholly expired partitions are detached CONCURRENTLY (ingestion into the parent
is not blocked) and then dropped, each drop atomic with its audit entry. The
partition that contains T loses its expired rows in bounded DELETE batches, each
atomic with its own audit entry. A pass killed anywhere leaves registry states
(``detaching``/``detached``) that the next pass finishes without counting twice.

Legal holds (purger/holds.py): every transaction that destroys records first
locks out hold changes and re-reads the active holds, then moves the covered
rows into held storage (checked by count) before it drops or deletes. Each pass
also destroys the held records that no active hold covers any more.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from purger import audit, holds
from purger.db import connect, wrap_errors
from purger.errors import HoldError, NotOwnedError, StorageError
from purger.metrics import Metrics
from purger.partitions import owned_parent, partition_name
from purger.policy import RetentionPolicy
from purger.queries import query, template

log = logging.getLogger("purger.purge")

PASS_LOCK = "purger.purge-pass"
OUTCOME_SUCCESS = "success"
OUTCOME_NOTHING = "nothing_to_do"
OUTCOME_CONTENDED = "contended"
OUTCOME_FAILURE = "failure"
OUTCOME_NOT_LEADER = "not_leader"


@dataclass
class PartitionAction:
    """What a pass did (or, dry, would do) to one partition."""

    partition: str
    action: str  # "drop" or "delete_rows"
    rows: int
    range_start: datetime
    range_end: datetime
    status: str  # "done", "contended", "planned"
    held: int = 0  # covered rows moved to held storage instead

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "partition": self.partition,
            "action": self.action,
            "rows": self.rows,
            "held": self.held,
            "range_start": self.range_start.isoformat(),
            "range_end": self.range_end.isoformat(),
            "status": self.status,
        }


@dataclass
class CategoryReport:
    """One category's part of a pass."""

    partitions_dropped: int = 0
    rows_purged: int = 0
    contended: int = 0
    actions: list[PartitionAction] = field(default_factory=list)
    rows_held: int = 0  # expired but covered: moved to held storage by this pass
    held_purged: int = 0  # held records no hold covers any more (part of rows_purged)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "partitions_dropped": self.partitions_dropped,
            "rows_purged": self.rows_purged,
            "rows_held": self.rows_held,
            "held_purged": self.held_purged,
            "contended": self.contended,
            "actions": [a.as_dict() for a in self.actions],
        }


@dataclass
class PassReport:
    """The result of one pass."""

    pass_id: str
    instant: datetime
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str = OUTCOME_NOTHING
    categories: dict[str, CategoryReport] = field(default_factory=dict)
    error: str | None = None

    @property
    def rows_purged(self) -> int:
        """Rows removed (or, dry, removable) in all categories."""
        return sum(c.rows_purged for c in self.categories.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "pass_id": self.pass_id,
            "instant": self.instant.isoformat(),
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "outcome": self.outcome,
            "error": self.error,
            "rows_purged": self.rows_purged,
            "categories": {n: c.as_dict() for n, c in self.categories.items()},
        }


class Purger:
    """Runs purge passes against one database."""

    def __init__(
        self,
        conninfo: str,
        policy: RetentionPolicy,
        metrics: Metrics,
        *,
        lock_timeout_ms: int = 2000,
        statement_timeout_ms: int = 300000,
        delete_batch_size: int = 10000,
    ) -> None:
        self.conninfo = conninfo
        self.policy = policy
        self.metrics = metrics
        self.lock_timeout_ms = lock_timeout_ms
        self.statement_timeout_ms = statement_timeout_ms
        self.delete_batch_size = delete_batch_size

    def _connect(self, role: str) -> psycopg.Connection[Any]:
        conn = connect(self.conninfo, autocommit=True, role=role)
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{self.lock_timeout_ms}ms"))
        )
        conn.execute(
            sql.SQL("SET statement_timeout = {}").format(
                sql.Literal(f"{self.statement_timeout_ms}ms")
            )
        )
        # A pod killed while one of its statements waits on a lock would otherwise keep
        # that lock queued until statement_timeout; the server checks the client instead.
        conn.execute("SET client_connection_check_interval = '5s'")
        return conn

    # -- the pass ------------------------------------------------------------------
    def run_pass(
        self,
        *,
        categories: list[str] | None = None,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> PassReport:
        """Run one pass at T = ``now`` (default: the database clock under the ingest locks)."""
        names = categories or list(self.policy.categories)
        for name in names:
            self.policy.category(name)
        started = time.perf_counter()
        report = PassReport(
            pass_id=str(uuid.uuid4()),
            instant=now or datetime.now(UTC),
            dry_run=dry_run,
            started_at=datetime.now(UTC),
        )
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = self._connect("purge")
            locked = conn.execute(query("try_lock"), {"key": PASS_LOCK}).fetchone()
            if not locked or not locked[0]:
                report.outcome = OUTCOME_CONTENDED
                report.error = "another purge pass is running"
                return report
            report.instant = self._fix_instant(conn, names, now)
            for name in names:
                report.categories[name] = self._category(conn, name, report, dry_run)
            contended = any(c.contended for c in report.categories.values())
            done = any(c.partitions_dropped or c.rows_purged for c in report.categories.values())
            report.outcome = (
                OUTCOME_CONTENDED if contended else OUTCOME_SUCCESS if done else OUTCOME_NOTHING
            )
        except (StorageError, HoldError, psycopg.Error) as exc:
            report.outcome = OUTCOME_FAILURE
            report.error = (
                str(exc) if isinstance(exc, StorageError | HoldError) else exc.__class__.__name__
            )
            log.error("purge pass failed: %s", report.error, extra={"pass_id": report.pass_id})
        finally:
            report.finished_at = datetime.now(UTC)
            if conn is not None and not dry_run and report.error != "another purge pass is running":
                self._record_pass(conn, report)
            if conn is not None:
                conn.close()
        if not dry_run:
            self._observe(report, time.perf_counter() - started)
        return report

    def _fix_instant(
        self, conn: psycopg.Connection[Any], names: list[str], now: datetime | None
    ) -> datetime:
        # Take every category's ingest lock exclusively for an instant: batches
        # that read their clock before T have committed, later ones read a clock
        # after T and store nothing that expires at or before T.
        with wrap_errors("fix the purge instant"), conn.transaction():
            conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{self.statement_timeout_ms}ms")
                )
            )
            for name in sorted(names):
                conn.execute(query("ingest_lock_exclusive"), {"category": name})
            row = conn.execute(query("db_now")).fetchone()
        assert row is not None
        return now or row[0]

    def _category(
        self, conn: psycopg.Connection[Any], name: str, report: PassReport, dry_run: bool
    ) -> CategoryReport:
        out = CategoryReport()
        t = report.instant
        parent = owned_parent(conn, name)
        attached = {
            str(r[0]): bool(r[1])
            for r in conn.execute(query("attached_partitions"), {"parent": parent})
        }
        candidates = conn.execute(query("purge_candidates"), {"category": name, "t": t}).fetchall()
        for pname, start, end, rows, state in candidates:
            if pname != partition_name(name, start):
                raise NotOwnedError(f"partition {pname} does not follow the purger's naming")
            if end <= t:
                self._check_owned(conn, parent, pname, state, attached)
                action = PartitionAction(pname, "drop", int(rows), start, end, "planned")
                if dry_run:
                    exists = conn.execute(query("relation_exists"), {"name": pname}).fetchone()
                    if exists and exists[0]:
                        action.held = holds.count_covered(conn, name, pname, t)
                        action.rows = max(action.rows - action.held, 0)
                else:
                    self._drop(conn, name, parent, action=action, attached=attached, report=report)
                out.actions.append(action)
                if action.status in ("done", "planned"):
                    out.partitions_dropped += 1
                    out.rows_purged += action.rows
                    out.rows_held += action.held
                else:
                    out.contended += 1
            elif state == "attached" and pname in attached:
                action = PartitionAction(pname, "delete_rows", 0, start, end, "planned")
                if dry_run:
                    action.held = holds.count_covered(conn, name, pname, t)
                    action.rows = (
                        int(
                            conn.execute(
                                template("count_expired", partition=sql.Identifier(pname)),
                                {"t": t},
                            ).fetchone()[0]  # type: ignore[index]
                        )
                        - action.held
                    )
                else:
                    self._delete_rows(conn, name, action, report)
                if action.rows or action.held or action.status == "contended":
                    out.actions.append(action)
                out.rows_purged += action.rows if action.status != "contended" else 0
                out.rows_held += action.held
                out.contended += action.status == "contended"
        self._purge_held(conn, name, out, report, dry_run)
        return out

    @staticmethod
    def _check_owned(
        conn: psycopg.Connection[Any],
        parent: str,
        pname: str,
        state: str,
        attached: dict[str, bool],
    ) -> None:
        # The purger drops a table only when the catalog shows it as a partition of
        # its own parent, or when its registry says the purger itself began the
        # detach. A partition someone detached by hand (to keep it, say) is not ours.
        if pname in attached or state in ("detaching", "detached"):
            return
        exists = conn.execute(query("relation_exists"), {"name": pname}).fetchone()
        if exists and exists[0]:
            raise NotOwnedError(
                f"partition {pname} is registered as attached but is not a partition of "
                f"{parent} in the catalog (detached by hand?); the purger does not drop it. "
                "Reattach it, or drop it and its registry row yourself"
            )

    def _purge_held(
        self,
        conn: psycopg.Connection[Any],
        category: str,
        out: CategoryReport,
        report: PassReport,
        dry_run: bool,
    ) -> None:
        # Held records whose last covering hold was released are destroyed like
        # any expired record: under the hold lock, atomic with their audit entry.
        try:
            if dry_run:
                done = holds.purge_released(conn, category, report.instant, dry_run=True)
            else:
                with conn.transaction():
                    holds.lock_for_destruction(conn)
                    done = holds.purge_released(conn, category, report.instant)
                    if done.rows:
                        audit.append(
                            conn,
                            "held_rows_deleted",
                            {
                                "pass_id": report.pass_id,
                                "category": category,
                                "rows": done.rows,
                                "expiry_from": done.expiry_from.isoformat()
                                if done.expiry_from
                                else None,
                                "expiry_to": done.expiry_to.isoformat() if done.expiry_to else None,
                                "purge_instant": report.instant.isoformat(),
                                "policy_version": self.policy.version,
                                "policy_digest": self.policy.digest,
                            },
                        )
        except (pgerrors.LockNotAvailable, pgerrors.QueryCanceled):
            out.contended += 1
            log.warning(
                "legal holds could not be locked in time; held records retried on a later pass",
                extra={"category": category, "pass_id": report.pass_id},
            )
            return
        out.held_purged += done.rows
        out.rows_purged += done.rows

    def _drop(
        self,
        conn: psycopg.Connection[Any],
        category: str,
        parent: str,
        *,
        action: PartitionAction,
        attached: dict[str, bool],
        report: PassReport,
    ) -> None:
        pname = action.partition
        ident = {"parent": sql.Identifier(parent), "partition": sql.Identifier(pname)}
        try:
            if pname in attached:
                if attached[pname]:
                    # A detach interrupted between its two phases: finish it.
                    conn.execute(template("detach_finalize", **ident))
                else:
                    conn.execute(
                        query("set_partition_state"), {"state": "detaching", "name": pname}
                    )
                    conn.execute(template("detach_concurrently", **ident))
                conn.execute(query("set_partition_state"), {"state": "detached", "name": pname})
            exists = conn.execute(query("relation_exists"), {"name": pname}).fetchone()
            with conn.transaction():
                # First in the transaction: lock out hold changes and re-read the
                # active holds, so that a hold committed before now is honoured.
                active = holds.lock_for_destruction(conn)
                kept = holds.Preserved(0, ())
                if exists and exists[0]:
                    kept = holds.preserve(
                        conn, category, pname, active, report.instant, remove=False
                    )
                    conn.execute(template("drop_partition", partition=sql.Identifier(pname)))
                row = conn.execute(query("unregister_partition"), {"name": pname}).fetchone()
                action.held = kept.rows
                action.rows = max((int(row[0]) if row else 0) - kept.rows, 0)
                audit.append(
                    conn,
                    "partition_dropped",
                    {
                        "pass_id": report.pass_id,
                        "category": category,
                        "partition": pname,
                        "rows": action.rows,
                        "held": kept.rows,
                        "hold_ids": list(kept.hold_ids),
                        "expiry_from": action.range_start.isoformat(),
                        "expiry_to": action.range_end.isoformat(),
                        "policy_version": self.policy.version,
                        "policy_digest": self.policy.digest,
                    },
                )
            action.status = "done"
        except (pgerrors.LockNotAvailable, pgerrors.QueryCanceled):
            action.status = "contended"
            log.warning(
                "partition could not be locked in time; retried on a later pass",
                extra={"category": category, "pass_id": report.pass_id},
            )

    def _delete_rows(
        self,
        conn: psycopg.Connection[Any],
        category: str,
        action: PartitionAction,
        report: PassReport,
    ) -> None:
        ident = sql.Identifier(action.partition)
        try:
            while True:
                with conn.transaction():
                    # Each batch re-reads the holds under the lock and first moves
                    # the covered expired rows out, so the DELETE finds none.
                    active = holds.lock_for_destruction(conn)
                    kept = holds.preserve(
                        conn, category, action.partition, active, report.instant, remove=True
                    )
                    if kept.rows:
                        conn.execute(
                            query("decrement_rows"), {"n": kept.rows, "name": action.partition}
                        )
                        action.held += kept.rows
                    row = conn.execute(
                        template("delete_expired_batch", partition=ident),
                        {"t": report.instant, "limit": self.delete_batch_size},
                    ).fetchone()
                    assert row is not None
                    n = int(row[0])
                    if n == 0:
                        break
                    conn.execute(query("decrement_rows"), {"n": n, "name": action.partition})
                    audit.append(
                        conn,
                        "rows_deleted",
                        {
                            "pass_id": report.pass_id,
                            "category": category,
                            "partition": action.partition,
                            "rows": n,
                            "expiry_from": row[1].isoformat(),
                            "expiry_to": row[2].isoformat(),
                            "purge_instant": report.instant.isoformat(),
                            "policy_version": self.policy.version,
                            "policy_digest": self.policy.digest,
                        },
                    )
                action.rows += n
                if n < self.delete_batch_size:
                    break
            action.status = "done"
        except (pgerrors.LockNotAvailable, pgerrors.QueryCanceled):
            action.status = "contended"

    def _record_pass(self, conn: psycopg.Connection[Any], report: PassReport) -> None:
        content = {
            "pass_id": report.pass_id,
            "instant": report.instant.isoformat(),
            "started_at": report.started_at.isoformat(),
            "finished_at": report.finished_at.isoformat() if report.finished_at else None,
            "outcome": report.outcome,
            "policy_version": self.policy.version,
            "categories": {
                n: {
                    "partitions_dropped": c.partitions_dropped,
                    "rows_purged": c.rows_purged,
                    "rows_held": c.rows_held,
                    "contended": c.contended,
                }
                for n, c in report.categories.items()
            },
        }
        try:
            with conn.transaction():
                audit.append(conn, "purge_pass", content)
        except (StorageError, psycopg.Error):
            log.exception("could not record the pass in the audit trail")

    def _observe(self, report: PassReport, seconds: float) -> None:
        m = self.metrics
        m.purge_runs.labels(report.outcome).inc()
        m.purge_duration.observe(seconds)
        for name, cat in report.categories.items():
            m.records_purged.labels(name).inc(cat.rows_purged)
            m.partitions_dropped.labels(name).inc(cat.partitions_dropped)
            m.partitions_contended.labels(name).inc(cat.contended)
        if report.outcome in (OUTCOME_SUCCESS, OUTCOME_NOTHING):
            m.last_purge_success.set(report.finished_at.timestamp() if report.finished_at else 0)
        log.info(
            "purge pass finished",
            extra={
                "pass_id": report.pass_id,
                "outcome": report.outcome,
                "count": report.rows_purged,
                "seconds": round(seconds, 3),
            },
        )

    # -- gauges ----------------------------------------------------------------------
    def overdue(self, now: datetime | None = None) -> dict[str, int]:
        """Stored records already past expiry that no active hold covers, per category.

        The compliance signal; it also refreshes the legal-hold gauges (active
        holds, records kept past expiry by them).
        """
        out: dict[str, int] = {}
        held: dict[str, int] = {}
        with (
            connect(self.conninfo, autocommit=True, role="overdue") as conn,
            wrap_errors("count overdue records"),
        ):
            t = now or conn.execute(query("db_now")).fetchone()[0]  # type: ignore[index]
            for name in self.policy.categories:
                owned_parent(conn, name)
                coverage = holds.expired_coverage(conn, name, t)
                out[name] = coverage.overdue
                held[name] = coverage.held
            active = holds.active_count(conn)
        for name, n in out.items():
            self.metrics.overdue_records.labels(name).set(n)
            self.metrics.records_held.labels(name).set(held[name])
        self.metrics.legal_holds_active.set(active)
        return out

    def last_success(self) -> datetime | None:
        """Time of the last pass that ran to completion, from the audit trail."""
        with (
            connect(self.conninfo, autocommit=True, role="stats") as conn,
            wrap_errors("read last pass"),
        ):
            row = conn.execute(query("last_successful_pass")).fetchone()
        return row[0] if row else None
