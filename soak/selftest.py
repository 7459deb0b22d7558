"""``--self-test``: plant known faults after the final pass; the checker must find exactly them.

A checker that cannot fail proves nothing. After the final pass this deletes a live record
(lost), deletes a record a legal hold keeps (held record destroyed), copies a live record into
held storage under its own id (duplicated) and adds an expired record no hold covers (expired
unheld record left). Neither deletion is in the audit trail, so the witnessed-minus-audited row
must show both.
"""

from __future__ import annotations

import random
from typing import Any

import psycopg
from psycopg import sql

from purger.partitions import held_table, parent_table
from soak.config import SoakError
from soak.traffic import Ledger, Sent
from soak.workspace import Workspace

# The rows of the table the planted faults must show, and by how much (all others 0).
EXPECTED = {
    "lost": 1,
    "held_destroyed": 1,
    "duplicated": 1,
    "expired_left": 1,
    "audit_count": 2,
}
_COLUMNS = (
    "tenant, occurred_at, subject_keys, subjects, payload, source_topic, source_partition, "
    "source_offset"
)


def _stored(conn: psycopg.Connection[Any], sent: Sent, *, held_too: bool = False) -> bool:
    tables = [parent_table(sent.category)] + ([held_table(sent.category)] if held_too else [])
    for table in tables:
        row = conn.execute(
            sql.SQL("SELECT 1 FROM purger.{} WHERE record_id = %s").format(sql.Identifier(table)),
            [sent.key],
        ).fetchone()
        if row is not None:
            return True
    return False


def plant(ws: Workspace, ledger: Ledger, held_keys: set[str], rng: random.Random) -> None:
    """Plant the four faults; ``held_keys`` are subject keys of holds active to the end."""
    sent = ledger.snapshot()
    rng.shuffle(sent)
    plain = [s for s in sent if s.kind == "good" and not s.pool_keys]
    kept = [s for s in sent if s.kind in ("good", "expired") and s.pool_keys & held_keys]
    with psycopg.connect(ws.database_url(), autocommit=True) as conn:
        live = [s for s in plain[:200] if _stored(conn, s)]
        kept = [s for s in kept[:200] if _stored(conn, s, held_too=True)]
        if len(live) < 3 or not kept:
            raise SoakError("self-test: too little traffic to plant the faults in")
        lost, duplicated, expired = live[:3]
        # Lost: a live record disappears without a pass.
        conn.execute(
            sql.SQL("DELETE FROM purger.{} WHERE record_id = %s").format(
                sql.Identifier(parent_table(lost.category))
            ),
            [lost.key],
        )
        # Held record destroyed: a record a hold keeps disappears from both tables.
        victim = kept[0]
        for table in (parent_table(victim.category), held_table(victim.category)):
            conn.execute(
                sql.SQL("DELETE FROM purger.{} WHERE record_id = %s").format(sql.Identifier(table)),
                [victim.key],
            )
        # Duplicated: the same record id in held storage as well.
        conn.execute(
            sql.SQL(
                "INSERT INTO purger.{held} (record_id, expires_at, {cols}) "
                "SELECT record_id, expires_at, {cols} FROM purger.{parent} WHERE record_id = %s"
            ).format(
                held=sql.Identifier(held_table(duplicated.category)),
                parent=sql.Identifier(parent_table(duplicated.category)),
                cols=sql.SQL(_COLUMNS),
            ),
            [duplicated.key],
        )
        # Expired unheld record left: a new record, expired yesterday, that no hold covers.
        conn.execute(
            sql.SQL(
                "INSERT INTO purger.{held} (record_id, expires_at, {cols}) "
                "SELECT 'self-test-' || record_id, now() - interval '1 day', {cols} "
                "FROM purger.{parent} WHERE record_id = %s"
            ).format(
                held=sql.Identifier(held_table(expired.category)),
                parent=sql.Identifier(parent_table(expired.category)),
                cols=sql.SQL(_COLUMNS),
            ),
            [expired.key],
        )


def verdict(totals: dict[str, int], must_be_zero: set[str]) -> list[str]:
    """How the checker's totals differ from the planted faults (empty: it found exactly them)."""
    problems = []
    for key in sorted(must_be_zero | set(EXPECTED)):
        want = EXPECTED.get(key, 0)
        if totals.get(key, 0) != want:
            problems.append(f"{key} {totals.get(key, 0)} (planted {want})")
    return problems
