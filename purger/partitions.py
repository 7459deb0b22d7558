"""All partition DDL: category parent tables, partitions, detach and drop.

Partitions cover ``[range_start, range_end)`` of ``expires_at``, aligned to the
Unix epoch in steps of the configured granularity (one UTC day by default).
Only tables registered in ``purger.categories``/``purger.partitions`` and
attached to (or detached from) the purger's own parents are ever touched.

Changing the granularity is safe: existing partitions keep their ranges, and a
partition is only created for an instant that no existing partition covers. Its
range is the current granularity's aligned range around the instant, clipped so
that it starts no earlier than the end of the nearest partition before it and
ends no later than the start of the nearest one after it: new partitions start
where the last one ends, and ranges never overlap. Every bound is a whole UTC
hour (granularities are whole hours), so ``partition_name(category, start)``
stays unique. The ranges to avoid are re-read from the registry (every state)
under the category's DDL lock, so racing creators agree.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from purger.db import wrap_errors
from purger.errors import NotOwnedError
from purger.policy import Category
from purger.queries import query, sql_file, template

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SCHEMA = "purger"
HOUR = timedelta(hours=1)

Range = tuple[datetime, datetime]
"""A partition range ``[start, end)`` of ``expires_at``."""


def parent_table(category: str) -> str:
    """Name of the category's parent table."""
    return f"records_{category}"


def keys_table(category: str) -> str:
    """The key registry of ``category``: one row per stored record, whatever its expiry."""
    return f"keys_{category}"


def held_table(category: str) -> str:
    """Name of the category's held storage (records kept past expiry by legal holds)."""
    return f"held_{category}"


def partition_name(category: str, start: datetime) -> str:
    """Name of the partition starting at ``start`` (UTC)."""
    return f"{parent_table(category)}_p{start.astimezone(UTC):%Y%m%d%H}"


def range_containing(instant: datetime, granularity: timedelta) -> tuple[datetime, datetime]:
    """The partition range ``[start, end)`` that holds ``instant``."""
    steps = (instant.astimezone(UTC) - EPOCH) // granularity
    start = EPOCH + steps * granularity
    return start, start + granularity


def covering(ranges: Sequence[Range], instant: datetime) -> Range | None:
    """The range of ``ranges`` (sorted by start, not overlapping) that holds ``instant``."""
    i = bisect.bisect_right(ranges, instant, key=lambda r: r[0])
    if i and ranges[i - 1][1] > instant:
        return ranges[i - 1]
    return None


def plan_range(
    instant: datetime, granularity: timedelta, existing: Sequence[Range]
) -> Range | None:
    """The range of a new partition for ``instant``, or None when ``existing`` covers it.

    ``existing`` is sorted by start and does not overlap. The new range is the
    granularity's aligned range around ``instant``, clipped to start no earlier
    than the end of the nearest existing range before it and to end no later
    than the start of the nearest one after it: it contains ``instant`` and
    overlaps nothing.
    """
    i = bisect.bisect_right(existing, instant, key=lambda r: r[0])
    if i and existing[i - 1][1] > instant:
        return None
    start, end = range_containing(instant, granularity)
    if i:
        start = max(start, existing[i - 1][1])
    if i < len(existing):
        end = min(end, existing[i][0])
    return start, end


def sorted_ranges(ranges: Iterable[Range]) -> list[Range]:
    """``ranges`` sorted by start, duplicates removed."""
    return sorted(set(ranges))


@dataclass(frozen=True, order=True)
class PartitionInfo:
    """A partition the purger owns."""

    range_start: datetime
    range_end: datetime
    name: str
    category: str
    row_count: int = 0
    state: str = "attached"


def ensure_category_table(conn: psycopg.Connection[Any], category: Category) -> None:
    """Create (if missing) and register the category's parent, held storage and key registry."""
    parent = parent_table(category.name)
    held = held_table(category.name)
    ddl = sql.SQL(sql_file("category_table.sql")).format(
        parent=sql.Identifier(parent),
        gin_index=sql.Identifier(f"{parent}_subject_keys_idx"),
        tenant_index=sql.Identifier(f"{parent}_tenant_idx"),
        held=sql.Identifier(held),
        held_gin_index=sql.Identifier(f"{held}_subject_keys_idx"),
        held_tenant_index=sql.Identifier(f"{held}_tenant_idx"),
        keys=sql.Identifier(keys_table(category.name)),
        keys_index=sql.Identifier(f"{keys_table(category.name)}_expires_at_idx"),
    )
    with wrap_errors(f"create table of category {category.name}"), conn.transaction():
        conn.execute(query("lock_partition_ddl"), {"category": category.name})
        conn.execute(ddl)
        conn.execute(
            query("register_category"),
            {"name": category.name, "parent": parent, "topic": category.topic},
        )
        for table in (parent, held, keys_table(category.name)):
            hand_over(conn, table)


def hand_over(conn: psycopg.Connection[Any], table: str) -> None:
    """Make ``purger_runtime`` (migration 0006) the owner of a category table it created.

    The runtime role's members create, detach, drop and vacuum partitions, which
    needs the owner; a table owned by one login role would be out of reach of the
    others. Nothing happens before 0006 or when the role already owns it.
    """
    row = conn.execute(query("runtime_owner_needed"), {"name": table}).fetchone()
    if row is not None and row[0]:
        conn.execute(template("hand_over", table=sql.Identifier(table)))


