"""The VACUUM after rows were destroyed, and the audit entry that proves it ran.

A deleted row stays on its page, readable from the table's files, until a vacuum
frees it: a pass's row deletes (the partition that contains T) and an erasure are
followed by one. VACUUM cannot run in a transaction block (the connection is in
autocommit); its audit entry follows in a transaction of its own. The rows are
already deleted and audited: a failed vacuum never undoes that, and each caller
decides what its failure means (a pass names its outcome, an erasure reports it).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from purger import audit, audit_entries
from purger.db import wrap_errors
from purger.queries import template


def vacuum_audited(
    conn: psycopg.Connection[Any],
    table: str,
    *,
    pass_id: str,
    category: str,
    rows: int,
    analyze: bool,
    kind: str = "table",
) -> None:
    """VACUUM ``purger.table`` (index entries too), then audit it; StorageError if either fails.

    ``analyze``: ANALYZE as well. A pass does without it (it cost as much as the vacuum
    and serves only the planner, whose statistics autovacuum refreshes); an erasure,
    rare and small, keeps it. ``kind`` names the table in the error ("partition").
    """
    name = "vacuum_analyze_table" if analyze else "vacuum_table"
    with wrap_errors(f"vacuum {kind} {table}"):
        conn.execute(template(name, table=sql.Identifier(table)))
        with conn.transaction():
            audit.record(
                conn,
                audit_entries.partition_vacuumed(
                    pass_id=pass_id, category=category, partition=table, rows_deleted=rows
                ),
            )
