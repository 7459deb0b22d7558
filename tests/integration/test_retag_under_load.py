"""Re-tagging a million records while ingestion goes on: no batch waits a second on it."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from purger.durations import parse_duration
from purger.partitions import PartitionManager, keys_table, parent_table
from purger.policy import RetentionPolicy
from purger.retag import Retagger
from purger.storage import Storage
from tests.integration.policy_support import changed_policy, record, registry_counts_match

RECORDS = int(os.environ.get("PURGER_TEST_RETAG_RECORDS", "1000000"))
DAY = timedelta(days=1)


def _seed(url: str, now: datetime, n: int) -> None:
    """``n`` cookie statistics tagged by the applied P1Y, occurred over the last 200 days."""
    parent = sql.Identifier(parent_table("cookie_stats"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        PartitionManager(DAY).ensure(
            conn,
            "cookie_stats",
            [parse_duration("P1Y").add_to(now - d * DAY) for d in range(202)],
        )
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "INSERT INTO purger.{} (record_id, tenant, occurred_at, expires_at, "
                    "subject_keys, subjects, payload, rule_version) "
                    "SELECT 'bulk' || g, 't' || (g %% 7), o, o + interval '1 year', "
                    "ARRAY['cookie:' || g], jsonb_build_object('cookie', jsonb_build_array(g)), "
                    "'{{}}'::jsonb, (SELECT rule_version FROM purger.categories "
                    "                WHERE name = 'cookie_stats') "
                    "FROM generate_series(1, %(n)s) g, "
                    "LATERAL (SELECT %(now)s::timestamptz - (g %% 200) * interval '1 day' "
                    "                - (g %% 86400) * interval '1 second' AS o) x"
                ).format(parent),
                {"n": n, "now": now},
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO purger.{} (record_id, expires_at) "
                    "SELECT record_id, expires_at FROM purger.{}"
                ).format(sql.Identifier(keys_table("cookie_stats")), parent)
            )
            for (name,) in conn.execute(
                "SELECT partition_name FROM purger.partitions WHERE category = 'cookie_stats'"
            ).fetchall():
                conn.execute(
                    sql.SQL(
                        "UPDATE purger.partitions SET row_count = (SELECT count(*) FROM purger.{}) "
                        "WHERE partition_name = %s"
                    ).format(sql.Identifier(name)),
                    (name,),
                )
        conn.execute(sql.SQL("ANALYZE purger.{}").format(parent))


@pytest.mark.timeout(1200)
def test_retagging_a_million_records_never_blocks_ingestion(
    database: str, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    _seed(database, now, RECORDS)
    shorter = changed_policy(policy_file, tmp_path / "v2.yaml", cookie_stats={"retention": "P6M"})
    with Storage(database, shorter) as storage:
        storage.migrate(partitions_ahead=1, applied_by="tester")

    done = threading.Event()
    waits: list[float] = []
    errors: list[BaseException] = []

    def ingest() -> None:
        # A batch that waits a second on a lock fails (lock_timeout): the test then
        # fails on what the retag holds, not on how busy the machine is.
        try:
            with Storage(database, shorter) as writer:
                writer.conn.execute("SET lock_timeout = '1s'")
                writer.conn.commit()
                n = 0
                while not done.is_set():
                    batch = [
                        record(shorter, "cookie_stats", f"live{n}-{i}", now - i * DAY)
                        for i in range(100)
                    ]
                    started = time.monotonic()
                    result = writer.store_batch("cookie_stats", batch)
                    waits.append(time.monotonic() - started)
                    assert result.inserted == 100
                    n += 1
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=ingest)
    writer.start()
    try:
        with psycopg.connect(database, autocommit=True) as conn:
            report = Retagger(conn, PartitionManager(DAY), batch_size=5000).run("cookie_stats")
    finally:
        done.set()
        writer.join(120)
    assert not errors, errors
    assert report.finished
    assert report.retagged >= RECORDS
    assert len(waits) > 10, "ingestion did not go on during the re-tag"
    print(
        f"\nre-tagged {report.retagged} ({report.moved} moved); {len(waits)} ingest batches, "
        f"slowest {max(waits):.3f} s"
    )
    with psycopg.connect(database) as conn:
        stale = conn.execute(
            sql.SQL("SELECT count(*) FROM purger.{} WHERE rule_version < 2").format(
                sql.Identifier(parent_table("cookie_stats"))
            )
        ).fetchone()
        wrong = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM purger.{} p JOIN purger.{} k USING (record_id) "
                "WHERE k.expires_at <> p.expires_at"
            ).format(
                sql.Identifier(parent_table("cookie_stats")),
                sql.Identifier(keys_table("cookie_stats")),
            )
        ).fetchone()
    assert stale == (0,)
    assert wrong == (0,)
    registry_counts_match(database, "cookie_stats")
