"""Write-behind on the real Kafka and PostgreSQL: a batch stored on the writer thread.

The rebalance listener waits a bounded time for a batch in flight (pausing
kafka-python's I/O thread, never blocking it), and commits it when it is stored in
time. One that is not may finish after its partitions moved to another member, which
may have read and committed past it meanwhile. Its offsets must then not be
committed: that would move the group's offset backwards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from psycopg import sql

from consumers import loop
from consumers.deadletter import DeadLetterWriter
from consumers.kafka_config import consumer_options, producer_options
from consumers.loop import Batch, ConsumerWorker, Written, _Rebalance
from consumers.service import consume
from consumers.summary import STAGES
from consumers.write_behind import WriteBehind
from purger.partitions import parent_table
from purger.policy import RetentionPolicy
from purger.queries import query
from purger.settings import Settings
from purger.storage import Storage
from tests.integration.conftest import SettingsFactory
from tests.integration.support import (
    committed_offsets,
    count_rows,
    ingest_metrics,
    second_member,
    wait_until,
)
from tests.integration.test_ingest import message

pytestmark = pytest.mark.integration

RECENT = datetime.now(UTC) - timedelta(hours=1)
PER_PARTITION = 10


@contextmanager
def _running(worker: ConsumerWorker) -> Iterator[None]:
    """``worker`` on a thread of its own; stopped, and found stopped, after."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        worker.stop.set()
        thread.join(60)
    assert not thread.is_alive()


def _send(producer: KafkaProducer, topic: str, prefix: str) -> None:
    for p in range(4):
        for i in range(PER_PARTITION):
            producer.send(topic, message(f"{prefix}-{p}-{i}", RECENT), partition=p)
    producer.flush()


def _first_member_read_all(
    settings: Settings, policy: RetentionPolicy, topic: str, members: list[KafkaConsumer]
) -> tuple[ConsumerWorker, KafkaConsumer, Batch]:
    """A worker's group member that has read the whole topic, and that read as a batch."""
    worker = ConsumerWorker(settings, policy, ingest_metrics(policy), threading.Event())
    first = KafkaConsumer(**consumer_options(settings))
    members.append(first)
    worker.checkpoint.consumer = first
    first.subscribe(topics=[topic], listener=_Rebalance(worker))
    polled: dict[TopicPartition, list[Any]] = {}

    def read_all() -> bool:
        for tp, batch in first.poll(timeout_ms=200).items():
            polled.setdefault(tp, []).extend(batch)
        return sum(len(b) for b in polled.values()) == 4 * PER_PARTITION

    wait_until(read_all, what="the first member reading every message")
    return worker, first, worker.prepare(polled)


@contextmanager
def _writer_side(
    settings: Settings, policy: RetentionPolicy, worker: ConsumerWorker
) -> Iterator[tuple[Storage, DeadLetterWriter]]:
    """The storage and dead-letter writer a worker's writer thread stores with."""
    dlq_producer = KafkaProducer(**producer_options(settings))
    try:
        with Storage(settings.conninfo(), policy, settings.granularity) as storage:
            yield storage, DeadLetterWriter(dlq_producer, worker.metrics)
    finally:
        dlq_producer.close()


