"""A batch that needs a new partition is not blocked behind a long reader of the parent."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import psycopg

from purger.partitions import partition_name, range_containing
from purger.policy import RetentionPolicy
from purger.storage import Storage
from tests.integration.holds_support import relation_exists
from tests.integration.purge_support import envelope


def test_a_batch_needing_a_new_partition_does_not_wait_for_a_long_reader(
    database: str, policy: RetentionPolicy
) -> None:
    far = datetime.now(UTC) + timedelta(days=400)
    name = partition_name("cdr", range_containing(far, timedelta(days=1))[0])
    assert not relation_exists(database, name)
    with psycopg.connect(database) as reader, Storage(database, policy) as storage:
        # A report reading the whole category, in a transaction that stays open.
        reader.execute("SELECT count(*) FROM purger.records_cdr").fetchone()
        storage.conn.execute("SET lock_timeout = '3s'")
        storage.conn.commit()
        started = time.monotonic()
        result = storage.store_batch("cdr", [envelope(far)])
        elapsed = time.monotonic() - started
        assert result.inserted == 1
        assert relation_exists(database, name)
        # The reader is still in its transaction: nothing waited for it to end.
        assert reader.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        reader.rollback()
    assert elapsed < 3, elapsed


def test_a_new_partition_gets_every_index_and_constraint_of_the_parent(
    database: str, policy: RetentionPolicy
) -> None:
    far = datetime.now(UTC) + timedelta(days=401)
    with Storage(database, policy) as storage:
        storage.store_batch("cdr", [envelope(far)])
        name = partition_name("cdr", range_containing(far, timedelta(days=1))[0])
        indexes = storage.conn.execute(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
            "WHERE c.relname = %s",
            (name,),
        ).fetchone()
        parent_indexes = storage.conn.execute(
            "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
            "JOIN pg_index i ON i.indrelid = c.oid WHERE c.relname = 'records_cdr'"
        ).fetchone()
        owner = storage.conn.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = %s", (name,)
        ).fetchone()
    assert indexes == parent_indexes
    assert owner == ("purger_runtime",)
