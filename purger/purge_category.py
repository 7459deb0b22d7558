"""One category's part of a purge pass: what is expired at T destroyed, all audited.

Wholly expired partitions are detached CONCURRENTLY (ingestion into the parent
is not blocked) and then dropped, each drop atomic with its audit entry. A pass
killed anywhere leaves registry states (``detaching``/``detached``) that the next
pass finishes without counting twice. Meanwhile the partition that contains T loses
its expired rows on a second connection (purger/purge_boundary.py): batched
DELETEs, each atomic with its own audit entry, then a VACUUM, so that the deleted
tuples leave its pages; each vacuum is audited after the fact.

Legal holds: every transaction that destroys records first locks out hold
changes and re-reads the active holds, then moves the covered rows into held
storage (checked by count) before it drops or deletes. Each pass also destroys
the held records that no active hold covers any more.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from purger import audit, audit_entries, held_storage
from purger.audit_entries import PolicyRef
from purger.db import wrap_errors
from purger.errors import NotOwnedError, StorageError
from purger.partitions import owned_parent, partition_name
from purger.purge_boundary import BoundaryOutcome, InBackground, Pass
from purger.purge_report import (
    OUTCOME_CONTENDED,
    OUTCOME_TIMED_OUT,
    CategoryReport,
    PartitionAction,
    attempt,
    error_text,
    interruption,
)
from purger.queries import query, template

log = logging.getLogger("purger.purge")


def _pending_detach(attached: dict[str, bool]) -> str | None:
    return next((name for name, pending in attached.items() if pending), None)


class CategoryPurge:
    """One category of one pass, on the pass's connection (which holds the pass lock).

    ``connect`` opens another connection like the pass's: the partition that contains
    T is purged on it while this one drops (never in a dry run).
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        category: str,
        *,
        pass_id: str,
        instant: datetime,
        policy: PolicyRef,
        delete_batch_size: int,
        dry_run: bool,
        connect: Callable[[], psycopg.Connection[Any]],
    ) -> None:
        self.conn = conn
        self.dry_run = dry_run
        self.connect = connect
        self.of = Pass(category, pass_id, instant, policy, delete_batch_size)

    def run(self, out: CategoryReport) -> None:
        """Purge the category at the pass's instant; errors propagate to the pass."""
        # Fills ``out`` as it goes, so that a category that fails half-way still
        # reports what it destroyed before (each of those drops is audited).
        conn, name, t = self.conn, self.of.category, self.of.instant
        notes: list[str] = []
        parent = owned_parent(conn, name)
        attached = self._attached(parent)
        candidates = conn.execute(query("purge_candidates"), {"category": name, "t": t}).fetchall()
        for pname, start, _end, _rows, _state in candidates:
            if pname != partition_name(name, start):
                raise NotOwnedError(f"partition {pname} does not follow the purger's naming")
        boundary = None
        if not self.dry_run:
            boundary = next(
                (
                    InBackground(
                        self.connect,
                        self.of,
                        PartitionAction(pname, "delete_rows", 0, start, end, "planned"),
                    )
                    for pname, start, end, _rows, state in candidates
                    if end > t and state == "attached" and pname in attached
                ),
                None,
            )
        try:
            timed_out = self._partitions(parent, attached, candidates, out, notes)
        except BaseException:
            if boundary is not None:
                boundary.settle()
            raise
        if boundary is not None:
            timed_out = self._merge(boundary.outcome(), out, notes) or timed_out
        if timed_out:
            out.conclude(notes, timed_out=True)
            return
        interrupted = self._purge_held(out)
        if interrupted is not None:
            notes.append(interrupted[1])
        timed_out = interrupted is not None and interrupted[0] == OUTCOME_TIMED_OUT
        out.conclude(notes, timed_out=timed_out)

    def _partitions(
        self,
        parent: str,
        attached: dict[str, bool],
        candidates: list[Any],
        out: CategoryReport,
        notes: list[str],
    ) -> bool:
        """Drop the wholly expired partitions (dry: count the partition containing T too).

        True when the category stopped at a statement timeout.
        """
        conn, name, t = self.conn, self.of.category, self.of.instant
        pending = _pending_detach(attached)
        if pending is not None:
            # PostgreSQL lets a table have one detach pending at a time: finish the one
            # an interrupted pass left before starting another (the sort is stable).
            candidates.sort(key=lambda c: c[0] != pending)
        if not self.dry_run:
            to_detach = [c[0] for c in candidates if c[2] <= t and attached.get(c[0]) is False]
            if to_detach:
                with wrap_errors(f"mark partitions of {name} detaching"):
                    conn.execute(query("mark_detaching"), {"names": to_detach})
        for pname, start, end, rows, state in candidates:
            if end <= t:
                self._check_owned(parent, pname, state, attached)
                action = PartitionAction(pname, "drop", int(rows), start, end, "planned")
                if self.dry_run:
                    exists = conn.execute(query("relation_exists"), {"name": pname}).fetchone()
                    if exists and exists[0]:
                        action.held = held_storage.count_held_rows(conn, name, pname, t)
                        action.rows = max(action.rows - action.held, 0)
                elif pending not in (None, pname) and attached.get(pname) is False:
                    action.status = "contended"
                    notes.append(f"partition {pname}: waits for the pending detach of {pending}")
                else:
                    note = self._drop(parent, action, attached)
                    if note:
                        # An interrupted DETACH CONCURRENTLY may have left it pending.
                        notes.append(note)
                        attached = self._attached(parent)
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
                    return True
            elif self.dry_run and state == "attached" and pname in attached:
                action = PartitionAction(pname, "delete_rows", 0, start, end, "planned")
                action.held = held_storage.count_held_rows(conn, name, pname, t)
                expired = conn.execute(
                    template("count_expired", partition=sql.Identifier(pname)), {"t": t}
                ).fetchone()
                action.rows = (int(expired[0]) if expired else 0) - action.held
                if action.rows or action.held:
                    out.actions.append(action)
                out.rows_purged += action.rows
                out.rows_held += action.held
        return False

    @staticmethod
    def _merge(done: BoundaryOutcome, out: CategoryReport, notes: list[str]) -> bool:
        """Count the partition containing T into ``out``; True when it timed out."""
        action = done.action
        notes += done.notes
        if action.rows or action.held or action.status in (OUTCOME_CONTENDED, OUTCOME_TIMED_OUT):
            out.actions.append(action)
        # Batches deleted before an interruption were committed and audited.
        out.rows_purged += action.rows
        out.rows_held += action.held
        out.contended += action.status == OUTCOME_CONTENDED
        timed_out = action.status == OUTCOME_TIMED_OUT
        if done.vacuum_stopped is not None:
            status, why = done.vacuum_stopped
            notes.append(why)
            out.contended += status == OUTCOME_CONTENDED
            timed_out = timed_out or status == OUTCOME_TIMED_OUT
        return timed_out

    def _attached(self, parent: str) -> dict[str, bool]:
        # Partitions attached to ``parent``: name -> detach pending.
        return {
            str(r[0]): bool(r[1])
            for r in self.conn.execute(query("attached_partitions"), {"parent": parent})
        }

    def _check_owned(self, parent: str, pname: str, state: str, attached: dict[str, bool]) -> None:
        # The purger drops a table only when the catalog shows it as a partition of
        # its own parent, or when its registry says the purger itself began the
        # detach. A partition someone detached by hand (to keep it, say) is not ours.
        if pname in attached or state in ("detaching", "detached"):
            return
        exists = self.conn.execute(query("relation_exists"), {"name": pname}).fetchone()
        if exists and exists[0]:
            raise NotOwnedError(
                f"partition {pname} is registered as attached but is not a partition of "
                f"{parent} in the catalog (detached by hand?); the purger does not drop it. "
                "Reattach it, or drop it and its registry row yourself"
            )

    def _purge_held(self, out: CategoryReport) -> tuple[str, str] | None:
        # Held records whose last covering hold was released are destroyed like
        # any expired record: under the hold lock, atomic with their audit entry.
        # Returns what interrupted it (contended or timed_out, and why), if anything.
        conn, category = self.conn, self.of.category
        try:
            if self.dry_run:
                done = held_storage.purge_released(conn, category, self.of.instant, dry_run=True)
            else:
                with conn.transaction():
                    held_storage.lock_for_destruction(conn)
                    done = held_storage.purge_released(conn, category, self.of.instant)
                    if done.rows:
                        audit.record(
                            conn,
                            audit_entries.held_rows_deleted(
                                pass_id=self.of.pass_id,
                                category=category,
                                rows=done.rows,
                                expiry_from=done.expiry_from,
                                expiry_to=done.expiry_to,
                                purge_instant=self.of.instant,
                                policy=self.of.policy,
                            ),
                        )
        except (StorageError, psycopg.Error) as exc:
            status = interruption(exc)
            if status is None:
                raise
            out.contended += status == OUTCOME_CONTENDED
            log.warning(
                "released held records not purged (%s); retried on a later pass",
                status,
                extra={"category": category, "pass_id": self.of.pass_id, "outcome": status},
            )
            return status, error_text(exc)
        out.held_purged += done.rows
        out.rows_purged += done.rows
        return None

    def _drop(self, parent: str, action: PartitionAction, attached: dict[str, bool]) -> str | None:
        # Returns what interrupted the drop (the action is then contended or
        # timed_out); any other error propagates and fails the category.
        return attempt(
            action,
            f"drop partition {action.partition}",
            lambda: self._drop_now(parent, action, attached),
            category=self.of.category,
            pass_id=self.of.pass_id,
        )

    def _drop_now(self, parent: str, action: PartitionAction, attached: dict[str, bool]) -> None:
        conn = self.conn
        pname = action.partition
        ident = {"parent": sql.Identifier(parent), "partition": sql.Identifier(pname)}
        started = time.perf_counter()
        detached: float | None = None
        try:
            if pname in attached:
                if attached[pname]:
                    # A detach interrupted between its two phases: finish it.
                    conn.execute(template("detach_finalize", **ident))
                else:
                    # Marked detaching before the loop (mark_detaching).
                    conn.execute(template("detach_concurrently", **ident))
            detached = time.perf_counter()
            try:
                self._drop_detached(action)
            except BaseException:
                if pname in attached:
                    # Detached, not dropped: the registry says so until a later pass drops
                    # it (a commit per drop saved when, as nearly always, the drop follows).
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(
                            query("set_partition_state"), {"state": "detached", "name": pname}
                        )
                raise
        finally:
            ended = time.perf_counter()
            action.seconds = ended - started
            action.detach_seconds = (detached or ended) - started

    def _drop_detached(self, action: PartitionAction) -> None:
        conn, category, pname = self.conn, self.of.category, action.partition
        exists = conn.execute(query("relation_exists"), {"name": pname}).fetchone()
        with conn.transaction():
            # First in the transaction: lock out hold changes and re-read the
            # active holds, so that a hold committed before now is honoured.
            active = held_storage.lock_for_destruction(conn)
            kept = held_storage.HeldRows(0, ())
            if exists and exists[0]:
                kept = held_storage.hold_expired_rows(
                    conn, category, pname, active, self.of.instant, remove=False
                )
                conn.execute(template("drop_partition", partition=sql.Identifier(pname)))
            row = conn.execute(query("unregister_partition"), {"name": pname}).fetchone()
            action.held = kept.rows
            action.rows = max((int(row[0]) if row else 0) - kept.rows, 0)
            audit.record(
                conn,
                audit_entries.partition_dropped(
                    pass_id=self.of.pass_id,
                    category=category,
                    partition=pname,
                    rows=action.rows,
                    held=kept.rows,
                    hold_ids=kept.hold_ids,
                    expiry_from=action.range_start,
                    expiry_to=action.range_end,
                    policy=self.of.policy,
                ),
            )
