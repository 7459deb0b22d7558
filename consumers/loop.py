"""The consumer loop: poll, decode, store in one transaction, dead-letter, then commit.

Offsets move only after the database commit and after every dead letter of the
batch is acknowledged, and only forward. Failures follow the one policy of
``consumers.failures``: a poison record is dead-lettered (or, already past its
expiry, counted as expired on arrival) and the partition moves on; a systemic
fault or an outage is retried here, through one ``Retrier``, with nothing
committed meanwhile. With ``write_behind`` (the default) a batch is stored on a
writer thread while the next one is polled and decoded (``consumers.write_behind``);
its offsets still move only once it is durable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.coordinator.base import MemberState
from kafka.errors import KafkaError

from consumers.checkpoint import Checkpoint
from consumers.deadletter import DeadLetter, DeadLetterWriter
from consumers.decoding import BatchDecoder, Decoded, Polled
from consumers.failures import Retrier, Stopping
from consumers.io_thread import wait_until
from consumers.kafka_config import consumer_options, producer_options
from consumers.sink import DatabaseSink
from consumers.summary import IngestSummary
from consumers.write_behind import WriteBehind
from purger.metrics import Metrics
from purger.policy import Category, RetentionPolicy
from purger.records import (
    REASON_EXPIRED_ON_ARRIVAL,
)
from purger.settings import Settings
from purger.staging_rows import EncodedRows, encode_rows
from purger.storage import BatchResult, Storage

log = logging.getLogger("purger.consumer")

# How long one wait for the subscribed topics' metadata may last: the stop flag is
# seen between waits, so this bounds how long a SIGTERM at start-up can go unseen.
METADATA_WAIT_MS = 5_000


def read_subscribed_metadata(consumer: KafkaConsumer, timeout_ms: int = METADATA_WAIT_MS) -> None:
    """Refresh the metadata of the subscribed topics only, waiting at most ``timeout_ms``.

    Raises kafka-python's ``KafkaTimeoutError`` (an outage to the retrier) when no
    answer came in time. kafka-python 3.0 (pinned) has no public call for this:
    ``topics()`` asks for every topic of the cluster and waits with no deadline, so
    a broker lost at that moment held the worker, SIGTERM unseen, until it returned.
    These are the internals its ``topics()`` uses, minus the all-topics flag.
    """
    update = consumer._cluster.request_update()
    consumer._net.run(consumer._manager.wait_for, update, timeout_ms)


# How long a revocation waits for the batch in flight: several times a batch's store
# (under a second), and far below the rebalance timeout (max.poll.interval.ms, 300 s)
# for which the other members wait for this one. A store retrying an outage is not
# waited out: its records are read again by the next owner, deduplicated.
REVOKE_WAIT_SECONDS = 10.0

# What a batch's store gives: results by category, dead letters of refused records.
Written = tuple[dict[str, BatchResult], list[DeadLetter]]


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded batch on its way to the database, its partitions' epochs stamped."""

    decoded: Decoded
    started: datetime
    epochs: dict[TopicPartition, int]
    # Its rows in COPY format, encoded here: a writer thread then only sends them.
    encoded: dict[str, EncodedRows]


