"""Forgetting the keys of destroyed records, after the pass, in bounded batches.

The key registry (``keys_<category>``) admits each record once. A pass destroys
records by dropping whole partitions; deleting their keys row by row inside each
drop made every drop cost a row delete per record (3.5 times the pass time in
the benchmark). So the drop leaves the keys, and this step forgets them after
the pass: keys expired at T, older than every partition still registered (no
stored record can have them) and not held. A key left meanwhile only means that
a destroyed record arriving again counts as a duplicate, as it would if stored.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from purger.db import wrap_errors
from purger.partitions import held_table, keys_table
from purger.queries import template


def forget_destroyed_keys(
    conn: psycopg.Connection[Any],
    category: str,
    t: datetime,
    *,
    batch_size: int = 50000,
    budget_seconds: float | None = None,
) -> int:
    """Delete the keys of ``category``'s records destroyed by a pass at ``t``; how many."""
    statement = template(
        "forget_keys_batch",
        keys=sql.Identifier(keys_table(category)),
        held=sql.Identifier(held_table(category)),
    )
    deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
    forgotten = 0
    while deadline is None or time.monotonic() < deadline:
        with wrap_errors(f"forget the keys of destroyed {category} records"), conn.transaction():
            n = conn.execute(
                statement, {"t": t, "category": category, "limit": batch_size}
            ).rowcount
        forgotten += n
        if n < batch_size:
            break
    return forgotten
