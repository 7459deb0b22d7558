"""Re-tagging: stored records follow their category's current rules.

When a category's rules change (purger/policy_versions.py), its records keep the
expiry they were tagged with until re-tagged here: in primary-key order after a
cursor kept in ``purger.retag_progress`` (resumable by any process), in small
batches, each its own short transaction that moves the rows to the partitions of
their new expiry (an UPDATE of the partition key) with their keys and the
registry's row counts. Ingestion is never blocked: a batch locks only the rows
it moves, and partitions are created before it, in their own transactions.
A shortened retention can give a record an expiry in the past: it lands in a
partition the next pass destroys (legal holds are checked there, as always).

A batch holds the re-tag fence (shared) from its partitions' creation to its move,
and a purge pass holds it exclusively from start to end: re-tagging pauses during
a pass. Otherwise a row moved to an expiry at or before the pass's T, into a
partition the pass had dropped (re-created by the batch) or purged already, would
outlive the pass, and a pass between a batch's partition creation and its move
would drop the partition the move needs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from purger import applied_rules, audit
from purger.applied_rules import AppliedRules
from purger.audit_entries import Entry, Kind
from purger.db import wrap_errors
from purger.errors import LockTimeout
from purger.partitions import PartitionManager, held_table, keys_table, parent_table
from purger.queries import query

log = logging.getLogger("purger.retag")
POLICY_SQL = "policy.sql"
_START = datetime(1, 1, 1, tzinfo=UTC)


@dataclass
class RetagReport:
    """What one run re-tagged in one category."""

    category: str
    rule_version: int = 0
    retagged: int = 0
    moved: int = 0
    finished: bool = False
    remaining: int = 0


class Retagger:
    """Re-tags one category's records at a time, on one connection."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        partitions: PartitionManager,
        *,
        batch_size: int = 2000,
        lock_timeout_ms: int = 1000,
    ) -> None:
        self.conn = conn
        self.partitions = partitions
        self.batch_size = batch_size
        self.lock_timeout_ms = lock_timeout_ms

    def run(self, category: str, *, budget_seconds: float | None = None) -> RetagReport:
        """Re-tag ``category`` until done or ``budget_seconds`` have passed."""
        conn = self.conn
        report = RetagReport(category)
        with wrap_errors(f"read the rules of {category}"), conn.transaction():
            rules = applied_rules.read(conn, category)
            progress = conn.execute(
                query("retag_progress_get", POLICY_SQL), {"category": category}
            ).fetchone()
        if rules is None or rules.retired_at is not None:
            report.finished = True
            return report
        report.rule_version = rules.rule_version
        if progress is None:
            # No rule change since the category was applied: nothing is tagged by older rules.
            report.finished = True
            return report
        if int(progress[0]) != rules.rule_version:
            with wrap_errors(f"start re-tagging {category}"), conn.transaction():
                conn.execute(
                    query("retag_progress_start", POLICY_SQL),
                    {"category": category, "rule_version": rules.rule_version},
                )
            cursor: tuple[datetime, str] = (_START, "")
        elif progress[4] is not None:
            report.finished = True
            return report
        else:
            cursor = (progress[1] or _START, progress[2] or "")
        deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        while deadline is None or time.monotonic() < deadline:
            if not self._enter_fence(category, deadline):
                break
            try:
                step = self._batch(rules, cursor, report)
                if step is None:
                    self._finish(rules, report)
                    return report
            finally:
                self._leave_fence()
            cursor = step
        report.remaining = self.stale(category, rules.rule_version)
        return report

    def _enter_fence(self, category: str, deadline: float | None) -> bool:
        """Take the re-tag fence (shared), waiting while a purge pass runs.

        False when the budget ran out first. Waits in slices of ``lock_timeout_ms`` so
        that the budget is kept and each wait is visible in the log.
        """
        conn = self.conn
        while True:
            wait_ms = self.lock_timeout_ms
            if deadline is not None:
                left_ms = int((deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    return False
                wait_ms = min(wait_ms, left_ms)
            try:
                with (
                    wrap_errors(f"wait for the purge pass to re-tag {category}"),
                    conn.transaction(),
                ):
                    conn.execute(
                        sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{wait_ms}ms"))
                    )
                    # Session-level: kept past this transaction, until _leave_fence.
                    conn.execute(query("retag_fence_batch"))
                return True
            except LockTimeout:
                log.info("re-tagging waits for a purge pass", extra={"category": category})

    def _leave_fence(self) -> None:
        # A broken connection's session, and its lock, are gone with it.
        with contextlib.suppress(psycopg.Error), self.conn.transaction():
            self.conn.execute(query("retag_fence_batch_release"))

    def _batch(
        self, rules: AppliedRules, cursor: tuple[datetime, str], report: RetagReport
    ) -> tuple[datetime, str] | None:
        conn, category = self.conn, rules.category
        table = sql.Identifier(parent_table(category))
        with wrap_errors(f"re-tag {category}"), conn.transaction():
            rows = conn.execute(
                query("retag_select", POLICY_SQL).format(table=table),
                {
                    "after_expires": cursor[0],
                    "after_id": cursor[1],
                    "rule_version": rules.rule_version,
                    "limit": self.batch_size,
                },
            ).fetchall()
        if not rows:
            return None
        new = [rules.expires_at(r[2], r[3]) for r in rows]
        self.partitions.ensure(conn, category, sorted(set(new)))
        moved = self._move(rules, table, rows, new)
        report.retagged += moved[0]
        report.moved += moved[1]
        last = (rows[-1][0], rows[-1][1])
        with wrap_errors(f"re-tag {category}"), conn.transaction():
            conn.execute(
                query("retag_progress_advance", POLICY_SQL),
                {
                    "category": category,
                    "rule_version": rules.rule_version,
                    "expires_at": last[0],
                    "record_id": last[1],
                    "n": moved[0],
                },
            )
        return last

    def _move(
        self,
        rules: AppliedRules,
        table: sql.Identifier,
        rows: list[tuple[Any, ...]],
        new: list[datetime],
    ) -> tuple[int, int]:
        conn, category = self.conn, rules.category
        with wrap_errors(f"re-tag {category}"), conn.transaction():
            conn.execute(
                sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(f"{self.lock_timeout_ms}ms")
                )
            )
            row = conn.execute(
                query("retag_update", POLICY_SQL).format(
                    table=table, keys=sql.Identifier(keys_table(category))
                ),
                {
                    "old": [r[0] for r in rows],
                    "ids": [r[1] for r in rows],
                    "new": new,
                    "rule_version": rules.rule_version,
                    "lowest": rows[0][0],
                    "highest": rows[-1][0],
                },
            ).fetchone()
            assert row is not None
            count, left, reached = int(row[0]), list(row[1]), list(row[2])
            if left and table == sql.Identifier(parent_table(category)):
                for expiries, sign in ((left, -1), (reached, 1)):
                    conn.execute(
                        query("adjust_row_counts", POLICY_SQL),
                        {"expiries": expiries, "sign": sign, "category": category},
                    )
        return count, len(left)

    def _finish(self, rules: AppliedRules, report: RetagReport) -> None:
        # Held storage is small and unpartitioned: its rows are re-tagged in one go.
        conn, category = self.conn, rules.category
        held = sql.Identifier(held_table(category))
        with wrap_errors(f"re-tag held records of {category}"), conn.transaction():
            rows = conn.execute(
                query("retag_select", POLICY_SQL).format(table=held),
                {
                    "after_expires": _START,
                    "after_id": "",
                    "rule_version": rules.rule_version,
                    "limit": 2**31 - 1,
                },
            ).fetchall()
        held_retagged = 0
        if rows:
            new = [rules.expires_at(r[2], r[3]) for r in rows]
            held_retagged, moved = self._move(rules, held, rows, new)
            report.retagged += held_retagged
            report.moved += moved
        with wrap_errors(f"finish re-tagging {category}"), conn.transaction():
            done = conn.execute(
                query("retag_progress_finish", POLICY_SQL),
                {"category": category, "rule_version": rules.rule_version},
            ).fetchone()
            if done is not None:
                audit.record(
                    conn,
                    Entry(
                        Kind.RECORDS_RETAGGED,
                        {
                            "category": category,
                            "rule_version": rules.rule_version,
                            "records": int(done[0]) + held_retagged,
                        },
                    ),
                )
        report.finished = True
        log.info(
            "re-tagging finished",
            extra={"category": category, "count": report.retagged},
        )

    def stale(self, category: str, rule_version: int) -> int:
        """Stored records (live and held) not yet tagged by ``rule_version``."""
        with wrap_errors(f"count records to re-tag in {category}"), self.conn.transaction():
            row = self.conn.execute(
                query("stale_count", POLICY_SQL).format(
                    parent=sql.Identifier(parent_table(category)),
                    held=sql.Identifier(held_table(category)),
                ),
                {"rule_version": rule_version},
            ).fetchone()
        return int(row[0]) if row else 0


def over_retention(conn: psycopg.Connection[Any], category: str) -> int:
    """Stored records whose expiry is later than the applied rules give them.

    Only records of an older rule version can be; counted in SQL (as
    ``purger policy diff`` counts) for the metric ``purger_records_over_retention``.
    """
    rules = applied_rules.read(conn, category)
    if rules is None or rules.retired_at is not None:
        return 0
    overrides = {t: rules.retention_for(t) for t in rules.rules.get("tenant_overrides", {})}
    rows = applied_rules.expiry_diff(
        conn,
        category,
        rules.retention,
        overrides,
        now=datetime.now(UTC),
        below_version=rules.rule_version,
    )
    return sum(int(r[3]) for r in rows)