def test_a_batch_finished_after_its_partitions_moved_never_moves_their_offsets_back(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    members: list[KafkaConsumer],
) -> None:
    topic = topics["cdr"]
    _send(producer, topic, "first")
    worker, first, batch = _first_member_read_all(settings, policy, topic, members)
    with _writer_side(settings, policy, worker) as (storage, dlq):
        # What the writer thread does; the worker's thread has not settled it yet.
        written = worker.write(batch, storage, dlq, worker.retrier)
    assert count_rows(settings.conninfo(), "cdr") == 4 * PER_PARTITION

    second = second_member(settings, topic, first, members)
    moved = set(second.assignment())
    assert moved and moved.isdisjoint(first.assignment())

    # The new owner reads its partitions (nothing of them was committed: from the
    # start), more arrives, it reads that too and commits past the old batch.
    _send(producer, topic, "second")
    ends = {tp: 2 * PER_PARTITION for tp in moved}

    def second_caught_up() -> bool:
        second.poll(timeout_ms=200)
        return all(second.position(tp) >= ends[tp] for tp in moved)

    wait_until(second_caught_up, what="the second member reading its partitions")
    second.commit()
    before = committed_offsets(settings.kafka_bootstrap_servers, settings.kafka_group_id, topic)
    for tp in moved:
        assert before[tp.partition] == 2 * PER_PARTITION

    # The old batch settles now, on the first member's thread.
    worker.finish(batch, written)

    after = committed_offsets(settings.kafka_bootstrap_servers, settings.kafka_group_id, topic)
    for tp in moved:
        assert after[tp.partition] == 2 * PER_PARTITION, (tp, after)
        assert tp not in worker.checkpoint.pending
    # Every record of the old batch is stored: what it did not commit is redelivered.
    assert worker.summary.counts("cdr").stored == 4 * PER_PARTITION


def test_a_partition_assigned_back_with_its_batch_in_flight_is_read_again_and_committed(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    members: list[KafkaConsumer],
) -> None:
    # kafka-python 3 keeps the position of a partition a rebalance revokes and assigns
    # back to the same member. The batch in flight then is not advanced (epochs), so
    # unless the partition is read again its offsets were never committed when that
    # batch held its last records: `purger consume --until-idle --workers 2` ended
    # with offsets uncommitted in 6 of 10 runs of the benchmark's backlog.
    topic = topics["cdr"]
    _send(producer, topic, "first")
    worker, first, batch = _first_member_read_all(settings, policy, topic, members)
    with _writer_side(settings, policy, worker) as (storage, dlq):
        # What the writer thread does; the worker's thread settles it after the
        # rebalance below.
        written = worker.write(batch, storage, dlq, worker.retrier)

        second = KafkaConsumer(**consumer_options(settings))
        members.append(second)
        second.subscribe(topics=[topic])
        again: dict[TopicPartition, list[Any]] = {}

        def shared() -> bool:
            # What the first member polls is kept: the worker would store it.
            for tp, records in first.poll(timeout_ms=100).items():
                again.setdefault(tp, []).extend(records)
            second.poll(timeout_ms=100)
            return bool(first.assignment()) and bool(second.assignment())

        wait_until(shared, what="the partitions shared by both members")
        kept = set(first.assignment())
        worker.finish(batch, written)
        assert not kept & set(worker.checkpoint.pending), "the old batch was advanced"

        def read_again() -> bool:
            for tp, records in first.poll(timeout_ms=100).items():
                again.setdefault(tp, []).extend(records)
            return all(len(again.get(tp, [])) == PER_PARTITION for tp in kept)

        wait_until(read_again, what="the kept partitions read again")
        worker.process(again, storage, dlq)

    committed = committed_offsets(settings.kafka_bootstrap_servers, settings.kafka_group_id, topic)
    for tp in kept:
        assert committed.get(tp.partition) == PER_PARTITION, (tp, committed)
    # Read again, stored once: the second reading is all duplicates.
    assert count_rows(settings.conninfo(), "cdr") == 4 * PER_PARTITION
    assert worker.summary.counts("cdr").duplicates == len(kept) * PER_PARTITION


