"""The purge pass: everything expired at T destroyed, nothing else touched, all audited.

One pass at a time (the pass lock ``PASS_LOCK``, whoever starts it: the
scheduler's leader or ``purger purge`` by hand), and re-tagging pauses while it
runs (the re-tag fence, purger/retag.py). The pass fixes its instant T
under every category's ingest lock, then purges each category in turn
(purger/purge_category.py) and records its outcome in the audit trail and the
metrics; its report types and outcome rules are in purger/purge_report.py.

Categories are isolated: each ends with its own outcome and the pass goes on
with the next one, because what blocks one category (a partition detached by
hand, a long transaction on one table) must not keep the others' expired
records. Only a connection that broke ends the pass early.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from purger import audit, audit_entries, erasure, key_trim, retirement
from purger.audit_entries import PolicyRef
from purger.db import connect, wrap_errors
from purger.errors import PurgerError
from purger.metrics import Metrics
from purger.policy import RetentionPolicy
from purger.purge_category import CategoryPurge
from purger.purge_report import (
    COMPLETED,
    OUTCOME_CONTENDED,
    OUTCOME_FAILURE,
    CategoryReport,
    PassReport,
    error_text,
    interruption,
)
from purger.queries import query

log = logging.getLogger("purger.purge")

Anchor = Callable[[dict[str, Any]], None]
"""Publishes an audit head (``audit.anchor_of``) outside PostgreSQL; raises on failure."""

PASS_LOCK = "purger.purge-pass"
_ANOTHER_PASS = "another purge pass is running"


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
        anchor: Anchor | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.policy = policy
        self.metrics = metrics
        self.lock_timeout_ms = lock_timeout_ms
        self.statement_timeout_ms = statement_timeout_ms
        self.delete_batch_size = delete_batch_size
        self.anchor = anchor

    def _connect(self, application: str) -> psycopg.Connection[Any]:
        conn = connect(self.conninfo, autocommit=True, application=application)
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
        locked = fenced = False
        try:
            with wrap_errors("start the purge pass"):
                conn = self._connect("purge")
                row = conn.execute(query("try_lock"), {"key": PASS_LOCK}).fetchone()
            if not row or not row[0]:
                report.outcome = OUTCOME_CONTENDED
                report.error = _ANOTHER_PASS
                return report
            locked = True
            # Re-tagging (a `purger policy retag` by hand) pauses between its batches
            # until the pass ends; a batch in flight is waited for (lock_timeout).
            with wrap_errors("pause re-tagging for the pass"):
                conn.execute(query("retag_fence_pass"))
            fenced = True
            with wrap_errors("list retired categories"):
                retired = set(retirement.retired(conn))
            if categories is None:
                names += sorted(retired - set(names))
            report.instant = self._fix_instant(conn, names, now)
            self._categories(conn, names, report, dry_run, retired)
            if not dry_run:
                # Erasure requests left for later: held records since released, late arrivals.
                erasure.complete_deferred(
                    conn, self.policy, pass_id=report.pass_id, categories=names
                )
        except (PurgerError, psycopg.Error) as exc:
            # Before any category ran (connect, pass lock, re-tag fence, instant). Fixing the
            # instant only waits for ingest transactions (its lock_timeout is the
            # statement_timeout), so either timeout there is contention with ingestion.
            report.outcome = OUTCOME_CONTENDED if interruption(exc) else OUTCOME_FAILURE
            report.error = error_text(exc)
            report.not_run(names, report.outcome, report.error)
            log.error(
                "purge pass could not run: %s",
                report.error,
                extra={"pass_id": report.pass_id, "outcome": report.outcome},
            )
        finally:
            report.finished_at = datetime.now(UTC)
            recorded = self._record_pass(conn, report) if locked and not dry_run else None
            if conn is not None:
                if locked and not conn.broken:
                    # The server drops a closed session's locks only once it notices;
                    # a pass started right after this one must not find it still held.
                    with contextlib.suppress(psycopg.Error):
                        if fenced:
                            conn.execute(query("retag_fence_pass_release"))
                        conn.execute(query("unlock"), {"key": PASS_LOCK})
                conn.close()
            if recorded is not None:
                # After the pass lock is released: a broker that is away delays only
                # this report, never the next pass.
                self._publish_anchor(recorded, report)
        if not dry_run:
            self._observe(report, time.perf_counter() - started)
        return report

    def _categories(
        self,
        conn: psycopg.Connection[Any],
        names: list[str],
        report: PassReport,
        dry_run: bool,
        retired: set[str],
    ) -> None:
        policy = PolicyRef(self.policy.version, self.policy.digest)
        for index, name in enumerate(names):
            out = report.categories[name] = CategoryReport()
            category = CategoryPurge(
                conn,
                name,
                pass_id=report.pass_id,
                # A retired category keeps nothing: all of it is destroyed now.
                instant=retirement.RETIRED_INSTANT if name in retired else report.instant,
                policy=policy,
                delete_batch_size=self.delete_batch_size,
                dry_run=dry_run,
                connect=lambda: self._connect("purge"),
            )
            try:
                with wrap_errors(f"purge {name}"):
                    category.run(out)
                    if name in retired and not dry_run:
                        retirement.drop_if_empty(conn, name, pass_id=report.pass_id)
            except (PurgerError, psycopg.Error) as exc:
                out.outcome = interruption(exc) or OUTCOME_FAILURE
                out.error = error_text(exc)
                log.log(
                    logging.ERROR if out.outcome == OUTCOME_FAILURE else logging.WARNING,
                    "purge of a category ended %s: %s; the pass goes on",
                    out.outcome,
                    out.error,
                    extra={"category": name, "pass_id": report.pass_id, "outcome": out.outcome},
                )
                lost = self._recover(conn)
                if lost is not None:
                    out.outcome = OUTCOME_FAILURE
                    rest = names[index + 1 :]
                    report.error = f"{lost} while purging {name} ({out.error})" + (
                        f"; not run: {', '.join(rest)}" if rest else ""
                    )
                    report.not_run(rest, OUTCOME_FAILURE, lost)
                    report.outcome = OUTCOME_FAILURE
                    return
        report.conclude()

    @staticmethod
    def _recover(conn: psycopg.Connection[Any]) -> str | None:
        """Make the connection usable for the next category; a reason if it cannot be."""
        # conn.transaction() rolls back on the way out, so normally nothing is open
        # here; a transaction left by anything else would swallow the next category's
        # statements ("current transaction is aborted") or commit them late.
        try:
            if conn.closed or conn.broken:
                return "the connection to PostgreSQL was lost"
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
            conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return f"the connection to PostgreSQL was lost ({exc.__class__.__name__})"
        return None

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

    def forget_keys(self, report: PassReport, budget_seconds: float | None = None) -> int:
        """After a pass: forget the keys of the records it destroyed (purger/key_trim.py).

        Outside the pass and its lock: the drops are committed and audited already,
        and a key left behind only makes a destroyed record count as a duplicate.
        """
        if report.dry_run:
            return 0
        forgotten = 0
        try:
            with self._connect("forget-keys") as conn:
                for name in report.categories:
                    if report.categories[name].outcome == OUTCOME_FAILURE:
                        continue
                    forgotten += key_trim.forget_destroyed_keys(
                        conn, name, report.instant, budget_seconds=budget_seconds
                    )
        except (PurgerError, psycopg.Error) as exc:
            log.warning(
                "keys of destroyed records not forgotten (%s); the next pass does it",
                error_text(exc),
                extra={"pass_id": report.pass_id},
            )
        return forgotten

    def _publish_anchor(self, entry: audit.AuditEntry, report: PassReport) -> None:
        # After the pass's audit entry: its deletes are committed whatever happens here.
        if self.anchor is None:
            return
        head = audit.anchor_of(entry)
        try:
            self.anchor(head)
        except Exception as exc:  # any failure of the plugin is only reported
            report.anchor_error = f"audit head {entry.seq} not anchored: {error_text(exc)}"
            log.warning(
                "%s; the next pass anchors a later head",
                report.anchor_error,
                extra={"pass_id": report.pass_id},
            )
            return
        report.anchor = head

    def _record_pass(
        self, conn: psycopg.Connection[Any] | None, report: PassReport
    ) -> audit.AuditEntry | None:
        entry = audit_entries.purge_pass(
            pass_id=report.pass_id,
            instant=report.instant,
            started_at=report.started_at,
            finished_at=report.finished_at,
            outcome=report.outcome,
            error=report.error,
            policy_version=self.policy.version,
            categories={n: c.summary() for n, c in report.categories.items()},
        )
        try:
            if conn is None or conn.closed or conn.broken:
                # The pass's connection broke: its outcome is recorded all the same.
                with self._connect("purge") as fresh, fresh.transaction():
                    return audit.record(fresh, entry)
            with conn.transaction():
                return audit.record(conn, entry)
        except (PurgerError, psycopg.Error):
            log.exception("could not record the pass in the audit trail")
        return None

    def _observe(self, report: PassReport, seconds: float) -> None:
        m = self.metrics
        m.purge_runs.labels(report.outcome).inc()
        m.purge_duration.observe(seconds)
        for name, cat in report.categories.items():
            m.records_purged.labels(name).inc(cat.rows_purged)
            m.partitions_dropped.labels(name).inc(cat.partitions_dropped)
            m.partitions_contended.labels(name).inc(cat.contended)
            m.purge_category_outcomes.labels(name, cat.outcome).inc()
        if report.outcome in COMPLETED:
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
