"""The message contract: decoding a Kafka message value into a validated record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from purger.errors import InvalidMessage
from purger.identifiers import IdentifierError, normalise, subject_key, valid_type

# Every reason code a message can be rejected for: bounded, used as metric labels.
REASON_NOT_UTF8 = "not_utf8"
REASON_INVALID_JSON = "invalid_json"
REASON_NOT_OBJECT = "not_an_object"
REASON_MISSING_FIELD = "missing_field"
REASON_INVALID_FIELD = "invalid_field"
REASON_INVALID_TIMESTAMP = "invalid_timestamp"
REASON_NAIVE_TIMESTAMP = "naive_timestamp"
REASON_INVALID_IDENTIFIER = "invalid_identifier"
REASON_FUTURE_TIMESTAMP = "future_timestamp"
REASON_NUL_CHARACTER = "nul_character"
REASON_UNKNOWN_TOPIC = "unknown_topic"
REASON_STORAGE_REJECTED = "storage_rejected"
REASON_EXPIRED_ON_ARRIVAL = "expired_on_arrival"

DEAD_LETTER_REASONS = (
    REASON_NOT_UTF8,
    REASON_INVALID_JSON,
    REASON_NOT_OBJECT,
    REASON_MISSING_FIELD,
    REASON_INVALID_FIELD,
    REASON_INVALID_TIMESTAMP,
    REASON_NAIVE_TIMESTAMP,
    REASON_INVALID_IDENTIFIER,
    REASON_FUTURE_TIMESTAMP,
    REASON_NUL_CHARACTER,
    REASON_UNKNOWN_TOPIC,
    REASON_STORAGE_REJECTED,
)
REJECT_REASONS = (*DEAD_LETTER_REASONS, REASON_EXPIRED_ON_ARRIVAL)

_CONTRACT_FIELDS = ("record_id", "occurred_at", "tenant", "subjects")
MAX_RECORD_ID = 256


@dataclass(frozen=True, slots=True)
class Record:
    """A decoded, normalised record; ``expires_at`` is added by the policy."""

    record_id: str
    occurred_at: datetime
    tenant: str
    subjects: dict[str, list[str]]
    payload: dict[str, Any]

    @property
    def subject_keys(self) -> list[str]:
        """Look-up keys of all identifiers, e.g. ``["msisdn:+31612345678"]``."""
        return [subject_key(k, v) for k, values in self.subjects.items() for v in values]


def parse_timestamp(value: Any, field: str = "occurred_at") -> datetime:
    """An RFC 3339 timestamp with an offset, as an aware UTC datetime."""
    if not isinstance(value, str) or not value:
        raise InvalidMessage(REASON_INVALID_TIMESTAMP, f"{field} must be an RFC 3339 string")
    text = value.strip()
    if "T" not in text.upper() or len(text) < 19:
        raise InvalidMessage(REASON_INVALID_TIMESTAMP, f"{field} is not an RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise InvalidMessage(
            REASON_INVALID_TIMESTAMP, f"{field} is not an RFC 3339 timestamp"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidMessage(REASON_NAIVE_TIMESTAMP, f"{field} has no UTC offset")
    return parsed.astimezone(UTC)


def decode(
    value: bytes | None,
    *,
    now: datetime,
    future_tolerance: timedelta,
    default_country_code: int = 31,
) -> Record:
    """Decode and validate one message value; InvalidMessage names the reason, never data."""
    if value is None:
        raise InvalidMessage(REASON_INVALID_JSON, "message has no value (tombstone)")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMessage(REASON_NOT_UTF8, "message value is not UTF-8") from None
    if "\x00" in text:
        raise InvalidMessage(REASON_NUL_CHARACTER, "message contains a NUL character")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = getattr(exc, "msg", "too deeply nested")
        raise InvalidMessage(REASON_INVALID_JSON, f"message is not JSON ({detail})") from None
    if "\\u" in text:
        try:
            # A lone surrogate escape decodes to text that UTF-8 cannot encode.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidMessage(REASON_INVALID_JSON, "message has an invalid \\u escape") from None
    if not isinstance(data, dict):
        raise InvalidMessage(REASON_NOT_OBJECT, f"message is a JSON {type(data).__name__}")
    for field in _CONTRACT_FIELDS:
        if field not in data:
            raise InvalidMessage(REASON_MISSING_FIELD, f"field {field!r} is missing")
    if "\\u0000" in text:
        # json.loads turns the escape into a NUL, which PostgreSQL text and jsonb cannot hold.
        raise InvalidMessage(REASON_NUL_CHARACTER, "message contains an escaped NUL character")
    record_id = data["record_id"]
    if not isinstance(record_id, str) or not record_id.strip():
        raise InvalidMessage(REASON_INVALID_FIELD, "record_id must be a non-empty string")
    if len(record_id) > MAX_RECORD_ID:
        raise InvalidMessage(REASON_INVALID_FIELD, f"record_id longer than {MAX_RECORD_ID}")
    tenant = data["tenant"]
    if not isinstance(tenant, str) or not tenant.strip():
        raise InvalidMessage(REASON_INVALID_FIELD, "tenant must be a non-empty string")
    occurred_at = parse_timestamp(data["occurred_at"])
    if occurred_at > now + future_tolerance:
        raise InvalidMessage(
            REASON_FUTURE_TIMESTAMP, "occurred_at lies further in the future than the tolerance"
        )
    subjects = _subjects(data["subjects"], default_country_code)
    payload = {k: v for k, v in data.items() if k not in _CONTRACT_FIELDS}
    return Record(
        record_id=record_id,
        occurred_at=occurred_at,
        tenant=tenant,
        subjects=subjects,
        payload=payload,
    )


def _subjects(raw: Any, default_country_code: int) -> dict[str, list[str]]:
    if not isinstance(raw, dict):
        raise InvalidMessage(REASON_INVALID_FIELD, "subjects must be an object")
    out: dict[str, list[str]] = {}
    for kind, values in raw.items():
        if not valid_type(kind):
            raise InvalidMessage(REASON_INVALID_FIELD, "subjects has an invalid identifier type")
        items = [values] if isinstance(values, str) else values
        if not isinstance(items, list):
            raise InvalidMessage(
                REASON_INVALID_FIELD, f"subjects.{kind} must be a string or a list of strings"
            )
        normalised: list[str] = []
        for index, item in enumerate(items):
            try:
                value = normalise(kind, item, default_country_code)
            except IdentifierError as exc:
                raise InvalidMessage(
                    REASON_INVALID_IDENTIFIER, f"subjects.{kind}[{index}]: {exc}"
                ) from None
            if value not in normalised:
                normalised.append(value)
        if normalised:
            out[kind] = normalised
    return out
