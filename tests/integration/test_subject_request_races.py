"""Erasure racing ingestion of the same subject and a purge pass, in both orders.

Each order is forced with real lock waits, never with sleeps: a test session
holds a lock one side needs, the other side is started and seen waiting for a
lock in ``pg_stat_activity``, then the test lets go. Whatever the order, once
the erasure and the next pass are done no record of the subject is left.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from purger.partitions import partition_name
from purger.policy import RetentionPolicy
from purger.records import Record
from purger.storage import Envelope, Storage
from tests.integration.holds_support import Row, audit_kinds, make_purger, seed, where_stored
from tests.integration.purge_support import blocking_session, midnight
from tests.integration.requests_support import (
    AUDIT_LOCK,
    AUDIT_UNLOCK,
    SUBJECT,
    Side,
    await_lock_wait,
    erase,
    future,
    holds_ingest_lock_and_waits,
    now,
    open_request,
)
from tests.integration.support import wait_until

pytestmark = pytest.mark.integration

INGEST_APP = "race-ingest"


def _arrival(policy: RetentionPolicy, record_id: str) -> Envelope:
    """A record of the subject dated (occurred) before the erasure, as the consumers store it."""
    occurred = now() - timedelta(days=1)
    record = Record(record_id, occurred, "t1", {"msisdn": SUBJECT["msisdn"]}, {"n": 1})
    return Envelope(record, policy.category("cdr").expires_at("t1", occurred), "test", 0, 1)


def _store(url: str, policy: RetentionPolicy, item: Envelope) -> int:
    with Storage(url, policy, application=INGEST_APP) as storage:
        return storage.store_batch("cdr", [item]).inserted


def _ingest_app() -> str:
    return f"purger:{INGEST_APP}"


def test_ingestion_first_the_erasure_waits_for_the_batch_and_erases_it(
    database: str, policy: RetentionPolicy
) -> None:
    item = _arrival(policy, "arriving")
    # An hour earlier, but never the day before: both records in one partition.
    earlier = max(item.expires_at - timedelta(hours=1), midnight(item.expires_at))
    seed(database, "cdr", [Row("stored", earlier, subjects=SUBJECT)])
    request = open_request(database, "erasure")
    pname = partition_name("cdr", midnight(item.expires_at))
    assert pname == partition_name("cdr", midnight(earlier))

    with blocking_session(database) as blocker:
        # The batch takes its ingest lock, then waits to write into the partition.
        blocker.execute(sql.SQL("LOCK TABLE purger.{} IN SHARE MODE").format(sql.Identifier(pname)))
        ingest = Side(lambda: _store(database, policy, item))
        ingest.start()
        wait_until(
            lambda: holds_ingest_lock_and_waits(database, _ingest_app()),
            what="the batch to hold its ingest lock and wait for the partition",
        )
        eraser = Side(lambda: erase(database, policy, request.id))
        eraser.start()
        await_lock_wait(database, "erasure-test", "the erasure to wait for the ingest lock")
    # The blocker rolled back: the batch commits, then the erasure runs.
    assert ingest.result() == 1
    report = eraser.result()

    assert report.categories["cdr"].erased == 2
    assert where_stored(database, "cdr") == {}


def test_erasure_first_the_batch_waits_and_the_next_pass_erases_the_late_record(
    database: str, policy: RetentionPolicy
) -> None:
    item = _arrival(policy, "late")
    seed(database, "cdr", [Row("stored", future(30), subjects=SUBJECT)])
    request = open_request(database, "erasure")

    with blocking_session(database) as blocker:
        # The erasure takes every ingest lock, then waits for the legal-hold lock.
        blocker.execute("LOCK TABLE purger.legal_holds IN ROW EXCLUSIVE MODE")
        eraser = Side(lambda: erase(database, policy, request.id))
        eraser.start()
        await_lock_wait(database, "erasure-test", "the erasure to wait for the hold lock")
        ingest = Side(lambda: _store(database, policy, item))
        ingest.start()
        await_lock_wait(database, _ingest_app(), "the batch to wait for the ingest lock")
    report = eraser.result()
    assert ingest.result() == 1

    assert report.categories["cdr"].erased == 1
    # Arrived after the erasure, dated before it: still the request's, until it is closed.
    assert where_stored(database, "cdr") == {"late": "live"}
    assert report.erased_at is not None and item.record.occurred_at <= report.erased_at
    purge = make_purger(database, policy).run_pass(categories=["cdr"])
    assert where_stored(database, "cdr") == {}
    (deferred,) = [e for e in audit_kinds(database, "subject_erased") if e["deferred"]]
    assert deferred["pass_id"] == purge.pass_id and deferred["categories"]["cdr"]["erased"] == 1


def _seed_for_a_pass(url: str) -> tuple[str, int]:
    """An expired partition with the subject's and others' records, and live ones of both."""
    day = midnight(now() - timedelta(days=10))
    seed(
        url,
        "cdr",
        [
            Row("old-subject-1", day + timedelta(hours=1), subjects=SUBJECT),
            Row("old-subject-2", day + timedelta(hours=2), subjects=SUBJECT),
            *(
                Row(
                    f"old-other-{i}", day + timedelta(hours=3 + i), subjects={"imsi": [f"20416{i}"]}
                )
                for i in range(3)
            ),
            Row("live-subject", future(30), subjects=SUBJECT),
            Row("live-other", future(30), subjects={"imsi": ["204169999"]}),
        ],
    )
    return partition_name("cdr", day), 5


def test_a_pass_first_drops_the_partition_and_the_erasure_retries_around_it(
    database: str, policy: RetentionPolicy
) -> None:
    pname, in_partition = _seed_for_a_pass(database)
    request = open_request(database, "erasure")
    purger = make_purger(database, policy, lock_timeout_ms=120_000)

    with psycopg.connect(database, autocommit=True) as holder:
        # The pass drops the partition and then waits to append its audit entry.
        holder.execute(AUDIT_LOCK)
        passing = Side(lambda: purger.run_pass(categories=["cdr"]))
        passing.start()
        await_lock_wait(database, "purger:purge", "the pass to wait for the audit lock")
        # The erasure lists the partition and waits for the pass's drop to commit.
        eraser = Side(lambda: erase(database, policy, request.id))
        eraser.start()
        await_lock_wait(database, "erasure-test", "the erasure to wait for the partition")
        holder.execute(AUDIT_UNLOCK)
        report = passing.result()
        erased = eraser.result()

    assert report.outcome == "success", report.error
    (dropped,) = audit_kinds(database, "partition_dropped")
    assert (dropped["partition"], dropped["rows"]) == (pname, in_partition)
    assert erased.categories["cdr"].erased == 1, "only the live record was left to erase"
    assert where_stored(database, "cdr") == {"live-other": "live"}


def test_an_erasure_first_leaves_the_pass_exact_counts_to_drop(
    database: str, policy: RetentionPolicy
) -> None:
    pname, in_partition = _seed_for_a_pass(database)
    request = open_request(database, "erasure")
    purger = make_purger(database, policy, lock_timeout_ms=120_000)

    with psycopg.connect(database, autocommit=True) as holder:
        # The erasure deletes and then waits to append its audit entry, holding the
        # ingest locks the pass needs to fix its instant.
        holder.execute(AUDIT_LOCK)
        eraser = Side(lambda: erase(database, policy, request.id))
        eraser.start()
        await_lock_wait(database, "erasure-test", "the erasure to wait for the audit lock")
        passing = Side(lambda: purger.run_pass(categories=["cdr"]))
        passing.start()
        await_lock_wait(database, "purger:purge", "the pass to wait for the ingest locks")
        holder.execute(AUDIT_UNLOCK)
        erased = eraser.result()
        report = passing.result()

    assert erased.categories["cdr"].erased == 3
    assert report.outcome == "success", report.error
    (dropped,) = audit_kinds(database, "partition_dropped")
    assert (dropped["partition"], dropped["rows"]) == (pname, in_partition - 2)
    assert where_stored(database, "cdr") == {"live-other": "live"}
