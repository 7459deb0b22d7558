"""The partition that contains T: its expired rows deleted in batches, then VACUUMed.

A category's purge (purger/purge_category.py) hands this partition to a thread
with a connection of its own, while the pass's connection drops the wholly expired
partitions. A drop spends nearly all its time in its COMMIT, where PostgreSQL
removes the partition's files, so the row deletes and the vacuum overlap the drops
instead of following them. The two connections share nothing but the locks every
destroying transaction takes anyway (the holds lock in SHARE mode, then, last, the
audit chain's), so they cannot deadlock, and each transaction stays atomic with its
own audit entry.

Each batch starts after the last row of the one before, so together they read the
partition about once. The vacuum that follows removes the deleted tuples and their
index entries from the pages; it runs only once the deletes are committed and
audited, and a vacuum that cannot run never undoes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from purger import audit, audit_entries, held_storage
from purger.audit_entries import PolicyRef
from purger.db import wrap_errors
from purger.errors import StorageError
from purger.purge_report import (
    OUTCOME_TIMED_OUT,
    PartitionAction,
    attempt,
    error_text,
    interruption,
)
from purger.queries import query, template
from purger.vacuum import vacuum_audited

log = logging.getLogger("purger.purge")


@dataclass
class BoundaryOutcome:
    """What became of the partition: its action, what interrupted the deletes, the vacuum."""

    action: PartitionAction
    notes: list[str] = field(default_factory=list)
    # What stopped the vacuum (contended or timed_out, and why), if anything.
    vacuum_stopped: tuple[str, str] | None = None


@dataclass(frozen=True)
class Pass:
    """What every transaction of a category's purge records: the pass, its instant, policy."""

    category: str
    pass_id: str
    instant: datetime
    policy: PolicyRef
    delete_batch_size: int


class BoundaryPurge:
    """The row delete and vacuum of one partition, on one connection (autocommit)."""

    def __init__(self, conn: psycopg.Connection[Any], of: Pass) -> None:
        self.conn = conn
        self.of = of

    def run(self, action: PartitionAction) -> BoundaryOutcome:
        """Delete the expired rows of ``action``'s partition, then vacuum it."""
        out = BoundaryOutcome(action)
        started = time.perf_counter()
        note = attempt(
            action,
            f"delete expired rows of {action.partition}",
            lambda: self._delete_batches(action),
            category=self.of.category,
            pass_id=self.of.pass_id,
        )
        deleted = time.perf_counter()
        action.seconds = deleted - started
        if note:
            out.notes.append(note)
        # A category stops at its first statement timeout (its next statements would
        # likely be as slow): no vacuum then, as no other statement of the category.
        if action.status != OUTCOME_TIMED_OUT and (action.rows or action.held):
            try:
                out.vacuum_stopped = self._vacuum(action)
            finally:
                action.vacuum_seconds = time.perf_counter() - deleted
        return out

    def _delete_batches(self, action: PartitionAction) -> None:
        start = "(0,0)"
        while True:
            n, last = self._delete_batch(action, start)
            if n < self.of.delete_batch_size or last is None:
                return
            block, _, item = last.strip("()").partition(",")
            start = f"({block},{int(item) + 1})"

    def _delete_batch(self, action: PartitionAction, start: str) -> tuple[int, str | None]:
        """One transaction: at most a batch of expired rows from tuple ``start`` on.

        Returns the rows deleted and the last one's tuple id (where the next batch starts).
        """
        conn, of = self.conn, self.of
        with conn.transaction():
            # Each batch re-reads the holds under the lock and first moves the
            # covered expired rows (of the whole partition) out, so no DELETE finds one.
            active = held_storage.lock_for_destruction(conn)
            kept = held_storage.hold_expired_rows(
                conn, of.category, action.partition, active, of.instant, remove=True
            )
            if kept.rows:
                conn.execute(query("decrement_rows"), {"n": kept.rows, "name": action.partition})
                action.held += kept.rows
            conn.execute(query("scan_in_physical_order"))
            row = conn.execute(
                template("delete_expired_batch", partition=sql.Identifier(action.partition)),
                {"t": of.instant, "limit": of.delete_batch_size, "from": start},
            ).fetchone()
            assert row is not None
            n = int(row[0])
            if n == 0:
                return 0, None
            conn.execute(query("decrement_rows"), {"n": n, "name": action.partition})
            audit.record(
                conn,
                audit_entries.rows_deleted(
                    pass_id=of.pass_id,
                    category=of.category,
                    partition=action.partition,
                    rows=n,
                    expiry_from=row[1],
                    expiry_to=row[2],
                    purge_instant=of.instant,
                    policy=of.policy,
                ),
            )
        action.rows += n
        return n, str(row[3])

    def _vacuum(self, action: PartitionAction) -> tuple[str, str] | None:
        # A vacuum that fails only names the category's outcome (an interruption is
        # returned, any other error propagates as a failure).
        try:
            vacuum_audited(
                self.conn,
                action.partition,
                pass_id=self.of.pass_id,
                category=self.of.category,
                rows=action.rows + action.held,
                analyze=False,
                kind="partition",
            )
        except StorageError as exc:
            status = interruption(exc)
            if status is None:
                raise
            log.warning(
                "partition not vacuumed (%s); its deleted rows stay on its pages until a "
                "later vacuum",
                status,
                extra={"category": self.of.category, "pass_id": self.of.pass_id, "outcome": status},
            )
            return status, error_text(exc)
        return None


class InBackground:
    """A BoundaryPurge in a thread, on a connection of its own, started at once."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        of: Pass,
        action: PartitionAction,
    ) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"purge-{of.category}")
        self._future: Future[BoundaryOutcome] = self._executor.submit(
            self._run, connect, of, action
        )

    @staticmethod
    def _run(
        connect: Callable[[], psycopg.Connection[Any]], of: Pass, action: PartitionAction
    ) -> BoundaryOutcome:
        with wrap_errors(f"connect for the row delete of {action.partition}"):
            conn = connect()
        with conn:
            return BoundaryPurge(conn, of).run(action)

    def outcome(self) -> BoundaryOutcome:
        """Wait for it; its error, if it failed, is raised here."""
        try:
            return self._future.result()
        finally:
            self._executor.shutdown()

    def settle(self) -> None:
        """Wait for it and drop its result: the caller is failing already."""
        wait([self._future])
        self._executor.shutdown()
