"""The consumer loop: poll, decode, validate, store in one transaction, then commit.

Offsets move only after the database commit (and after every dead letter of the
batch is acknowledged), and only forward. A database outage is retried with
backoff and no commit; a dead-letter outage stops the worker rather than skip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.base import MemberState
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from consumers.deadletter import DeadLetter, DeadLetterWriter
from consumers.kafka_config import consumer_options, producer_options
from purger.errors import DatabaseUnavailable, InvalidMessage, StorageError
from purger.metrics import Metrics
from purger.policy import Category, RetentionPolicy
from purger.records import (
    REASON_EXPIRED_ON_ARRIVAL,
    REASON_INVALID_TIMESTAMP,
    REASON_STORAGE_REJECTED,
    decode,
)
from purger.settings import Settings
from purger.storage import BatchResult, Envelope, Storage

log = logging.getLogger("purger.consumer")


class Stopping(Exception):
    """The stop flag was set while the worker waited."""


@dataclass
class CategoryCounts:
    """What became of one category's messages."""

    stored: int = 0
    duplicates: int = 0
    expired_on_arrival: int = 0
    # Arrived expired but covered by a legal hold: stored in held storage.
    held: int = 0
    dead_lettered: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, other: CategoryCounts) -> None:
        """Add ``other`` into this."""
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.expired_on_arrival += other.expired_on_arrival
        self.held += other.held
        for reason, n in other.dead_lettered.items():
            self.dead_lettered[reason] += n

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "stored": self.stored,
            "duplicates": self.duplicates,
            "expired_on_arrival": self.expired_on_arrival,
            "held": self.held,
            "dead_lettered": sum(self.dead_lettered.values()),
            "dead_lettered_by_reason": dict(sorted(self.dead_lettered.items())),
        }


