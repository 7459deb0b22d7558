"""All partition DDL: category parent tables, partitions, detach and drop.

Partitions cover ``[range_start, range_end)`` of ``expires_at``, aligned to the
Unix epoch in steps of the configured granularity (one UTC day by default).
Only tables registered in ``purger.categories``/``purger.partitions`` and
attached to (or detached from) the purger's own parents are ever touched.
"""

from __future__ import annotations

import threading
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


def parent_table(category: str) -> str:
    """Name of the category's parent table."""
    return f"records_{category}"


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
    """Create (if missing) and register the category's partitioned parent and held table."""
    parent = parent_table(category.name)
    held = held_table(category.name)
    ddl = sql.SQL(sql_file("category_table.sql")).format(
        parent=sql.Identifier(parent),
        gin_index=sql.Identifier(f"{parent}_subject_keys_idx"),
        tenant_index=sql.Identifier(f"{parent}_tenant_idx"),
        held=sql.Identifier(held),
        held_gin_index=sql.Identifier(f"{held}_subject_keys_idx"),
        held_tenant_index=sql.Identifier(f"{held}_tenant_idx"),
    )
    with wrap_errors(f"create table of category {category.name}"), conn.transaction():
        conn.execute(query("lock_partition_ddl"), {"category": category.name})
        conn.execute(ddl)
        conn.execute(
            query("register_category"),
            {"name": category.name, "parent": parent, "topic": category.topic},
        )


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
    """Creates partitions ahead of need and on demand, safely when workers race."""

    def __init__(self, granularity: timedelta) -> None:
        self.granularity = granularity
        self._known: dict[str, set[datetime]] = {}
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
        starts = {range_containing(i, self.granularity)[0] for i in instants}
        with self._lock:
            if category not in self._known:
                self._known[category] = self._load(conn, category)
            missing = sorted(starts - self._known[category])
        created = 0
        for start in missing:
            if self._create(conn, category, start):
                created += 1
            with self._lock:
                self._known.setdefault(category, set()).add(start)
        return created

    def ensure_ahead(
        self, conn: psycopg.Connection[Any], category: Category, now: datetime, count: int
    ) -> int:
        """Create the partitions that records arriving in the next ``count`` periods need."""
        base = category.expires_at("", now)
        instants = [base + i * self.granularity for i in range(count + 1)]
        return self.ensure(conn, category.name, instants)

    def _load(self, conn: psycopg.Connection[Any], category: str) -> set[datetime]:
        with wrap_errors(f"list partitions of {category}"), conn.transaction():
            rows = conn.execute(query("known_partitions"), {"category": category}).fetchall()
        return {row[1] for row in rows}

    def _create(self, conn: psycopg.Connection[Any], category: str, start: datetime) -> bool:
        end = start + self.granularity
        name = partition_name(category, start)
        with wrap_errors(f"create partition {name}"), conn.transaction():
            # Serialises creators of one category: a racing worker waits, then
            # finds the partition and creates nothing.
            conn.execute(query("lock_partition_ddl"), {"category": category})
            parent = owned_parent(conn, category)
            exists = conn.execute(query("relation_exists"), {"name": name}).fetchone()
            if exists and exists[0]:
                return False
            conn.execute(
                template(
                    "create_partition",
                    partition=sql.Identifier(name),
                    parent=sql.Identifier(parent),
                    start=sql.Literal(start),
                    end=sql.Literal(end),
                )
            )
            conn.execute(
                query("register_partition"),
                {"name": name, "category": category, "start": start, "end": end},
            )
        return True


def is_missing_partition(exc: BaseException) -> bool:
    """True when an insert failed because no partition covers a row."""
    return isinstance(exc, pgerrors.CheckViolation) and "no partition" in str(exc)