def owned_parent(conn: psycopg.Connection[Any], category: str) -> str:
    """The parent table of ``category``, checked against the catalog; NotOwnedError if not."""
    row = conn.execute(query("owned_parent"), {"name": category}).fetchone()
    if row is None or row[0] != parent_table(category):
        raise NotOwnedError(
            f"category {category!r} has no partitioned table owned by the purger; "
            "run `purger migrate`"
        )
    return str(row[0])


class PartitionManager:
    """Creates partitions ahead of need and on demand, safely when workers race.

    The cache holds, per category, the sorted ranges of the partitions known to
    exist; an instant is covered when one of them contains it, whatever the
    granularity that created it.
    """

    def __init__(self, granularity: timedelta) -> None:
        if granularity <= timedelta(0) or granularity % HOUR:
            raise ValueError(f"partition granularity must be whole hours, not {granularity}")
        self.granularity = granularity
        self._known: dict[str, list[Range]] = {}
        self._lock = threading.Lock()

    def forget(self, category: str) -> None:
        """Drop the cache of known partitions (after a purge, or an insert that missed one)."""
        with self._lock:
            self._known.pop(category, None)

    def ensure(self, conn: psycopg.Connection[Any], category: str, instants: list[datetime]) -> int:
        """Make sure a partition exists for each instant; return how many were created.

        Runs in its own short transactions, before the batch transaction, so the
        DDL lock on the parent is held only briefly.
        """
        with self._lock:
            known = self._ranges(conn, category)
            missing = sorted({i for i in instants if covering(known, i) is None})
        created = 0
        for instant in missing:
            created += self._cover(conn, category, instant)[1]
        return created

    def ensure_ahead(
        self, conn: psycopg.Connection[Any], category: Category, now: datetime, count: int
    ) -> int:
        """Cover, without gaps, the expiries of records arriving in the next ``count`` periods.

        Walks from the expiry of a record arriving now to ``count`` granularities
        later, partition by partition: existing partitions (of any range) are
        kept, the gaps between them get new ones.
        """
        base = category.expires_at("", now)
        horizon = base + count * self.granularity
        created = 0
        cursor = base
        while cursor <= horizon:
            found, made = self._cover(conn, category.name, cursor)
            created += made
            cursor = found[1]
        return created

    def _ranges(self, conn: psycopg.Connection[Any], category: str) -> list[Range]:
        # Called with self._lock held.
        if category not in self._known:
            self._known[category] = self._load(conn, category)
        return self._known[category]

    def _cover(
        self, conn: psycopg.Connection[Any], category: str, instant: datetime
    ) -> tuple[Range, bool]:
        """The range of the partition holding ``instant`` and whether it was created now."""
        with self._lock:
            found = covering(self._ranges(conn, category), instant)
        if found is not None:
            return found, False
        found, created = self._create(conn, category, instant)
        with self._lock:
            known = self._known.setdefault(category, [])
            if found not in known:
                bisect.insort(known, found)
        return found, created

    def _load(self, conn: psycopg.Connection[Any], category: str) -> list[Range]:
        with wrap_errors(f"list partitions of {category}"), conn.transaction():
            rows = conn.execute(query("known_partitions"), {"category": category}).fetchall()
        return sorted_ranges((row[1], row[2]) for row in rows)

    def _create(
        self, conn: psycopg.Connection[Any], category: str, instant: datetime
    ) -> tuple[Range, bool]:
        with wrap_errors(f"create a partition of {category}"), conn.transaction():
            # Serialises creators of one category: a racing worker waits, then
            # finds the partition in the registry and creates nothing.
            conn.execute(query("lock_partition_ddl"), {"category": category})
            parent = owned_parent(conn, category)
            # Every range the registry holds, detached ones too (their tables
            # may still exist): the new range must overlap none of them.
            existing = sorted_ranges(
                (row[0], row[1])
                for row in conn.execute(query("partition_ranges"), {"category": category})
            )
            planned = plan_range(instant, self.granularity, existing)
            if planned is None:
                found = covering(existing, instant)
                assert found is not None
                return found, False
            start, end = planned
            name = partition_name(category, start)
            exists = conn.execute(query("relation_exists"), {"name": name}).fetchone()
            if exists and exists[0]:
                return planned, False
            with wrap_errors(f"create partition {name}"):
                names = {
                    "partition": sql.Identifier(name),
                    "parent": sql.Identifier(parent),
                    "start": sql.Literal(start),
                    "end": sql.Literal(end),
                }
                conn.execute(template("create_partition", **names))
                conn.execute(template("attach_partition", **names))
                hand_over(conn, name)
                conn.execute(
                    query("register_partition"),
                    {"name": name, "category": category, "start": start, "end": end},
                )
        return planned, True


def is_missing_partition(exc: BaseException) -> bool:
    """True when an insert failed because no partition covers a row."""
    return isinstance(exc, pgerrors.CheckViolation) and "no partition" in str(exc)
