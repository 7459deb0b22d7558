"""Retiring a category: everything it stored destroyed at the next pass, then its tables.

A category removed from the policy is refused (purger/policy_versions.py) until
it is retired with ``purger policy retire``. From then on the category keeps
nothing: each pass destroys all its records at ``RETIRED_INSTANT`` (held ones go
to held storage, as with any expiry) and arriving records are expired on arrival.
Once no partition and no held record is left, its tables are dropped. Each step
is audited.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from purger import audit, held_storage
from purger.audit_entries import Entry, Kind
from purger.db import wrap_errors
from purger.errors import PolicyError
from purger.partitions import held_table, keys_table, parent_table
from purger.queries import query

POLICY_SQL = "policy.sql"
# Later than any expiry: the contract admits occurred_at before 9000-01-01.
RETIRED_INSTANT = datetime(9999, 1, 1, tzinfo=UTC)


def retire(conn: psycopg.Connection[Any], category: str, *, retired_by: str) -> dict[str, Any]:
    """Mark ``category`` retired (audited); PolicyError when unknown or already retired."""
    with wrap_errors(f"retire {category}"), conn.transaction():
        conn.execute(query("policy_lock", POLICY_SQL))
        # Exclusive: no batch that read the category's rules before commits after.
        conn.execute(query("ingest_lock_exclusive"), {"category": category})
        row = conn.execute(
            query("retire_category", POLICY_SQL), {"category": category, "by": retired_by}
        ).fetchone()
        if row is None:
            known = conn.execute(query("retired_categories", POLICY_SQL)).fetchall()
            if any(r[0] == category for r in known):
                raise PolicyError(f"category {category} is already retired")
            raise PolicyError(f"category {category} is not stored by the purger; nothing to retire")
        stats = conn.execute(query("category_stats"), {"category": category}).fetchone()
        records = int(stats[1]) if stats else 0
        held = held_storage.held_count(conn, category)
        content = {
            "category": category,
            "retired_by": retired_by,
            "retired_at": row[0].isoformat(),
            "records": records,
            "held": held,
        }
        audit.record(conn, Entry(Kind.CATEGORY_RETIRED, content))
    return content


def retired(conn: psycopg.Connection[Any]) -> list[str]:
    """Retired categories whose tables still exist."""
    return [str(r[0]) for r in conn.execute(query("retired_categories", POLICY_SQL))]


def drop_if_empty(conn: psycopg.Connection[Any], category: str, *, pass_id: str) -> bool:
    """Drop a retired category's tables once nothing is left in them (audited)."""
    with wrap_errors(f"drop the tables of retired {category}"), conn.transaction():
        conn.execute(query("lock_partition_ddl"), {"category": category})
        held_storage.lock_for_destruction(conn)
        row = conn.execute(
            query("category_partition_count", POLICY_SQL), {"category": category}
        ).fetchone()
        if (row is not None and int(row[0])) or held_storage.held_count(conn, category):
            return False
        conn.execute(
            query("drop_category_tables", POLICY_SQL).format(
                parent=sql.Identifier(parent_table(category)),
                held=sql.Identifier(held_table(category)),
                keys=sql.Identifier(keys_table(category)),
            )
        )
        conn.execute(query("mark_dropped", POLICY_SQL), {"category": category})
        audit.record(conn, Entry(Kind.CATEGORY_DROPPED, {"category": category, "pass_id": pass_id}))
    return True