@dataclass
class IngestSummary:
    """Per-category counts of one worker (or of several, added up)."""

    categories: dict[str, CategoryCounts] = field(default_factory=dict)
    messages: int = 0
    assigned_partitions: int = 0

    def counts(self, category: str) -> CategoryCounts:
        """The counts of ``category``, created on first use."""
        return self.categories.setdefault(category, CategoryCounts())

    def add(self, other: IngestSummary) -> None:
        """Add ``other`` into this."""
        self.messages += other.messages
        self.assigned_partitions = max(self.assigned_partitions, other.assigned_partitions)
        for name, counts in other.categories.items():
            self.counts(name).add(counts)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "messages": self.messages,
            "categories": {n: c.as_dict() for n, c in sorted(self.categories.items())},
        }


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: ConsumerWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Called inside poll(), so every batch handed out has been processed:
        # commit what the database holds, forget the rest.
        self.worker.commit_pending(only=set(revoked))
        self.worker.forget(set(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = set(assigned)
        self.worker.ever_assigned |= assigned
        log.info("partitions assigned", extra={"count": len(assigned)})


class ConsumerWorker:
    """One member of the consumer group."""

    def __init__(
        self,
        settings: Settings,
        policy: RetentionPolicy,
        metrics: Metrics,
        stop: threading.Event,
        *,
        until_idle: bool = False,
        worker_id: int = 0,
        on_batch: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.metrics = metrics
        self.stop = stop
        self.until_idle = until_idle
        self.worker_id = worker_id
        self.on_batch = on_batch
        self.by_topic: dict[str, Category] = policy.by_topic()
        self.summary = IngestSummary()
        self.ever_assigned: set[TopicPartition] = set()
        self._pending: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._consumer: KafkaConsumer | None = None
        self._last_lag = 0.0
        self.last_progress = time.monotonic()

    # -- lifecycle --------------------------------------------------------------
    def run(self) -> IngestSummary:
        """Consume until the stop flag is set (or, with until_idle, until caught up)."""
        with ExitStack() as stack:
            storage = stack.enter_context(
                Storage(
                    self.settings.conninfo(),
                    self.policy,
                    self.settings.granularity,
                    role=f"consumer-{self.worker_id}",
                )
            )
            producer = KafkaProducer(**producer_options(self.settings))
            stack.callback(producer.close, timeout=10)
            consumer = KafkaConsumer(**consumer_options(self.settings))
            self._consumer = consumer
            # Closing commits nothing by itself (auto-commit is off, and kafka-python
            # does not call on_partitions_revoked on close): commit first.
            stack.callback(consumer.close, autocommit=False)
            stack.callback(self.commit_pending)
            consumer.subscribe(topics=sorted(self.by_topic), listener=_Rebalance(self))
            dlq = DeadLetterWriter(producer)
            idle_polls = 0
            while not self.stop.is_set():
                self.last_progress = time.monotonic()
                polled = consumer.poll(
                    timeout_ms=self.settings.poll_timeout_ms,
                    max_records=self.settings.batch_max_records,
                )
                self._refresh_lag()
                if polled:
                    idle_polls = 0
                    try:
                        self.process(polled, storage, dlq)
                    except Stopping:
                        break
                    if self.on_batch is not None:
                        self.on_batch()
                elif self.until_idle:
                    idle_polls += 1
                    if self._caught_up(idle_polls):
                        break
            self.summary.assigned_partitions = len(self.ever_assigned)
        return self.summary

    # -- one batch ---------------------------------------------------------------
    def process(
        self,
        polled: dict[TopicPartition, list[Any]],
        storage: Storage,
        dlq: DeadLetterWriter,
    ) -> None:
        """Handle one polled batch; offsets are committed only after it is durable."""
        started = time.perf_counter()
        now = datetime.now(UTC)
        batch: dict[str, list[Envelope]] = defaultdict(list)
        letters: list[DeadLetter] = []
        last: dict[TopicPartition, int] = {}
        for tp, messages in polled.items():
            category = self.by_topic[tp.topic]
            for msg in messages:
                self.summary.messages += 1
                last[tp] = max(last.get(tp, -1), msg.offset)
                try:
                    record = decode(
                        msg.value,
                        now=now,
                        future_tolerance=self.settings.future_tolerance_delta,
                        default_country_code=self.settings.default_country_code,
                    )
                    try:
                        expires_at = category.expires_at(record.tenant, record.occurred_at)
                    except (OverflowError, ValueError):
                        raise InvalidMessage(
                            REASON_INVALID_TIMESTAMP, "occurred_at + retention is out of range"
                        ) from None
                except InvalidMessage as exc:
                    letters.append(self._letter(category, msg, exc.reason, exc.detail))
                    continue
                batch[category.name].append(
                    Envelope(record, expires_at, msg.topic, msg.partition, msg.offset)
                )
        # Dead letters first: the offset never moves past a message that is neither
        # stored nor acknowledged by the dead-letter topic.
        dlq.write(letters)
        results, rejected = self._store(storage, batch)
        if rejected:
            dlq.write(rejected)
            letters.extend(rejected)
        for tp, offset in last.items():
            self._pending[tp] = max(self._pending.get(tp, -1), offset + 1)
        self.commit_pending()
        self._count(results, letters)
        self.metrics.ingest_batch_duration.observe(time.perf_counter() - started)

    def _store(
        self, storage: Storage, batch: dict[str, list[Envelope]]
    ) -> tuple[dict[str, BatchResult], list[DeadLetter]]:
        try:
            return self._retrying(lambda: storage.store(batch)), []
        except StorageError:
            log.exception("batch refused by the database; storing its records one by one")
        # A record the database refuses (not an outage) must not stall the
        # partition: find it, dead-letter it, store the rest.
        results: dict[str, BatchResult] = {}
        rejected: list[DeadLetter] = []
        for name, items in batch.items():
            total = BatchResult(0, 0, 0)
            for item in items:
                try:
                    one = self._retrying(partial(storage.store_batch, name, [item]))
                except StorageError:
                    rejected.append(
                        DeadLetter(
                            dlq_topic=self.policy.category(name).dead_letter_topic,
                            category=name,
                            source_topic=item.topic or "",
                            source_partition=item.partition or 0,
                            source_offset=item.offset or 0,
                            reason=REASON_STORAGE_REJECTED,
                            detail="the database refused the record",
                            key=None,
                            value=None,
                        )
                    )
                    continue
                total = BatchResult(
                    total.inserted + one.inserted,
                    total.duplicates + one.duplicates,
                    total.expired_on_arrival + one.expired_on_arrival,
                    total.held + one.held,
                )
            results[name] = total
        return results, rejected

    def _retrying(self, action: Callable[[], Any]) -> Any:
        delay = 0.2
        while True:
            try:
                return action()
            except DatabaseUnavailable:
                self.metrics.database_retries.inc()
                log.warning(
                    "database unavailable; retrying without committing offsets",
                    extra={"seconds": round(delay, 2), "worker": self.worker_id},
                )
                if self.stop.wait(delay):
                    raise Stopping from None
                delay = min(delay * 2, self.settings.db_retry_max_backoff_seconds)

    def _letter(self, category: Category, msg: Any, reason: str, detail: str) -> DeadLetter:
        log.warning(
            "message dead-lettered: %s",
            detail,
            extra={
                "category": category.name,
                "topic": msg.topic,
                "partition": msg.partition,
                "offset": msg.offset,
                "reason": reason,
            },
        )
        return DeadLetter(
            dlq_topic=category.dead_letter_topic,
            category=category.name,
            source_topic=msg.topic,
            source_partition=msg.partition,
            source_offset=msg.offset,
            reason=reason,
            detail=detail,
            key=msg.key,
            value=msg.value,
        )

    def _count(self, results: dict[str, BatchResult], letters: list[DeadLetter]) -> None:
        m = self.metrics
        for name, result in results.items():
            counts = self.summary.counts(name)
            counts.stored += result.inserted
            counts.duplicates += result.duplicates
            counts.expired_on_arrival += result.expired_on_arrival
            counts.held += result.held
            # Held records are stored too (in held storage): they count as ingested.
            m.records_ingested.labels(name).inc(result.inserted + result.held)
            m.records_duplicate.labels(name).inc(result.duplicates)
            m.records_rejected.labels(name, REASON_EXPIRED_ON_ARRIVAL).inc(
                result.expired_on_arrival
            )
        for letter in letters:
            self.summary.counts(letter.category).dead_lettered[letter.reason] += 1
            m.records_rejected.labels(letter.category, letter.reason).inc()
            m.records_dead_lettered.labels(letter.category, letter.reason).inc()

    # -- offsets -----------------------------------------------------------------
    def commit_pending(self, only: set[TopicPartition] | None = None) -> None:
        """Commit the durable offsets not yet committed (forward only)."""
        consumer = self._consumer
        if consumer is None:
            return
        offsets = {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self._pending.items()
            if (only is None or tp in only) and offset > self._committed.get(tp, -1)
        }
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except CommitFailedError:
            # The group rebalanced under us; the records are in the database, so
            # the new owner's redelivery changes nothing (writes are idempotent).
            log.warning("offset commit refused after a rebalance; redelivery is idempotent")
            return
        for tp, meta in offsets.items():
            self._committed[tp] = meta.offset
            if self._pending.get(tp) == meta.offset:
                del self._pending[tp]

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop the in-memory state of partitions this worker no longer owns."""
        for tp in partitions:
            self._pending.pop(tp, None)
            self._committed.pop(tp, None)

    # -- idleness and lag ----------------------------------------------------------
    def _caught_up(self, idle_polls: int) -> bool:
        consumer = self._consumer
        assert consumer is not None
        assignment = consumer.assignment()
        if not assignment:
            # Idle only once the group is stable and gave this member nothing (more
            # workers than partitions); before the first join, nothing is assigned yet.
            stable = consumer.group_metadata().state is MemberState.STABLE
            return stable and idle_polls >= 3
        try:
            ends = consumer.end_offsets(list(assignment))
            return all(consumer.position(tp) >= ends[tp] for tp in assignment) and not any(
                self._pending.get(tp, -1) > self._committed.get(tp, -1) for tp in assignment
            )
        except KafkaError:
            return False

    def _refresh_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < self.settings.lag_refresh_seconds:
            return
        self._last_lag = now
        consumer = self._consumer
        if consumer is None:
            return
        assignment = list(consumer.assignment())
        if not assignment:
            return
        try:
            ends = consumer.end_offsets(assignment)
            lag: dict[str, int] = defaultdict(int)
            for tp in assignment:
                lag[tp.topic] += max(0, ends[tp] - consumer.position(tp))
        except KafkaError:
            return
        for topic, value in lag.items():
            self.metrics.consumer_lag.labels(topic).set(value)
