"""Helpers of the legal-hold tests: fast seeding in SQL, where records are, the engine."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from psycopg import sql
from psycopg.types.json import Jsonb

from purger import hold_registry, hold_scope
from purger.metrics import Metrics
from purger.partitions import PartitionManager, held_table, parent_table, range_containing
from purger.policy import RetentionPolicy
from purger.purge import Purger
from tests.integration.purge_support import count_into_registry, key_seeded

DAY = timedelta(days=1)


@dataclass(frozen=True)
class Row:
    """A record to seed directly (the consumers would refuse expired ones)."""

    record_id: str
    expires_at: datetime
    tenant: str = "t1"
    occurred_at: datetime | None = None
    subjects: dict[str, list[str]] = field(default_factory=dict)

    @property
    def occurred(self) -> datetime:
        """occurred_at, by default 90 days before the expiry."""
        return self.occurred_at or self.expires_at - timedelta(days=90)

    @property
    def keys(self) -> list[str]:
        """The record's subject keys, as ingestion stores them (already normalised)."""
        return [f"{kind}:{v}" for kind, values in self.subjects.items() for v in values]


def seed(url: str, category: str, rows: Iterable[Row]) -> None:
    """Insert rows into their partitions (created as needed), keeping registry counts exact."""
    rows = list(rows)
    manager = PartitionManager(DAY)
    with psycopg.connect(url, autocommit=True) as conn:
        manager.ensure(conn, category, [r.expires_at for r in rows])
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                sql.SQL(
                    "INSERT INTO purger.{} (record_id, tenant, occurred_at, expires_at, "
                    "subject_keys, subjects, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                ).format(sql.Identifier(parent_table(category))),
                [
                    (
                        r.record_id,
                        r.tenant,
                        r.occurred,
                        r.expires_at,
                        r.keys,
                        Jsonb(r.subjects),
                        Jsonb({"n": r.record_id}),
                    )
                    for r in rows
                ],
            )
            count_into_registry(conn, category, [r.expires_at for r in rows])


def seed_bulk(url: str, category: str, day: datetime, n: int, prefix: str = "bulk") -> None:
    """``n`` records expiring within ``day`` (a partition), each with its own msisdn, in SQL."""
    manager = PartitionManager(DAY)
    with psycopg.connect(url, autocommit=True) as conn:
        manager.ensure(conn, category, [day])
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "INSERT INTO purger.{} (record_id, tenant, occurred_at, expires_at, "
                    "subject_keys, subjects, payload) "
                    "SELECT %(prefix)s || g, 't' || (g %% 7), "
                    "%(day)s - interval '90 days' + g * interval '1 ms', "
                    "%(day)s + g * interval '1 ms', "
                    "ARRAY['msisdn:+3162' || lpad(g::text, 7, '0')], "
                    "jsonb_build_object('msisdn', jsonb_build_array('+3162' || lpad(g::text, 7, "
                    "'0'))), jsonb_build_object('seq', g) "
                    "FROM generate_series(1, %(n)s) g"
                ).format(sql.Identifier(parent_table(category))),
                {"prefix": prefix, "day": day, "n": n},
            )
            conn.execute(
                "UPDATE purger.partitions SET row_count = row_count + %s "
                "WHERE category = %s AND range_start = %s",
                (n, category, range_containing(day, DAY)[0]),
            )
            key_seeded(conn, category)
        conn.execute(sql.SQL("ANALYZE purger.{}").format(sql.Identifier(parent_table(category))))


def where_stored(url: str, category: str) -> dict[str, str]:
    """record_id -> "live" or "held" for every stored record of ``category``."""
    out: dict[str, str] = {}
    with psycopg.connect(url) as conn:
        for table, kind in ((parent_table(category), "live"), (held_table(category), "held")):
            for (rid,) in conn.execute(
                sql.SQL("SELECT record_id FROM purger.{}").format(sql.Identifier(table))
            ):
                assert rid not in out, "a record is stored twice"
                out[str(rid)] = kind
    return out


def make_purger(url: str, policy: RetentionPolicy, **options: Any) -> Purger:
    """The purge engine on ``url`` with a private metrics registry."""
    metrics = Metrics(CollectorRegistry(), list(policy.categories), ingest=False)
    return Purger(url, policy, metrics, **options)


def place(
    url: str, policy: RetentionPolicy, case: str = "CASE-1", **scope: Any
) -> hold_registry.Placement:
    """Place a hold with ``build_scope(**scope)``."""
    with psycopg.connect(url, autocommit=True) as conn:
        return hold_registry.place(
            conn,
            policy,
            hold_scope.build_scope(policy, **scope),
            case_ref=case,
            reason="court order",
            placed_by="tester",
        )


def release(url: str, hold_id: int) -> hold_registry.Hold:
    """Release hold ``hold_id``."""
    with psycopg.connect(url, autocommit=True) as conn:
        return hold_registry.release(conn, hold_id, released_by="tester", reason="case closed")


def audit_kinds(url: str, kind: str) -> list[dict[str, Any]]:
    """Contents of the audit entries of ``kind``, in chain order, with their seq."""
    with psycopg.connect(url) as conn:
        return [
            {"seq": r[0], **r[1]}
            for r in conn.execute(
                "SELECT seq, content FROM purger.audit_log WHERE kind = %s ORDER BY seq", (kind,)
            )
        ]


def relation_exists(url: str, name: str) -> bool:
    """True when table purger.<name> exists."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(format('purger.%%I', %s::text))", (name,)).fetchone()
    return row is not None and row[0] is not None
