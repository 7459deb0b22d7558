"""Reading a category's stored records, live and held, outside a destroying transaction.

A category's records are in its partitions (attached or detached) and in its
held storage. The hold registry counts a scope over them and the subject export
reads them; neither takes the legal-hold lock, so a purge pass may drop a
partition between listing the partitions and reading them: ``relisting`` lists
again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from purger.db import wrap_errors
from purger.errors import StorageError
from purger.hold_scope import HoldScope, prefilter
from purger.partitions import held_table
from purger.queries import query, template

_ATTEMPTS = 5
_T = TypeVar("_T")


def record_tables(conn: psycopg.Connection[Any], category: str) -> list[str]:
    """Every table that stores records of ``category``: its partitions, then held storage.

    Partitions by name, attached or detached, so that a detach running meanwhile
    cannot hide rows.
    """
    rows = conn.execute(query("category_partition_tables"), {"category": category}).fetchall()
    return [str(r[0]) for r in rows] + [held_table(category)]


def relisting(action: Callable[[], _T]) -> _T:
    """Run ``action`` (which lists the tables itself) again when a listed table vanished.

    Each retry means a pass made progress, so a few attempts always suffice.
    """
    for attempt in range(_ATTEMPTS):
        try:
            return action()
        except StorageError as exc:
            if attempt + 1 < _ATTEMPTS and isinstance(exc.__cause__, pgerrors.UndefinedTable):
                continue
            raise
    raise AssertionError("unreachable")


def count_matching_once(conn: psycopg.Connection[Any], category: str, scope: HoldScope) -> int:
    """Stored records of ``category`` in ``scope``, in the caller's transaction, no retry."""
    pf = prefilter([scope])
    assert pf is not None
    condition, params = pf
    parts = [
        template("scope_matches", source=sql.Identifier(source), prefilter=condition)
        for source in record_tables(conn, category)
    ]
    # UNION: a record counts once even if a redelivery left it in two places.
    counted = template("count_union", parts=sql.SQL(" UNION ").join(parts))
    row = conn.execute(counted, {**params, **scope.params(), "category": category}).fetchone()
    return int(row[0]) if row else 0


def count_matching(conn: psycopg.Connection[Any], category: str, scope: HoldScope) -> int:
    """Stored records of ``category`` (live and held) in ``scope``, active hold or not."""
    if not scope.applies_to(category):
        return 0

    def count() -> int:
        with wrap_errors("count records in a hold's scope"), conn.transaction():
            return count_matching_once(conn, category, scope)

    return relisting(count)
