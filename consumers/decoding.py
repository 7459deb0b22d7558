"""Decode and route: a polled batch becomes records by category and dead letters.

Decoding is pure: an error it raises for a message is reproducible on that
message alone, so whatever the error, the message is the poison (``decode_failed``
for one the contract did not foresee), never the batch.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kafka import TopicPartition

from consumers.deadletter import DeadLetter, letter_for
from purger.errors import InvalidMessage
from purger.policy import Category
from purger.records import REASON_DECODE_FAILED, REASON_INVALID_TIMESTAMP, decode
from purger.storage import Envelope

log = logging.getLogger("purger.consumer")

Polled = dict[TopicPartition, list[Any]]
# (topic, partition, offset) of a message.
Coordinates = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class Decoded:
    """A polled batch after decoding: records by category, letters, last offsets."""

    records: dict[str, list[Envelope]]
    letters: list[DeadLetter]
    last: dict[TopicPartition, int]
    # The message of each record, for the dead letter of a record the database refuses.
    messages: dict[Coordinates, Any]


class BatchDecoder:
    """Routes each message by its topic to its category and decodes it there."""

    def __init__(
        self,
        by_topic: dict[str, Category],
        *,
        future_tolerance: timedelta,
        default_country_code: int,
    ) -> None:
        self.by_topic = by_topic
        self.future_tolerance = future_tolerance
        self.default_country_code = default_country_code

    def decode(self, polled: Polled, now: datetime) -> Decoded:
        """Decode every message: records by category, dead letters for the rest."""
        records: dict[str, list[Envelope]] = defaultdict(list)
        letters: list[DeadLetter] = []
        last: dict[TopicPartition, int] = {}
        messages: dict[Coordinates, Any] = {}
        for tp, batch in polled.items():
            category = self.by_topic[tp.topic]
            for msg in batch:
                last[tp] = max(last.get(tp, -1), msg.offset)
                try:
                    envelope = self.envelope(category, msg, now)
                except InvalidMessage as exc:
                    letters.append(letter_for(category, msg, exc.reason, exc.detail))
                    continue
                records[category.name].append(envelope)
                messages[(msg.topic, msg.partition, msg.offset)] = msg
        return Decoded(dict(records), letters, last, messages)

    def envelope(self, category: Category, msg: Any, now: datetime) -> Envelope:
        """One message as a record with its expiry; InvalidMessage if it is poison."""
        try:
            record = decode(
                msg.value,
                now=now,
                future_tolerance=self.future_tolerance,
                default_country_code=self.default_country_code,
            )
            expires_at = category.expires_at(record.tenant, record.occurred_at)
        except InvalidMessage:
            raise
        except (OverflowError, ValueError):
            raise InvalidMessage(
                REASON_INVALID_TIMESTAMP, "occurred_at + retention is out of range"
            ) from None
        except Exception as exc:
            log.error(
                "unexpected error decoding a message (%s)",
                exc.__class__.__name__,
                extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
            )
            raise InvalidMessage(
                REASON_DECODE_FAILED, f"decoding raised {exc.__class__.__name__}"
            ) from None
        return Envelope(record, expires_at, msg.topic, msg.partition, msg.offset)
