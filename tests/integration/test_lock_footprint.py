"""An ingest transaction locks only the partitions it touches, however many there are.

Found by `make soak` with hourly partitions: the check of a held, expired-on-arrival
record against the live table locked every partition of the category and its
indexes until the transaction ended, and a catch-up batch overflowed PostgreSQL's
lock table ('out of shared memory', SQLSTATE 53200), a systemic fault for good.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from purger.hold_registry import place
from purger.hold_scope import build_scope
from purger.policy import RetentionPolicy
from purger.records import Record
from purger.storage import Envelope, Storage

pytestmark = pytest.mark.integration

PARTITIONS = 400


def _relation_locks(conn: psycopg.Connection[object]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_held_record_expired_on_arrival_locks_few_partitions(
    database: str, policy: RetentionPolicy
) -> None:
    now = datetime.now(UTC)
    with Storage(database, policy, timedelta(hours=1)) as storage:
        storage.partitions.ensure(
            storage.conn, "cdr", [now + timedelta(hours=h) for h in range(PARTITIONS)]
        )
        storage.conn.commit()
        with psycopg.connect(database, autocommit=True) as admin:
            scope = build_scope(policy, subjects={"msisdn": ["+31612345678"]})
            place(admin, policy, scope, case_ref="CASE-1", reason="test", placed_by="test")
        occurred = now - timedelta(days=400)
        record = Record("old-held", occurred, "t1", {"msisdn": ["+31612345678"]}, {})
        envelope = Envelope(record, policy.category("cdr").expires_at("t1", occurred))
        conn = storage.conn
        # Inside an outer transaction the batch's own becomes a savepoint, so its locks
        # are still held when counted.
        with conn.transaction(force_rollback=True):
            result = storage.store({"cdr": [envelope]})["cdr"]
            locks = _relation_locks(conn)
    assert result.held == 1
    assert locks < 40, f"{locks} relation locks for one record: partitions are not pruned"
