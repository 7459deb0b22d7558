"""The dead-letter topic: bad messages go there, with headers saying where from and why.

A dead letter is always writable. It keeps the original key and value when the
broker takes them; when it does not (size), the value is cut to fit and the
headers say so (``purger.truncated``, ``purger.original.size``); a message with
neither key nor value (a tombstone) is written with an empty value. Failures to
write are raised as an outage (``KafkaOutage``: retried by the caller) or a fault
(``KafkaFault``), never as a reason to skip a message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from consumers.failures import KafkaFault, KafkaOutage, Kind, classify
from purger.metrics import Metrics
from purger.policy import Category

log = logging.getLogger("purger.consumer")

ACK_TIMEOUT_SECONDS = 30
# What the producer may send in one request (its max_request_size, set to this in
# consumers.kafka_config) and a broker's default max.message.bytes, less room for
# the record batch framing.
MAX_LETTER_BYTES = 1024 * 1024 - 16 * 1024
_FRAMING_BYTES = 512
_MIN_LETTER_BYTES = 4096


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message to dead-letter; ``detail`` names fields, never values."""

    dlq_topic: str
    category: str
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    detail: str
    key: bytes | None
    value: bytes | None
    truncated_from: int | None = None


def headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead letter."""
    out = [
        ("purger.source.topic", letter.source_topic.encode()),
        ("purger.source.partition", str(letter.source_partition).encode()),
        ("purger.source.offset", str(letter.source_offset).encode()),
        ("purger.reason", letter.reason.encode()),
        ("purger.category", letter.category.encode()),
        ("purger.detail", letter.detail.encode()),
    ]
    if letter.truncated_from is not None:
        out.append(("purger.truncated", b"true"))
        out.append(("purger.original.size", str(letter.truncated_from).encode()))
    return out


def letter_size(letter: DeadLetter) -> int:
    """Bytes the letter takes in a request, framing included (an upper estimate)."""
    head = sum(len(k) + len(v) + 8 for k, v in headers(letter))
    return len(letter.key or b"") + len(letter.value or b"") + head + _FRAMING_BYTES


def fit(letter: DeadLetter, limit: int = MAX_LETTER_BYTES) -> DeadLetter:
    """The letter cut down to ``limit`` bytes: value first, then key, flagged in headers."""
    if letter.key is None and letter.value is None:
        # The producer refuses a message with neither; the reason header says what it was.
        letter = replace(letter, value=b"")
    if letter_size(letter) <= limit:
        return letter
    value = letter.value or b""
    key = letter.key
    original = len(value)
    cut = replace(letter, value=b"", truncated_from=original)
    room = limit - letter_size(cut)
    if room < 0 and key is not None:
        key = key[: max(0, len(key) + room)]
        cut = replace(cut, key=key)
        room = limit - letter_size(cut)
    return replace(cut, value=value[: max(0, room)])


def letter_for(category: Category, msg: Any, reason: str, detail: str) -> DeadLetter:
    """The dead letter of a consumed message (logged by its coordinates, never its data)."""
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


class DeadLetterWriter:
    """Writes dead letters and waits until every one is acknowledged."""

    def __init__(
        self, producer: KafkaProducer, metrics: Metrics | None = None, limit: int = MAX_LETTER_BYTES
    ) -> None:
        self.producer = producer
        self.metrics = metrics
        self.limit = limit

    def write(self, letters: list[DeadLetter]) -> None:
        """Send ``letters`` until all are acknowledged; KafkaOutage/KafkaFault if not.

        Letters acknowledged before a failure are removed from ``letters``, so that
        a retry with the same list resends only the rest.
        """
        limit = self.limit
        while letters:
            fitted = [fit(letter, limit) for letter in letters]
            failures = self._send(letters, fitted)
            if not failures:
                break
            others = [exc for exc in failures if not _too_large(exc)]
            if not others and limit > _MIN_LETTER_BYTES:
                # The topic takes less than the producer's limit (its own
                # max.message.bytes): halve until it fits; the headers stay whole.
                limit //= 2
                continue
            first = others[0] if others else failures[0]
            where = f"{letters[0].dlq_topic} ({len(letters)} letters pending)"
            if classify(first) is Kind.OUTAGE:
                raise KafkaOutage(f"dead-letter write to {where}: {first.__class__.__name__}")
            raise KafkaFault(f"dead-letter write to {where}: {first.__class__.__name__}")

    def _send(self, letters: list[DeadLetter], fitted: list[DeadLetter]) -> list[KafkaError]:
        futures: list[tuple[DeadLetter, DeadLetter, Any]] = []
        failures: list[KafkaError] = []
        for original, letter in zip(letters, fitted, strict=True):
            try:
                future = self.producer.send(
                    letter.dlq_topic, value=letter.value, key=letter.key, headers=headers(letter)
                )
            except KafkaError as exc:
                # send() blocks up to max_block_ms when the broker is away: one such
                # wait is enough to know, the rest of the letters wait for the retry.
                failures.append(exc)
                break
            futures.append((original, letter, future))
        try:
            self.producer.flush(timeout=ACK_TIMEOUT_SECONDS)
        except KafkaError as exc:
            failures.append(exc)
        acked: set[int] = set()
        for original, letter, future in futures:
            try:
                future.get(timeout=ACK_TIMEOUT_SECONDS)
            except KafkaError as exc:
                failures.append(exc)
                continue
            acked.add(id(original))
            if letter.truncated_from is not None and self.metrics is not None:
                self.metrics.dead_letters_truncated.labels(letter.category).inc()
        letters[:] = [letter for letter in letters if id(letter) not in acked]
        return failures


def _too_large(exc: BaseException) -> bool:
    return isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError)