def _stored_ends(url: str) -> dict[int, int]:
    """For each source partition, one past the highest offset stored."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT source_partition, max(source_offset) + 1 FROM {} GROUP BY 1").format(
                sql.Identifier("purger", parent_table("cdr"))
            )
        ).fetchall()
    return {int(p): int(end) for p, end in rows}


def _waiting_for_ingest_lock(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
        ).fetchone()
    return row is not None and row[0] > 0


@pytest.mark.parametrize("write_behind", [True, False])
def test_a_stopped_worker_commits_the_batch_its_writer_stored(
    write_behind: bool,
    make_settings: SettingsFactory,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
) -> None:
    # The stop comes while a batch is being stored, every time: the ingest lock a purge
    # takes exclusively holds the first store until the stop is requested. Without
    # write-behind, the same loop stores on the worker's thread.
    settings = make_settings(batch_max_records=7, write_behind=write_behind)
    url = settings.conninfo()
    topic = topics["cdr"]
    _send(producer, topic, "stop")
    worker = ConsumerWorker(settings, policy, ingest_metrics(policy), threading.Event())
    with psycopg.connect(url) as blocker:
        blocker.execute(query("ingest_lock_exclusive"), {"category": "cdr"})
        with _running(worker):
            wait_until(lambda: _waiting_for_ingest_lock(url), what="a batch waits for the lock")
            worker.stop.set()
            blocker.commit()
    stored = count_rows(url, "cdr")
    if write_behind:
        # Every record was produced before the worker started, and a poll takes at most
        # 7 of a partition's 10: while the first batch waits for the lock, the worker
        # normally polls and decodes a second one, submits it once the first settles, and
        # then sees the stop, so drain must wait for that batch and commit it. Under CPU
        # load its poll (timeout 0 with a batch in flight) may come back empty instead:
        # it then settles the held batch and stops with none in flight (about 1 run in
        # 14 with two CPU hogs beside it). Either way what is stored is committed.
        assert 7 <= stored <= 2 * 7
    else:
        assert stored == 7
    committed = committed_offsets(settings.kafka_bootstrap_servers, settings.kafka_group_id, topic)
    assert {p: o for p, o in committed.items() if o > 0} == _stored_ends(url)
    assert sum(committed.values()) == stored
    assert worker.summary.counts("cdr").stored == stored


@pytest.mark.parametrize(("write_behind", "workers"), [(True, 1), (False, 1), (True, 2)])
def test_the_summary_says_where_the_time_went(
    write_behind: bool,
    workers: int,
    make_settings: SettingsFactory,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
) -> None:
    settings = make_settings(batch_max_records=5, write_behind=write_behind)
    _send(producer, topics["cdr"], "clock")
    summary = consume(
        settings,
        policy,
        ingest_metrics(policy),
        threading.Event(),
        until_idle=True,
        workers=workers,
    )
    assert summary["errors"] == []
    assert summary["categories"]["cdr"]["stored"] == 4 * PER_PARTITION
    seconds = summary["seconds"]
    assert set(seconds) == set(STAGES)
    for stage in ("poll", "decode", "store", "commit"):
        assert seconds[stage] > 0, (stage, seconds)
    # Only a worker with a writer thread waits for it.
    assert (seconds["wait"] > 0) is write_behind, seconds


def test_the_last_batch_is_committed_at_once_not_a_poll_timeout_later(
    make_settings: SettingsFactory,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
) -> None:
    # While a batch is in flight the worker only takes what is already fetched; with
    # nothing there it settles the batch and commits, instead of waiting out a poll
    # that would only return when more records arrive (here: never, within the test).
    settings = make_settings(batch_max_records=7, poll_timeout_ms=15_000)
    topic = topics["cdr"]
    _send(producer, topic, "prompt")
    worker = ConsumerWorker(settings, policy, ingest_metrics(policy), threading.Event())
    # On the way out its poll waits out the 15 s before it sees the stop flag.
    with _running(worker):
        wait_until(
            lambda: (
                committed_offsets(settings.kafka_bootstrap_servers, settings.kafka_group_id, topic)
                == {p: PER_PARTITION for p in range(4)}
            ),
            timeout=10,
            what="every offset committed while the worker's poll would still be waiting",
        )
    assert worker.summary.counts("cdr").stored == 4 * PER_PARTITION


class _Watched(WriteBehind[Batch, Written]):
    """A writer whose ``storing`` tells when someone (the rebalance listener) asks it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked = threading.Event()

    @property
    def storing(self) -> bool:
        self.asked.set()
        return super().storing


