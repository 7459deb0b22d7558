"""Offsets: what the database holds, committed to Kafka forward only.

``advance`` is called only after a batch is durable (stored or dead-lettered and
acknowledged); ``commit`` sends what was advanced and not yet committed. A commit
that fails because the broker or the coordinator is away keeps the offsets
pending for the next commit; one refused after a rebalance is dropped, since the
new owner's redelivery is idempotent. Neither is ever a crash, and no offset
moves backwards.

A batch stored behind the worker's back (``consumers.write_behind``) may finish
after its partition was revoked, and even after it came back: an offset advanced
then could lie behind what another member committed meanwhile. Each partition's
epoch counts how often it was forgotten; a batch stamped before is not advanced.

Its records are then read again: kafka-python 3 keeps the position of a partition
that a rebalance revokes and assigns back to the same member, so a partition
revoked with a batch in flight is sought back, when it comes back, to where what
the database holds ends (``rewind``). Otherwise that batch's offsets were never
committed when it held the partition's last records, and a run ``--until-idle``
ended with them uncommitted. A partition with nothing in flight keeps its
position, and the records already fetched for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from consumers.failures import REBALANCED, Kind, classify

log = logging.getLogger("purger.consumer")

COMMIT_TIMEOUT_MS = 10_000


class Checkpoint:
    """The offsets of one consumer: durable (pending) and committed."""

    def __init__(self) -> None:
        self.consumer: KafkaConsumer | None = None
        self.pending: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.epochs: dict[TopicPartition, int] = {}
        # The first offset handed out of each partition since it was assigned, the
        # offset after the last one handed out (the consumer's position), and where
        # each partition revoked by the last rebalance is to be read from again.
        self.handed: dict[TopicPartition, int] = {}
        self.reached: dict[TopicPartition, int] = {}
        self.rewind: dict[TopicPartition, int] = {}

    def hand_out(self, spans: Mapping[TopicPartition, tuple[int, int]]) -> None:
        """Note the first and last offset of each partition in a batch handed out for storing."""
        for tp, (first, last) in spans.items():
            self.handed.setdefault(tp, first)
            self.reached[tp] = max(self.reached.get(tp, -1), last + 1)

    def stamp(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """The current epoch of each of ``partitions``, for ``advance(..., stamped=)``."""
        return {tp: self.epochs.get(tp, 0) for tp in partitions}

    def advance(
        self,
        last: Mapping[TopicPartition, int],
        stamped: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        """Mark everything up to each partition's ``last`` offset as durable.

        With ``stamped``, a partition forgotten since it was stamped is skipped.
        """
        for tp, offset in last.items():
            if stamped is not None and stamped.get(tp) != self.epochs.get(tp, 0):
                continue
            self.pending[tp] = max(self.pending.get(tp, -1), offset + 1)

    def outstanding(self, partitions: Iterable[TopicPartition]) -> bool:
        """True when a durable offset of ``partitions`` is not committed yet."""
        return any(self.pending.get(tp, -1) > self.committed.get(tp, -1) for tp in partitions)

    def commit(self, only: set[TopicPartition] | None = None) -> bool:
        """Commit the durable offsets not yet committed; False if they stay pending."""
        consumer = self.consumer
        offsets = self._due(only)
        if consumer is None or not offsets:
            return True
        try:
            consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as exc:
            self._failed(offsets, exc)
            return False
        self._done(offsets)
        return True

    async def commit_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what the database holds of ``revoked``, then forget them.

        Awaited by the rebalance listener on kafka-python's I/O thread, where a
        blocking ``commit`` is refused; the worker's thread is inside ``poll`` then,
        so every batch it was handed is durable or never stored.
        """
        consumer = self.consumer
        for tp in revoked:
            # Where what the database holds ends (committed or not), else where the
            # first batch handed out began. When that is where the consumer stands,
            # nothing was in flight: its position (and its prefetched records) stay.
            durable = max(self.pending.get(tp, -1), self.committed.get(tp, -1))
            if tp in self.handed and durable < self.reached[tp]:
                self.rewind[tp] = durable if durable >= 0 else self.handed[tp]
        offsets = self._due(revoked)
        if consumer is not None and offsets:
            try:
                # Settles when the broker answers (fails after request_timeout_ms). With
                # the coordinator unknown it settles once it is found, the commit still
                # under way: a commit lost then only makes the new owner redeliver.
                await consumer.commit_async(offsets)
            except KafkaError as exc:
                self._failed(offsets, exc)
            else:
                self._done(offsets)
        self.forget(revoked)

    def _due(self, only: set[TopicPartition] | None) -> dict[TopicPartition, OffsetAndMetadata]:
        return {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self.pending.items()
            if (only is None or tp in only) and offset > self.committed.get(tp, -1)
        }

    def _failed(self, offsets: Mapping[TopicPartition, OffsetAndMetadata], exc: KafkaError) -> None:
        if isinstance(exc, REBALANCED):
            log.warning("offset commit refused after a rebalance; redelivery is idempotent")
            for tp in offsets:
                self.pending.pop(tp, None)
            return
        kind = classify(exc)
        log.log(
            logging.WARNING if kind is Kind.OUTAGE else logging.ERROR,
            "offset commit failed (%s: %s); the offsets stay pending",
            kind.value,
            exc.__class__.__name__,
        )

    def _done(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        for tp, meta in offsets.items():
            self.committed[tp] = max(self.committed.get(tp, -1), meta.offset)
            if self.pending.get(tp) == meta.offset:
                del self.pending[tp]

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop the state of partitions this worker no longer owns."""
        for tp in partitions:
            self.pending.pop(tp, None)
            self.committed.pop(tp, None)
            self.handed.pop(tp, None)
            self.reached.pop(tp, None)
            self.epochs[tp] = self.epochs.get(tp, 0) + 1

    def rewind_assigned(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """Seek partitions assigned back after their revocation to where the database ends.

        Only just after the rebalance that revoked them: a partition that went to
        another member meanwhile has a fresh position, from the committed offsets.
        That relies on the eager assignors (kafka-python's default; ``consumer_options``
        sets none), which revoke every partition and call the assignment listener after
        each rebalance, with no other member reading in between. Returns what was
        sought. Local to the consumer: safe on kafka-python's I/O thread.
        """
        rewind, self.rewind = self.rewind, {}
        sought = {tp: offset for tp, offset in rewind.items() if tp in assigned}
        if self.consumer is not None:
            for tp, offset in sought.items():
                self.consumer.seek(tp, offset)
        return sought