class _Rebalance(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    # kafka-python 3 calls the listener on its I/O thread, where a blocking commit
    # is refused ("Cannot block on net.run() from the IO thread"): the methods are
    # coroutines it awaits, and the revocation's commit is awaited, not blocked on.
    def __init__(self, worker: ConsumerWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # During the worker's poll(): every batch handed out is durable, or in flight
        # on the writer thread, or never stored. The one in flight is waited for (a
        # while); then what the database holds is committed and the rest forgotten.
        await self.worker.await_in_flight()
        await self.worker.checkpoint.commit_revoked(set(revoked))

    async def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        # Evicted: another member may own them already; committing would be refused.
        self.worker.checkpoint.forget(set(lost))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = set(assigned)
        self.worker.ever_assigned |= assigned
        # A batch in flight at the revocation is not advanced: read its records again.
        sought = self.worker.checkpoint.rewind_assigned(assigned)
        log.info("partitions assigned", extra={"count": len(assigned), "sought": len(sought)})


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
        beat: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.metrics = metrics
        self.stop = stop
        self.until_idle = until_idle
        self.worker_id = worker_id
        self.beat = beat
        self.by_topic: dict[str, Category] = policy.by_topic()
        self.summary = IngestSummary()
        self.ever_assigned: set[TopicPartition] = set()
        self.checkpoint = Checkpoint()
        self.decoder = BatchDecoder(
            self.by_topic,
            future_tolerance=settings.future_tolerance_delta,
            default_country_code=settings.default_country_code,
        )
        # The writer thread's own stop flag: set with the worker's, and on the way out.
        self.halt = threading.Event()
        self.writer_retrier = Retrier(
            metrics,
            self.halt,
            longest=settings.db_retry_max_backoff_seconds,
            beat=beat,
            worker=worker_id,
        )
        self.retrier = Retrier(
            metrics,
            stop,
            longest=settings.db_retry_max_backoff_seconds,
            beat=beat,
            worker=worker_id,
        )
        self._consumer: KafkaConsumer | None = None
        self._lag_at = 0.0
        # The writer thread's batch, for the rebalance listener (set while running).
        self.behind: WriteBehind[Batch, Written] | None = None

    # -- lifecycle --------------------------------------------------------------
    def run(self) -> IngestSummary:
        """Consume until the stop flag is set (or, with until_idle, until caught up)."""
        try:
            with ExitStack() as stack:
                self._run(stack)
        except Stopping:
            pass
        self.summary.assigned_partitions = len(self.ever_assigned)
        return self.summary

    def _run(self, stack: ExitStack) -> None:
        storage = stack.enter_context(
            Storage(
                self.settings.conninfo(),
                self.policy,
                self.settings.granularity,
                application=f"consumer-{self.worker_id}",
            )
        )
        producer = self._client(KafkaProducer, producer_options(self.settings))
        stack.callback(producer.close, timeout=10)
        consumer = self._client(KafkaConsumer, consumer_options(self.settings))
        self._consumer = consumer
        self.checkpoint.consumer = consumer
        # Closing commits nothing by itself (auto-commit is off, and kafka-python
        # does not call on_partitions_revoked on close): commit first.
        stack.callback(consumer.close, autocommit=False)
        stack.callback(self.commit_pending)
        consumer.subscribe(topics=sorted(self.by_topic), listener=_Rebalance(self))
        # Metadata read now, before the first poll joins the group: the first assignment
        # is made from it, and kafka-python rejoins once its metadata of the subscribed
        # topics changes after an assignment. Without this, a worker started just after
        # its topics were created got an empty first assignment and rejoined (under CPU
        # load that rejoin was seen to stall for a minute); one whose metadata came just
        # after its join had its partitions revoked again at once.
        self.retrier.run(partial(read_subscribed_metadata, consumer), "read topic metadata")
        dlq = DeadLetterWriter(producer, self.metrics)
        behind: WriteBehind[Batch, Written] = WriteBehind(
            lambda batch: self.write(batch, storage, dlq, self.writer_retrier),
            self.finish,
            stop=self.stop,
            halt=self.halt,
            name=f"purger-writer-{self.worker_id}",
            waited=lambda seconds: self.summary.clock("wait", seconds),
        )
        self.behind = behind
        # Runs before the commit above: what the writer stored is committed too.
        stack.callback(behind.drain)
        idle_polls = 0
        while not self.stop.is_set():
            self.beat()
            polling = time.perf_counter()
            # With a batch in flight, only what is already fetched: when nothing is, the
            # batch is settled and its offsets committed now, not a poll timeout later.
            timeout = 0 if behind.busy else self.settings.poll_timeout_ms
            poll = partial(
                consumer.poll, timeout_ms=timeout, max_records=self.settings.batch_max_records
            )
            polled = self.retrier.run(poll, "poll")
            self._refresh_lag()
            if polled:
                self.summary.clock("poll", time.perf_counter() - polling)
                idle_polls = 0
                batch = self.prepare(polled)
                if self.settings.write_behind:
                    behind.submit(batch)
                else:
                    self.finish(batch, self.write(batch, storage, dlq, self.retrier))
            elif behind.busy:
                behind.settle()
                continue
            else:
                # Offsets left pending by a commit during an outage go out when idle too.
                self.commit_pending()
                if self.until_idle:
                    idle_polls += 1
                    if self._caught_up(idle_polls):
                        break

    def _client(self, factory: Callable[..., Any], options: dict[str, Any]) -> Any:
        if self.until_idle:
            # A one-off run reports an absent broker at once (KafkaUnavailable).
            return factory(**options)
        # A service waits for the broker: a pod started during a broker outage lives.
        return self.retrier.run(lambda: factory(**options), "connect to Kafka")

    # -- one batch ---------------------------------------------------------------
    def process(self, polled: Polled, storage: Storage, dlq: DeadLetterWriter) -> None:
        """One polled batch, on this thread; offsets are committed only after it is durable."""
        batch = self.prepare(polled)
        self.finish(batch, self.write(batch, storage, dlq, self.retrier))

    def prepare(self, polled: Polled) -> Batch:
        """Decode a polled batch (pure) and stamp its partitions' epochs."""
        clocked = time.perf_counter()
        started = datetime.now(UTC)
        self.summary.messages += sum(len(batch) for batch in polled.values())
        decoded = self.decoder.decode(polled, started)
        encoded = {c: e for c, items in decoded.records.items() if (e := encode_rows(items))}
        self.checkpoint.hand_out(
            {tp: (batch[0].offset, batch[-1].offset) for tp, batch in polled.items() if batch}
        )
        batch = Batch(decoded, started, self.checkpoint.stamp(polled), encoded)
        self.summary.clock("decode", time.perf_counter() - clocked)
        return batch

    def write(
        self, batch: Batch, storage: Storage, dlq: DeadLetterWriter, retrier: Retrier
    ) -> Written:
        """Make a batch durable: its dead letters acknowledged, its records stored."""
        clocked = time.perf_counter()
        decoded = batch.decoded
        sink = DatabaseSink(storage, self.policy)
        # Dead letters first: the offset never moves past a message that is neither
        # stored nor acknowledged by the dead-letter topic.
        pending = list(decoded.letters)
        retrier.run(lambda: dlq.write(pending), "dead-letter write")
        results, refused = retrier.run(
            lambda: sink.store(decoded.records, decoded.messages, batch.encoded), "store batch"
        )
        pending = list(refused)
        retrier.run(lambda: dlq.write(pending), "dead-letter write")
        self.summary.clock("store", time.perf_counter() - clocked)
        return results, refused

    def finish(self, batch: Batch, written: Written) -> None:
        """After the batch is durable: advance and commit its offsets, count it."""
        results, refused = written
        decoded = batch.decoded
        clocked = time.perf_counter()
        self.checkpoint.advance(decoded.last, batch.epochs)
        self.commit_pending()
        self.summary.clock("commit", time.perf_counter() - clocked)
        self._count(results, [*decoded.letters, *refused], decoded.expired)
        self.metrics.ingest_batch_duration.observe(
            (datetime.now(UTC) - batch.started).total_seconds()
        )
        self.beat()

    def _count(
        self,
        results: dict[str, BatchResult],
        letters: list[DeadLetter],
        expired_poison: dict[str, int],
    ) -> None:
        m = self.metrics
        for name, count in expired_poison.items():
            # Poison messages already past their expiry: counted, never dead-lettered.
            self.summary.counts(name).expired_on_arrival += count
            m.records_rejected.labels(name, REASON_EXPIRED_ON_ARRIVAL).inc(count)
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
    async def await_in_flight(self) -> None:
        """On kafka-python's I/O thread, at a revocation: advance the batch in flight once stored.

        Waits at most ``REVOKE_WAIT_SECONDS`` for the writer, pausing, never blocking,
        the I/O thread. The worker's thread is in poll() then,
        so nothing else touches the checkpoint; settle finishes the batch later as ever.
        """
        behind = self.behind
        if behind is None or not behind.busy:
            return
        if not await wait_until(lambda: not behind.storing, REVOKE_WAIT_SECONDS, self.stop):
            log.warning(
                "partitions revoked before the batch in flight was stored; "
                "its records are read again by their next owner"
            )
            return
        batch = behind.stored()
        if batch is not None:
            self.checkpoint.advance(batch.decoded.last, batch.epochs)

    def commit_pending(self, only: set[TopicPartition] | None = None) -> None:
        """Commit the durable offsets not yet committed (forward only, never a crash)."""
        self.checkpoint.commit(only)

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
            ends = consumer.end_offsets(list(assignment), timeout_ms=10_000)
            return all(
                consumer.position(tp, timeout_ms=10_000) >= ends[tp] for tp in assignment
            ) and not self.checkpoint.outstanding(assignment)
        except KafkaError:
            return False

    def _refresh_lag(self) -> None:
        now = datetime.now(UTC).timestamp()
        if now - self._lag_at < self.settings.lag_refresh_seconds:
            return
        self._lag_at = now
        consumer = self._consumer
        if consumer is None:
            return
        assignment = list(consumer.assignment())
        if not assignment:
            return
        try:
            ends = consumer.end_offsets(assignment, timeout_ms=5_000)
            lag: dict[str, int] = defaultdict(int)
            for tp in assignment:
                lag[tp.topic] += max(0, ends[tp] - consumer.position(tp, timeout_ms=5_000))
        except KafkaError:
            return
        for topic, value in lag.items():
            self.metrics.consumer_lag.labels(topic).set(value)


__all__ = ["ConsumerWorker", "IngestSummary", "Stopping"]
