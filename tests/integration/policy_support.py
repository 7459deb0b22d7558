"""Helpers of the policy-lifecycle tests: policies changed on disk, records, re-tagging."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from purger.partitions import PartitionManager, held_table, keys_table, parent_table
from purger.policy import RetentionPolicy, load_policy
from purger.records import Record
from purger.retag import Retagger
from purger.storage import Envelope, Storage

_offsets = itertools.count(1)


def changed_policy(base: Path, out: Path, **categories: dict[str, Any] | None) -> RetentionPolicy:
    """``base`` with categories changed (a dict of keys to set, None to remove one)."""
    data = yaml.safe_load(base.read_text())
    data["version"] = f"{data['version']}+{out.stem}"
    for name, change in categories.items():
        if change is None:
            data["categories"].pop(name)
        else:
            for key, value in change.items():
                if value is None:
                    data["categories"][name].pop(key, None)
                else:
                    data["categories"][name][key] = value
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_policy(out)


def record(
    policy: RetentionPolicy,
    category: str,
    record_id: str,
    occurred_at: datetime,
    *,
    tenant: str = "t1",
    msisdn: str = "+31612345678",
) -> Envelope:
    """A record tagged by ``policy``, as the consumers would tag it."""
    rec = Record(
        record_id=record_id,
        occurred_at=occurred_at,
        tenant=tenant,
        subjects={"msisdn": [msisdn]},
        payload={"seq": record_id},
    )
    expiry = policy.category(category).expires_at(tenant, occurred_at)
    return Envelope(rec, expiry, topic="test", partition=0, offset=next(_offsets))


def store(url: str, policy: RetentionPolicy, category: str, items: list[Envelope]) -> Any:
    """Store ``items`` through the real ingest path with a process running ``policy``."""
    with Storage(url, policy) as storage:
        return storage.store_batch(category, items)


def retag_all(url: str, category: str, batch_size: int = 2000) -> Any:
    """Re-tag ``category`` to completion."""
    with psycopg.connect(url, autocommit=True) as conn:
        return Retagger(conn, PartitionManager(timedelta(days=1)), batch_size=batch_size).run(
            category
        )


def rows(url: str, category: str, table: str = "parent") -> dict[str, tuple[Any, ...]]:
    """record_id -> (occurred_at, expires_at, rule_version, tenant) of a table of ``category``."""
    name = {"parent": parent_table, "held": held_table}[table](category)
    out: dict[str, tuple[Any, ...]] = {}
    with psycopg.connect(url) as conn:
        for r in conn.execute(
            sql.SQL(
                "SELECT record_id, occurred_at, expires_at, rule_version, tenant FROM purger.{}"
            ).format(sql.Identifier(name))
        ):
            assert r[0] not in out, f"record {r[0]} stored twice"
            out[r[0]] = tuple(r[1:])
    return out


def keys(url: str, category: str) -> dict[str, datetime]:
    """record_id -> expires_at of the key registry."""
    with psycopg.connect(url) as conn:
        return {
            r[0]: r[1]
            for r in conn.execute(
                sql.SQL("SELECT record_id, expires_at FROM purger.{}").format(
                    sql.Identifier(keys_table(category))
                )
            )
        }


def registry_counts_match(url: str, category: str) -> None:
    """The partition registry's row counts equal the rows in each partition."""
    with psycopg.connect(url) as conn:
        for name, count in conn.execute(
            "SELECT partition_name, row_count FROM purger.partitions "
            "WHERE category = %s AND state = 'attached'",
            (category,),
        ).fetchall():
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM purger.{}").format(sql.Identifier(name))
            ).fetchone()
            assert row is not None and row[0] == count, (name, row, count)


def utc(*args: int) -> datetime:
    """A UTC instant."""
    return datetime(*args, tzinfo=UTC)
