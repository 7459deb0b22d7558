"""Held storage: where records an active legal hold covers outlive their expiry.

A stored record is purgeable only when it is expired and no active hold covers
it (``purger.hold_covers``, migration 0003). Each category has a held table
(``purger.held_<category>``); the purge pass and ingestion call this module.

Airtightness rests on one table lock. Every transaction that destroys or moves
records (a partition drop, a row-delete batch, the purge of released held
records) first takes ``LOCK purger.legal_holds IN SHARE MODE``
(``lock_for_destruction``) and only then reads the active holds. Placing and
releasing a hold take ROW EXCLUSIVE, which conflicts with SHARE: a hold
committed before a destroying transaction is seen by it, and a hold placed
while one runs waits for its commit and then counts what it destroyed
(``destroyed_while_placing``).

Held rows of a partition about to be dropped are copied into held storage,
checked by count, in the transaction that drops the partition. The copy finds
its rows through the GIN index on ``subject_keys`` and the ``(tenant,
occurred_at)`` index, so it costs in proportion to the held records, not to the
partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from purger.db import wrap_errors
from purger.errors import HoldError
from purger.hold_registry import Hold, active_holds
from purger.hold_scope import prefilter
from purger.partitions import held_table, keys_table, parent_table
from purger.queries import query, template


class HeldStorageError(HoldError):
    """Held storage did not receive exactly the held records; nothing was destroyed."""


def lock_for_destruction(conn: psycopg.Connection[Any]) -> list[Hold]:
    """In the caller's transaction: lock out hold changes, then read the active holds.

    Must come before anything in the transaction destroys or moves a record.
    Raises LockTimeout while a hold is being placed or released for longer than
    the session's lock_timeout.
    """
    with wrap_errors("lock out legal-hold changes"):
        conn.execute(query("holds_lock_purge"))
    return active_holds(conn)


@dataclass(frozen=True)
class HeldRows:
    """Rows of one partition moved or copied into held storage."""

    rows: int
    hold_ids: tuple[int, ...]


def _held_where(
    holds: Sequence[Hold], category: str
) -> tuple[sql.Composable, dict[str, Any], tuple[int, ...]] | None:
    applicable = [h for h in holds if h.active and h.scope.applies_to(category)]
    pf = prefilter([h.scope for h in applicable])
    if pf is None:
        return None
    condition, params = pf
    where = template(
        "covered_expired", prefilter=condition, covered=query("covered_by_active_hold")
    )
    return where, params, tuple(h.id for h in applicable)


def _tables(category: str, source: str) -> dict[str, Any]:
    return {"source": sql.Identifier(source), "held": sql.Identifier(held_table(category))}


def hold_expired_rows(
    conn: psycopg.Connection[Any],
    category: str,
    source: str,
    holds: Sequence[Hold],
    t: datetime,
    *,
    remove: bool,
) -> HeldRows:
    """Copy the rows of partition ``source`` expired at ``t`` and held into held storage.

    Runs in the caller's transaction after ``lock_for_destruction`` returned
    ``holds``. With ``remove`` the copied rows leave the partition (the row
    delete of the partition containing T); without it the caller drops the
    partition next. Raises HeldStorageError, so that the caller's transaction
    rolls back, unless held storage then has every held row.
    """
    held = _held_where(holds, category)
    if held is None:
        return HeldRows(0, ())
    where, params, hold_ids = held
    tables = _tables(category, source)
    values = {**params, "t": t, "category": category}
    with wrap_errors(f"preserve held records of {source}"):
        row = conn.execute(template("preserve_check", where=where, **tables), values).fetchone()
        assert row is not None
        expected, already = int(row[0]), int(row[1])
        if expected == 0:
            return HeldRows(0, hold_ids)
        cur = conn.execute(template("preserve_copy", where=where, **tables), values)
        copied = cur.rowcount
        if copied != expected - already:
            raise HeldStorageError(
                f"held storage of {category} received {copied} of {expected - already} "
                f"covered records of {source}; nothing was destroyed"
            )
        if remove:
            cur = conn.execute(template("preserve_remove", where=where, **tables), values)
            if cur.rowcount != expected:
                raise HeldStorageError(
                    f"{cur.rowcount} of {expected} covered records of {source} left it for "
                    "held storage; nothing was destroyed"
                )
    return HeldRows(expected, hold_ids)


def held_rows_check(
    holds: Sequence[Hold], category: str, source: str, t: datetime
) -> tuple[sql.Composed, dict[str, Any]] | None:
    """The statement (and parameters) counting the held rows of ``source`` at ``t``.

    The same condition selects the rows that ``hold_expired_rows`` copies; public
    so that its plan can be checked (index look-ups, never a scan of the partition).
    """
    held = _held_where(holds, category)
    if held is None:
        return None
    where, params, _ = held
    statement = template("preserve_check", where=where, **_tables(category, source))
    return statement, {**params, "t": t, "category": category}


def count_held_rows(conn: psycopg.Connection[Any], category: str, source: str, t: datetime) -> int:
    """Rows of ``source`` expired at ``t`` that active holds hold (a dry run's estimate)."""
    check = held_rows_check(active_holds(conn), category, source, t)
    if check is None:
        return 0
    with wrap_errors(f"count held records of {source}"):
        row = conn.execute(*check).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class HeldPurge:
    """Held records destroyed because no active hold covers them any more."""

    rows: int
    expiry_from: datetime | None
    expiry_to: datetime | None


def purge_released(
    conn: psycopg.Connection[Any], category: str, t: datetime, *, dry_run: bool = False
) -> HeldPurge:
    """Delete held records expired at ``t`` that no active hold covers.

    Call in a transaction after ``lock_for_destruction``, unless ``dry_run``.
    """
    tables: dict[str, Any] = {
        "held": sql.Identifier(held_table(category)),
        "covered": query("covered_by_active_hold"),
    }
    values = {"t": t, "category": category}
    with wrap_errors(f"purge released held records of {category}"):
        if dry_run:
            row = conn.execute(template("held_purgeable", **tables), values).fetchone()
            return HeldPurge(int(row[0]) if row else 0, None, None)
        row = conn.execute(template("held_purge", **tables), values).fetchone()
    assert row is not None
    return HeldPurge(int(row[0]), row[1], row[2])


def store_expired(
    conn: psycopg.Connection[Any], category: str, staging: str, now: datetime, rule_version: int
) -> tuple[int, int]:
    """Move staged records expired at ``now`` and held by an active hold to held storage.

    Runs in the ingest transaction; returns (held, inserted): held minus
    inserted were already stored (the key registry has them, under any expiry).
    """
    row = conn.execute(
        template(
            "store_held_from_staging",
            staging=sql.Identifier(staging),
            keys=sql.Identifier(keys_table(category)),
            held=sql.Identifier(held_table(category)),
            covered=query("covered_by_active_hold"),
        ),
        {"now": now, "category": category, "rule_version": rule_version},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass(frozen=True)
class Coverage:
    """Expired records of one category: held by active holds, and overdue (purgeable)."""

    held: int
    overdue: int


def expired_coverage(conn: psycopg.Connection[Any], category: str, t: datetime) -> Coverage:
    """Expired records of ``category`` at ``t``, split by whether an active hold holds them."""
    held = overdue = 0
    for table in (parent_table(category), held_table(category)):
        row = conn.execute(
            template(
                "expired_by_coverage",
                table=sql.Identifier(table),
                covered=query("covered_by_active_hold"),
            ),
            {"t": t, "category": category},
        ).fetchone()
        if row:
            held += int(row[0])
            overdue += int(row[1])
    return Coverage(held, overdue)


def active_count(conn: psycopg.Connection[Any]) -> int:
    """How many holds are active."""
    row = conn.execute(query("holds_active_count")).fetchone()
    return int(row[0]) if row else 0


def held_count(conn: psycopg.Connection[Any], category: str) -> int:
    """Records in the category's held storage."""
    row = conn.execute(template("held_count", held=sql.Identifier(held_table(category)))).fetchone()
    return int(row[0]) if row else 0