@contextmanager
def _held_writer(
    settings: Settings, policy: RetentionPolicy, worker: ConsumerWorker, batch: Batch
) -> Iterator[tuple[_Watched, threading.Event]]:
    """``batch`` in flight on a writer thread that stores it only once the event is set."""
    go = threading.Event()
    with _writer_side(settings, policy, worker) as (storage, dlq):

        def write(b: Batch) -> Written:
            go.wait(60)
            return worker.write(b, storage, dlq, worker.writer_retrier)

        behind = _Watched(write, worker.finish, stop=worker.stop, halt=worker.halt, name="writer")
        worker.behind = behind
        behind.submit(batch)
        try:
            yield behind, go
        finally:
            go.set()
            behind.drain()


@pytest.fixture
def read_by_first(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    members: list[KafkaConsumer],
) -> tuple[str, ConsumerWorker, KafkaConsumer, Batch]:
    """The cdr topic, read whole by a worker's first group member as one batch."""
    topic = topics["cdr"]
    _send(producer, topic, "flight")
    return (topic, *_first_member_read_all(settings, policy, topic, members))


def test_a_revocation_waits_for_the_batch_in_flight_and_commits_it(
    settings: Settings,
    policy: RetentionPolicy,
    members: list[KafkaConsumer],
    read_by_first: tuple[str, ConsumerWorker, KafkaConsumer, Batch],
) -> None:
    # The next owner of a revoked partition starts where the group committed: with
    # the batch in flight committed at the revocation, it reads none of it again.
    topic, worker, first, batch = read_by_first
    with _held_writer(settings, policy, worker, batch) as (behind, go):
        # The writer stores only once the listener waits for it, during the rebalance.
        def release() -> None:
            if behind.asked.wait(60):
                go.set()

        releaser = threading.Thread(target=release)
        releaser.start()
        second = second_member(settings, topic, first, members)
        asked = behind.asked.is_set()
        behind.asked.set()  # the releaser's wait ends either way
        releaser.join(60)
        assert asked, "the listener did not wait for the batch in flight"
        assert second.assignment()
        # Committed at the revocation (the second member commits nothing): its
        # partitions' next owner starts after the batch.
        committed = committed_offsets(
            settings.kafka_bootstrap_servers, settings.kafka_group_id, topic
        )
        assert committed == {p: PER_PARTITION for p in range(4)}, committed
        behind.settle()
    assert count_rows(settings.conninfo(), "cdr") == 4 * PER_PARTITION
    counts = worker.summary.counts("cdr")
    assert (counts.stored, counts.duplicates) == (4 * PER_PARTITION, 0)


def test_a_revocation_waits_for_the_batch_in_flight_a_bounded_time(
    settings: Settings,
    policy: RetentionPolicy,
    members: list[KafkaConsumer],
    read_by_first: tuple[str, ConsumerWorker, KafkaConsumer, Batch],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A store that outlasts the wait (a slow database, an outage) does not hold the
    # group: the rebalance goes on without its offsets, and the next owner reads the
    # batch's records again (the database deduplicates them).
    monkeypatch.setattr(loop, "REVOKE_WAIT_SECONDS", 0.5)
    topic, worker, first, batch = read_by_first
    with (
        caplog.at_level(logging.WARNING, logger="purger.consumer"),
        _held_writer(settings, policy, worker, batch) as (behind, go),
    ):
        second = second_member(settings, topic, first, members)
        assert behind.storing, "the batch was stored before the rebalance ended"
        go.set()
        behind.settle()
    assert "revoked before the batch in flight was stored" in caplog.text
    moved = set(second.assignment())
    assert moved
    committed = committed_offsets(settings.kafka_bootstrap_servers, settings.kafka_group_id, topic)
    for tp in moved:
        # Settled after the revocation: not advanced for a partition that moved, whose
        # next owner starts from the beginning.
        assert tp.partition not in committed, committed
    assert count_rows(settings.conninfo(), "cdr") == 4 * PER_PARTITION
