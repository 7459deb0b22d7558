"""Decode and route: a polled batch becomes records by category and dead letters.

Decoding is pure: an error it raises for a message is reproducible on that
message alone, so whatever the error, the message is the poison (``decode_failed``
for one the contract did not foresee), never the batch.

A poison message whose expiry can still be computed and is already past is
counted as expired on arrival, never dead-lettered: its retention is over, and a
dead letter would keep its payload (identifiers included) for days more. The
expiry comes from a lenient parse that reads only ``occurred_at`` (with the
contract's strict timestamp parser) and ``tenant``; whatever else is wrong with
the message does not matter. When either is missing, broken or ambiguous
(a duplicated key), the message is dead-lettered as before.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kafka import TopicPartition

from consumers.deadletter import DeadLetter, letter_for
from purger.errors import InvalidMessage
from purger.policy import Category
from purger.records import (
    REASON_DECODE_FAILED,
    REASON_INVALID_TIMESTAMP,
    Envelope,
    decode,
    parse_timestamp,
)

log = logging.getLogger("purger.consumer")

Polled = dict[TopicPartition, list[Any]]
# (topic, partition, offset) of a message.
Coordinates = tuple[str, int, int]
# The value of a key a JSON object repeats, in the lenient parse.
_AMBIGUOUS = object()


@dataclass(frozen=True, slots=True)
class Decoded:
    """A polled batch after decoding: records by category, letters, last offsets."""

    records: dict[str, list[Envelope]]
    letters: list[DeadLetter]
    last: dict[TopicPartition, int]
    # The message of each record, for the dead letter of a record the database refuses.
    messages: dict[Coordinates, Any]
    # Poison messages already past their expiry, by category: counted, not dead-lettered.
    expired: dict[str, int]


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
        expired: dict[str, int] = defaultdict(int)
        for tp, batch in polled.items():
            category = self.by_topic[tp.topic]
            for msg in batch:
                last[tp] = max(last.get(tp, -1), msg.offset)
                try:
                    envelope = self.envelope(category, msg, now)
                except InvalidMessage as exc:
                    if _expired_poison(category, msg, exc.reason, now):
                        expired[category.name] += 1
                        continue
                    letters.append(letter_for(category, msg, exc.reason, exc.detail))
                    continue
                records[category.name].append(envelope)
                messages[(msg.topic, msg.partition, msg.offset)] = msg
        return Decoded(dict(records), letters, last, messages, dict(expired))

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


def _expired_poison(category: Category, msg: Any, reason: str, now: datetime) -> bool:
    """True when the poison ``msg`` is past its expiry (logged by coordinates, never data)."""
    expires_at = lenient_expiry(category, msg.value)
    if expires_at is None or expires_at > now:
        return False
    log.info(
        "poison message already expired: counted as expired on arrival, not dead-lettered",
        extra={
            "category": category.name,
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "reason": reason,
        },
    )
    return True


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        # A repeated key has no one value: the expiry it would give is not known.
        obj[key] = _AMBIGUOUS if key in obj else value
    return obj


def lenient_expiry(category: Category, value: bytes | None) -> datetime | None:
    """``occurred_at + retention`` of a message that may break the contract elsewhere.

    None unless the value is a JSON object with a valid RFC 3339 ``occurred_at``
    and a non-empty string ``tenant``, each given once.
    """
    if value is None:
        return None
    text = value.decode("utf-8", errors="replace")
    try:
        data = json.loads(text, object_pairs_hook=_pairs)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    tenant = data.get("tenant")
    if not isinstance(tenant, str) or not tenant.strip() or "\ufffd" in tenant:
        # A tenant with bytes that are not UTF-8 might be one with a longer override.
        return None
    try:
        occurred_at = parse_timestamp(data.get("occurred_at"))
        return category.expires_at(tenant, occurred_at)
    except (InvalidMessage, OverflowError, ValueError):
        return None
