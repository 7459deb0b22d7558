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

Categories are isolated: each ends with its own outcome (``success``,
``nothing_to_do``, ``contended``: a lock not granted in time, ``timed_out``: a
statement ran past statement_timeout, ``failure``: anything else) and the pass
goes on with the next one, because what blocks one category (a partition
detached by hand, a long transaction on one table) must not keep the others'
expired records. Only a connection that broke ends the pass early. The pass's
outcome is the worst of its categories' (failure, then timed_out, then
contended).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from purger import audit, holds
from purger.db import classify, connect, wrap_errors
from purger.errors import (
    LockTimeout,
    NotOwnedError,
    PurgerError,
    StatementTimeout,
    StorageError,
)
from purger.metrics import Metrics
from purger.partitions import owned_parent, partition_name
from purger.policy import RetentionPolicy
from purger.queries import query, template

log = logging.getLogger("purger.purge")

PASS_LOCK = "purger.purge-pass"
OUTCOME_SUCCESS = "success"
OUTCOME_NOTHING = "nothing_to_do"
OUTCOME_CONTENDED = "contended"
OUTCOME_TIMED_OUT = "timed_out"
OUTCOME_FAILURE = "failure"
OUTCOME_NOT_LEADER = "not_leader"
# Worst first: a pass (or a category) ends with the first of these that any part had.
_SEVERITY = (OUTCOME_FAILURE, OUTCOME_TIMED_OUT, OUTCOME_CONTENDED)
_ANOTHER_PASS = "another purge pass is running"


def combine_outcomes(outcomes: list[str]) -> str:
    """The outcome of a pass from its categories': the worst one, else success or nothing."""
    for outcome in _SEVERITY:
        if outcome in outcomes:
            return outcome
    return OUTCOME_SUCCESS if OUTCOME_SUCCESS in outcomes else OUTCOME_NOTHING


def interruption(exc: BaseException) -> str | None:
    """``contended`` or ``timed_out`` when ``exc`` only means "not now", else None.

    A lost deadlock or serialization conflict (SQLSTATE class 40) is contention
    too: the other transaction won, the work is retried on a later pass.
    """
    kind = classify(exc)
    if kind is LockTimeout or _sqlstate(exc).startswith("40"):
        return OUTCOME_CONTENDED
    if kind is StatementTimeout:
        return OUTCOME_TIMED_OUT
    return None


def _sqlstate(exc: BaseException | None) -> str:
    # Project errors keep the driver's error as their cause.
    while exc is not None:
        if isinstance(exc, psycopg.Error) and exc.sqlstate:
            return exc.sqlstate
        exc = exc.__cause__
    return ""


def _pending_detach(attached: dict[str, bool]) -> str | None:
    return next((name for name, pending in attached.items() if pending), None)


def _message(exc: BaseException) -> str:
    # Project errors name partitions, categories and SQLSTATEs, never row data
    # (wrap_errors keeps a driver error's DETAIL out); anything else by its class.
    return str(exc) if isinstance(exc, PurgerError) else exc.__class__.__name__


