"""The dead-letter topic: bad messages go there, with headers saying where from and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from purger.errors import DeadLetterError

ACK_TIMEOUT_SECONDS = 30


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


def headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead letter."""
    return [
        ("purger.source.topic", letter.source_topic.encode()),
        ("purger.source.partition", str(letter.source_partition).encode()),
        ("purger.source.offset", str(letter.source_offset).encode()),
        ("purger.reason", letter.reason.encode()),
        ("purger.category", letter.category.encode()),
        ("purger.detail", letter.detail.encode()),
    ]


class DeadLetterWriter:
    """Writes dead letters and waits until every one is acknowledged."""

    def __init__(self, producer: KafkaProducer) -> None:
        self.producer = producer

    def write(self, letters: list[DeadLetter]) -> None:
        """Send ``letters``; DeadLetterError unless all are acknowledged."""
        if not letters:
            return
        futures: list[tuple[DeadLetter, Any]] = []
        try:
            for letter in letters:
                futures.append(
                    (
                        letter,
                        self.producer.send(
                            letter.dlq_topic,
                            value=letter.value,
                            key=letter.key,
                            headers=headers(letter),
                        ),
                    )
                )
            self.producer.flush(timeout=ACK_TIMEOUT_SECONDS)
            for _letter, future in futures:
                future.get(timeout=ACK_TIMEOUT_SECONDS)
        except KafkaError as exc:
            first = futures[0][0] if futures else letters[0]
            raise DeadLetterError(
                f"dead-letter write to {first.dlq_topic} was not acknowledged "
                f"({exc.__class__.__name__}); stopping rather than skipping "
                f"{first.source_topic}/{first.source_partition}@{first.source_offset}"
            ) from exc
