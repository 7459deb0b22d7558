"""One category's part of a purge pass: what is expired at T destroyed, all audited.

Wholly expired partitions are detached CONCURRENTLY (ingestion into the parent
is not blocked) and then dropped, each drop atomic with its audit entry. The
partition that contains T loses its expired rows in bounded DELETE batches, each
atomic with its own audit entry. A pass killed anywhere leaves registry states
(``detaching``/``detached``) that the next pass finishes without counting twice.
A partition that lost rows is then VACUUMed (outside any transaction), so that the
deleted tuples leave its pages; each vacuum is audited after the fact.

Legal holds: every transaction that destroys records first locks out hold
changes and re-reads the active holds, then moves the covered rows into held
storage (checked by count) before it drops or deletes. Each pass also destroys
the held records that no active hold covers any more.
"""

from __future__ import annotations

import logging
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
from purger.purge_report import (
    OUTCOME_CONTENDED,
    OUTCOME_TIMED_OUT,
    CategoryReport,
    PartitionAction,
    error_text,
    interruption,
)
from purger.queries import query, template

log = logging.getLogger("purger.purge")


def _pending_detach(attached: dict[str, bool]) -> str | None:
    return next((name for name, pending in attached.items() if pending), None)


class CategoryPurge:
    """One category of one pass, on the pass's connection (which holds the pass lock)."""

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
    ) -> None:
        self.conn = conn
        self.category = category
        self.pass_id = pass_id
        self.instant = instant
        self.policy = policy
        self.delete_batch_size = delete_batch_size
        self.dry_run = dry_run

    def run(self, out: CategoryReport) -> None:
        """Purge the category at the pass's instant; errors propagate to the pass."""
        # Fills ``out`` as it goes, so that a category that fails half-way still
        # reports what it destroyed before (each of those drops is audited).
        conn, name, t = self.conn, self.category, self.instant
        notes: list[str] = []
        parent = owned_parent(conn, name)
        attached = self._attached(parent)
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
                    out.conclude(notes, timed_out=True)
                    return
            elif state == "attached" and pname in attached:
                action = PartitionAction(pname, "delete_rows", 0, start, end, "planned")
                if self.dry_run:
                    action.held = held_storage.count_held_rows(conn, name, pname, t)
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
                    note = self._delete_rows(action)
                    if note:
                        notes.append(note)
                if action.rows or action.held or action.status in ("contended", "timed_out"):
                    out.actions.append(action)
                # Batches deleted before an interruption were committed and audited.
                out.rows_purged += action.rows
                out.rows_held += action.held
                if action.status == "timed_out":
                    out.conclude(notes, timed_out=True)
                    return
                out.contended += action.status == "contended"
        interrupted = self._purge_held(out)
        if interrupted is not None:
            notes.append(interrupted[1])
        timed_out = interrupted is not None and interrupted[0] == OUTCOME_TIMED_OUT
        for action in out.actions:
            if self.dry_run or action.action != "delete_rows" or not (action.rows or action.held):
                continue
            stopped = self._vacuum(action)
            if stopped is not None:
                notes.append(stopped[1])
                out.contended += stopped[0] == OUTCOME_CONTENDED
                timed_out = timed_out or stopped[0] == OUTCOME_TIMED_OUT
        out.conclude(notes, timed_out=timed_out)

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
        conn, category = self.conn, self.category
        try:
            if self.dry_run:
                done = held_storage.purge_released(conn, category, self.instant, dry_run=True)
            else:
                with conn.transaction():
                    held_storage.lock_for_destruction(conn)
                    done = held_storage.purge_released(conn, category, self.instant)
                    if done.rows:
                        audit.record(
                            conn,
                            audit_entries.held_rows_deleted(
                                pass_id=self.pass_id,
                                category=category,
                                rows=done.rows,
                                expiry_from=done.expiry_from,
                                expiry_to=done.expiry_to,
                                purge_instant=self.instant,
                                policy=self.policy,
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
                extra={"category": category, "pass_id": self.pass_id, "outcome": status},
            )
            return status, error_text(exc)
        out.held_purged += done.rows
        out.rows_purged += done.rows
        return None

    def _drop(self, parent: str, action: PartitionAction, attached: dict[str, bool]) -> str | None:
        # Returns what interrupted the drop (the action is then contended or
        # timed_out); any other error propagates and fails the category.
        return self._attempt(
            action,
            f"drop partition {action.partition}",
            lambda: self._drop_now(parent, action, attached),
        )

    def _drop_now(self, parent: str, action: PartitionAction, attached: dict[str, bool]) -> None:
        conn, category = self.conn, self.category
        pname = action.partition
        ident = {"parent": sql.Identifier(parent), "partition": sql.Identifier(pname)}
        if pname in attached:
            if attached[pname]:
                # A detach interrupted between its two phases: finish it.
                conn.execute(template("detach_finalize", **ident))
            else:
                conn.execute(query("set_partition_state"), {"state": "detaching", "name": pname})
                conn.execute(template("detach_concurrently", **ident))
            conn.execute(query("set_partition_state"), {"state": "detached", "name": pname})
        exists = conn.execute(query("relation_exists"), {"name": pname}).fetchone()
        with conn.transaction():
            # First in the transaction: lock out hold changes and re-read the
            # active holds, so that a hold committed before now is honoured.
            active = held_storage.lock_for_destruction(conn)
            kept = held_storage.HeldRows(0, ())
            if exists and exists[0]:
                kept = held_storage.hold_expired_rows(
                    conn, category, pname, active, self.instant, remove=False
                )
                conn.execute(template("drop_partition", partition=sql.Identifier(pname)))
            row = conn.execute(query("unregister_partition"), {"name": pname}).fetchone()
            action.held = kept.rows
            action.rows = max((int(row[0]) if row else 0) - kept.rows, 0)
            audit.record(
                conn,
                audit_entries.partition_dropped(
                    pass_id=self.pass_id,
                    category=category,
                    partition=pname,
                    rows=action.rows,
                    held=kept.rows,
                    hold_ids=kept.hold_ids,
                    expiry_from=action.range_start,
                    expiry_to=action.range_end,
                    policy=self.policy,
                ),
            )

    def _delete_rows(self, action: PartitionAction) -> str | None:
        # Like _drop: what interrupted it, batches committed before stay counted.
        return self._attempt(
            action,
            f"delete expired rows of {action.partition}",
            lambda: self._delete_batches(action),
        )

    def _delete_batches(self, action: PartitionAction) -> None:
        conn, category = self.conn, self.category
        ident = sql.Identifier(action.partition)
        while True:
            with conn.transaction():
                # Each batch re-reads the holds under the lock and first moves
                # the covered expired rows out, so the DELETE finds none.
                active = held_storage.lock_for_destruction(conn)
                kept = held_storage.hold_expired_rows(
                    conn, category, action.partition, active, self.instant, remove=True
                )
                if kept.rows:
                    conn.execute(
                        query("decrement_rows"), {"n": kept.rows, "name": action.partition}
                    )
                    action.held += kept.rows
                row = conn.execute(
                    template("delete_expired_batch", partition=ident),
                    {"t": self.instant, "limit": self.delete_batch_size},
                ).fetchone()
                assert row is not None
                n = int(row[0])
                if n == 0:
                    break
                conn.execute(query("decrement_rows"), {"n": n, "name": action.partition})
                audit.record(
                    conn,
                    audit_entries.rows_deleted(
                        pass_id=self.pass_id,
                        category=category,
                        partition=action.partition,
                        rows=n,
                        expiry_from=row[1],
                        expiry_to=row[2],
                        purge_instant=self.instant,
                        policy=self.policy,
                    ),
                )
            action.rows += n
            if n < self.delete_batch_size:
                break

    def _vacuum(self, action: PartitionAction) -> tuple[str, str] | None:
        # The deletes are committed and audited: a vacuum that fails never undoes them,
        # it only names the category's outcome (an interruption is returned, any other
        # error propagates as a failure). VACUUM cannot run in a transaction block: the
        # pass's connection is in autocommit. INDEX_CLEANUP ON: index entries (the GIN
        # index holds subject keys) go too, not only the heap tuples.
        pname, rows = action.partition, action.rows + action.held
        try:
            with wrap_errors(f"vacuum partition {pname}"):
                self.conn.execute(
                    sql.SQL("VACUUM (ANALYZE, INDEX_CLEANUP ON) {}").format(
                        sql.Identifier("purger", pname)
                    )
                )
                with self.conn.transaction():
                    audit.record(
                        self.conn,
                        audit_entries.partition_vacuumed(
                            pass_id=self.pass_id,
                            category=self.category,
                            partition=pname,
                            rows_deleted=rows,
                        ),
                    )
        except StorageError as exc:
            status = interruption(exc)
            if status is None:
                raise
            log.warning(
                "partition not vacuumed (%s); its deleted rows stay on its pages until a "
                "later vacuum",
                status,
                extra={"category": self.category, "pass_id": self.pass_id, "outcome": status},
            )
            return status, error_text(exc)
        return None

    def _attempt(self, action: PartitionAction, what: str, work: Callable[[], None]) -> str | None:
        """Run ``work`` (``what`` names it in errors) and mark ``action`` done.

        Returns what interrupted it (the action is then contended or timed_out); any other
        error propagates and fails the category.
        """
        try:
            with wrap_errors(what):
                work()
            action.status = "done"
        except StorageError as exc:
            status = interruption(exc)
            if status is None:
                raise
            return self._interrupted(status, exc, action)
        return None

    def _interrupted(self, status: str, exc: StorageError, action: PartitionAction) -> str:
        action.status = status
        log.warning(
            "partition not purged (%s); retried on a later pass",
            status,
            extra={"category": self.category, "pass_id": self.pass_id, "outcome": status},
        )
        return error_text(exc)