@dataclass
class PartitionAction:
    """What a pass did (or, dry, would do) to one partition."""

    partition: str
    action: str  # "drop" or "delete_rows"
    rows: int
    range_start: datetime
    range_end: datetime
    status: str  # "done", "contended", "timed_out", "planned"
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
    outcome: str = OUTCOME_NOTHING
    error: str | None = None  # why it was not a success: partitions, SQLSTATEs, no row data

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "outcome": self.outcome,
            "error": self.error,
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
        locked = False
        try:
            with wrap_errors("start the purge pass"):
                conn = self._connect("purge")
                row = conn.execute(query("try_lock"), {"key": PASS_LOCK}).fetchone()
            if not row or not row[0]:
                report.outcome = OUTCOME_CONTENDED
                report.error = _ANOTHER_PASS
                return report
            locked = True
            report.instant = self._fix_instant(conn, names, now)
            self._categories(conn, names, report, dry_run)
        except (PurgerError, psycopg.Error) as exc:
            # Before any category ran (connect, pass lock, instant). Fixing the
            # instant only waits for ingest transactions (its lock_timeout is the
            # statement_timeout), so either timeout there is contention with ingestion.
            report.outcome = OUTCOME_CONTENDED if interruption(exc) else OUTCOME_FAILURE
            report.error = _message(exc)
            self._not_run(report, names, report.outcome, report.error)
            log.error(
                "purge pass could not run: %s",
                report.error,
                extra={"pass_id": report.pass_id, "outcome": report.outcome},
            )
        finally:
            report.finished_at = datetime.now(UTC)
            if locked and not dry_run:
                self._record_pass(conn, report)
            if conn is not None:
                if locked and not conn.broken:
                    # The server drops a closed session's locks only once it notices;
                    # a pass started right after this one must not find it still held.
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(query("unlock"), {"key": PASS_LOCK})
                conn.close()
        if not dry_run:
            self._observe(report, time.perf_counter() - started)
        return report

    def _categories(
        self, conn: psycopg.Connection[Any], names: list[str], report: PassReport, dry_run: bool
    ) -> None:
        for index, name in enumerate(names):
            out = report.categories[name] = CategoryReport()
            try:
                with wrap_errors(f"purge {name}"):
                    self._category(conn, name, out, report, dry_run)
            except (PurgerError, psycopg.Error) as exc:
                out.outcome = interruption(exc) or OUTCOME_FAILURE
                out.error = _message(exc)
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
                    self._not_run(report, rest, OUTCOME_FAILURE, lost)
                    report.outcome = OUTCOME_FAILURE
                    return
        report.outcome = combine_outcomes([c.outcome for c in report.categories.values()])
        problems = [
            f"{n} {c.outcome}: {c.error}"
            for n, c in report.categories.items()
            if c.outcome in _SEVERITY and c.error
        ]
        report.error = "; ".join(problems) or None

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

    @staticmethod
    def _not_run(report: PassReport, names: list[str], outcome: str, reason: str) -> None:
        # Categories the pass never reached are reported (and counted) with the
        # reason, so that each category of a pass has exactly one outcome.
        for name in names:
            if name not in report.categories:
                report.categories[name] = CategoryReport(
                    outcome=outcome, error=f"not run: {reason}"
                )

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
        self,
        conn: psycopg.Connection[Any],
        name: str,
        out: CategoryReport,
        report: PassReport,
        dry_run: bool,
    ) -> None:
        # Fills ``out`` as it goes, so that a category that fails half-way still
        # reports what it destroyed before (each of those drops is audited).
        t = report.instant
        notes: list[str] = []
        parent = owned_parent(conn, name)
        attached = self._attached(conn, parent)
        pending = _pending_detach(attached)
        candidates = conn.execute(query("purge_candidates"), {"category": name, "t": t}).fetchall()
        if pending is not None:
            # PostgreSQL lets a table have one detach pending at a time: finish the one
            # an interrupted pass left before starting another (the sort is stable).
            candidates.sort(key=lambda c: c[0] != pending)
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
                elif pending not in (None, pname) and attached.get(pname) is False:
                    action.status = "contended"
                    notes.append(f"partition {pname}: waits for the pending detach of {pending}")
                else:
                    note = self._drop(
                        conn, name, parent, action=action, attached=attached, report=report
                    )
                    if note:
                        # An interrupted DETACH CONCURRENTLY may have left it pending.
                        notes.append(note)
                        attached = self._attached(conn, parent)
                        pending = _pending_detach(attached)
                    elif pname == pending:
                        pending = None
                out.actions.append(action)
                if action.status in ("done", "planned"):
                    out.partitions_dropped += 1
                    out.rows_purged += action.rows
                    out.rows_held += action.held
                elif action.status == "contended":
                    out.contended += 1
                else:
                    # The category stops at its first statement timeout: its next
                    # statements would likely be as slow, and the other categories
                    # of the pass would wait statement_timeout for each of them.
                    self._conclude(out, notes, timed_out=True)
                    return
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
                    note = self._delete_rows(conn, name, action, report)
                    if note:
                        notes.append(note)
                if action.rows or action.held or action.status in ("contended", "timed_out"):
                    out.actions.append(action)
                # Batches deleted before an interruption were committed and audited.
                out.rows_purged += action.rows
                out.rows_held += action.held
                if action.status == "timed_out":
                    self._conclude(out, notes, timed_out=True)
                    return
                out.contended += action.status == "contended"
        interrupted = self._purge_held(conn, name, out, report, dry_run)
        if interrupted is not None:
            notes.append(interrupted[1])
        self._conclude(
            out, notes, timed_out=interrupted is not None and interrupted[0] == OUTCOME_TIMED_OUT
        )

    @staticmethod
    def _attached(conn: psycopg.Connection[Any], parent: str) -> dict[str, bool]:
        # Partitions attached to ``parent``: name -> detach pending.
        return {
            str(r[0]): bool(r[1])
            for r in conn.execute(query("attached_partitions"), {"parent": parent})
        }

    @staticmethod
    def _conclude(out: CategoryReport, notes: list[str], *, timed_out: bool = False) -> None:
        if timed_out:
            out.outcome = OUTCOME_TIMED_OUT
        elif out.contended:
            out.outcome = OUTCOME_CONTENDED
        elif out.partitions_dropped or out.rows_purged:
            out.outcome = OUTCOME_SUCCESS
        else:
            out.outcome = OUTCOME_NOTHING
        out.error = "; ".join(notes) or None

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
    ) -> tuple[str, str] | None:
        # Held records whose last covering hold was released are destroyed like
        # any expired record: under the hold lock, atomic with their audit entry.
        # Returns what interrupted it (contended or timed_out, and why), if anything.
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
        except (StorageError, psycopg.Error) as exc:
            status = interruption(exc)
            if status is None:
                raise
            out.contended += status == OUTCOME_CONTENDED
            log.warning(
                "released held records not purged (%s); retried on a later pass",
                status,
                extra={"category": category, "pass_id": report.pass_id, "outcome": status},
            )
            return status, _message(exc)
        out.held_purged += done.rows
        out.rows_purged += done.rows
        return None

    def _drop(
        self,
        conn: psycopg.Connection[Any],
        category: str,
        parent: str,
        *,
        action: PartitionAction,
        attached: dict[str, bool],
        report: PassReport,
    ) -> str | None:
        # Returns what interrupted the drop (the action is then contended or
        # timed_out); any other error propagates and fails the category.
        pname = action.partition
        ident = {"parent": sql.Identifier(parent), "partition": sql.Identifier(pname)}
        try:
            with wrap_errors(f"drop partition {pname}"):
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
        except StorageError as exc:
            status = interruption(exc)
            if status is None:
                raise
            return self._interrupted(status, exc, action, category, report)
        return None

    def _delete_rows(
        self,
        conn: psycopg.Connection[Any],
        category: str,
        action: PartitionAction,
        report: PassReport,
    ) -> str | None:
        # Like _drop: what interrupted it, batches committed before stay counted.
        ident = sql.Identifier(action.partition)
        try:
            with wrap_errors(f"delete expired rows of {action.partition}"):
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
        except StorageError as exc:
            status = interruption(exc)
            if status is None:
                raise
            return self._interrupted(status, exc, action, category, report)
        return None

    @staticmethod
    def _interrupted(
        status: str,
        exc: StorageError,
        action: PartitionAction,
        category: str,
        report: PassReport,
    ) -> str:
        action.status = status
        log.warning(
            "partition not purged (%s); retried on a later pass",
            status,
            extra={"category": category, "pass_id": report.pass_id, "outcome": status},
        )
        return _message(exc)

    def _record_pass(self, conn: psycopg.Connection[Any] | None, report: PassReport) -> None:
        content = {
            "pass_id": report.pass_id,
            "instant": report.instant.isoformat(),
            "started_at": report.started_at.isoformat(),
            "finished_at": report.finished_at.isoformat() if report.finished_at else None,
            "outcome": report.outcome,
            "error": report.error,
            "policy_version": self.policy.version,
            "categories": {
                n: {
                    "outcome": c.outcome,
                    "error": c.error,
                    "partitions_dropped": c.partitions_dropped,
                    "rows_purged": c.rows_purged,
                    "rows_held": c.rows_held,
                    "contended": c.contended,
                }
                for n, c in report.categories.items()
            },
        }
        try:
            if conn is None or conn.closed or conn.broken:
                # The pass's connection broke: its outcome is recorded all the same.
                with self._connect("purge") as fresh, fresh.transaction():
                    audit.append(fresh, "purge_pass", content)
                return
            with conn.transaction():
                audit.append(conn, "purge_pass", content)
        except (PurgerError, psycopg.Error):
            log.exception("could not record the pass in the audit trail")

    def _observe(self, report: PassReport, seconds: float) -> None:
        m = self.metrics
        m.purge_runs.labels(report.outcome).inc()
        m.purge_duration.observe(seconds)
        for name, cat in report.categories.items():
            m.records_purged.labels(name).inc(cat.rows_purged)
            m.partitions_dropped.labels(name).inc(cat.partitions_dropped)
            m.partitions_contended.labels(name).inc(cat.contended)
            m.purge_category_outcomes.labels(name, cat.outcome).inc()
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
