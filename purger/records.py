"""The message contract: decoding a Kafka message value into a validated record.

docs/message-contract.md states the contract; this module is its only implementation.
:func:`decode` either returns a :class:`Record` that PostgreSQL can store (its strings
hold no NUL and no lone surrogate, its JSON has finite numbers, bounded integers and
bounded depth) or raises :class:`InvalidMessage`; no other exception escapes it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from purger.errors import InvalidMessage
from purger.identifiers import (
    IdentifierError,
    IdentifierTooLong,
    normalise,
    subject_key,
    utf8_length,
    valid_type,
)
from purger.timestamps import (
    NaiveTimestamp,
    TimestampError,
    TimestampOutOfRange,
    parse_rfc3339,
)

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
# Decoding raised something other than InvalidMessage: reproducible on the message alone.
REASON_DECODE_FAILED = "decode_failed"
REASON_TOMBSTONE = "tombstone"
REASON_DUPLICATE_KEY = "duplicate_key"
REASON_NON_FINITE_NUMBER = "non_finite_number"
REASON_NUMBER_OUT_OF_RANGE = "number_out_of_range"
REASON_TOO_DEEPLY_NESTED = "too_deeply_nested"
REASON_FIELD_TOO_LONG = "field_too_long"
REASON_TOO_MANY_IDENTIFIERS = "too_many_identifiers"
REASON_TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
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
    REASON_DECODE_FAILED,
    REASON_TOMBSTONE,
    REASON_DUPLICATE_KEY,
    REASON_NON_FINITE_NUMBER,
    REASON_NUMBER_OUT_OF_RANGE,
    REASON_TOO_DEEPLY_NESTED,
    REASON_FIELD_TOO_LONG,
    REASON_TOO_MANY_IDENTIFIERS,
    REASON_TIMESTAMP_OUT_OF_RANGE,
)
REJECT_REASONS = (*DEAD_LETTER_REASONS, REASON_EXPIRED_ON_ARRIVAL)

_CONTRACT_FIELDS = ("record_id", "occurred_at", "tenant", "subjects")
# Bytes, not characters: btree entries (record_id in the primary key, tenant in the
# tenant index) must stay far below PostgreSQL's limit of about 2,700 bytes.
MAX_RECORD_ID_BYTES = 256
MAX_TENANT_BYTES = 256
# Identifiers of one record; each costs a normalisation and a GIN index entry.
MAX_IDENTIFIERS = 1000
# Nesting of the whole message, the top-level object being level 1. Far below the
# recursion limit of the json encoder (psycopg's jsonb dumper) and of the decoder.
MAX_DEPTH = 64
# Digits of an integer: jsonb holds far more, but Python refuses to convert more
# than 4,300 digits to or from text (json.loads, and json.dumps in psycopg).
MAX_INT_DIGITS = 1000

_TIMESTAMP_REASONS: dict[type[TimestampError], str] = {
    TimestampError: REASON_INVALID_TIMESTAMP,
    NaiveTimestamp: REASON_NAIVE_TIMESTAMP,
    TimestampOutOfRange: REASON_TIMESTAMP_OUT_OF_RANGE,
}
_CONTAINERS = frozenset((dict, list))
# A \u0000 escape that is not an escaped backslash followed by "u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded record with its expiry and where it came from."""

    record: Record
    expires_at: datetime
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


def parse_timestamp(value: Any, field: str = "occurred_at") -> datetime:
    """An RFC 3339 date-time with an offset (see purger.timestamps), as an aware UTC datetime."""
    if not isinstance(value, str):
        raise InvalidMessage(REASON_INVALID_TIMESTAMP, f"{field} must be an RFC 3339 string")
    try:
        return parse_rfc3339(value)
    except TimestampError as exc:
        raise InvalidMessage(_TIMESTAMP_REASONS[type(exc)], f"{field} {exc}") from None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Only one of the values would survive: a hold or an export looking for the
        # other would silently miss the record.
        raise InvalidMessage(REASON_DUPLICATE_KEY, "an object has a duplicate key")
    return obj


def _constant(name: str) -> Any:
    raise InvalidMessage(REASON_NON_FINITE_NUMBER, f"message has a non-finite number ({name})")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidMessage(REASON_NUMBER_OUT_OF_RANGE, "a number exceeds the range of a double")
    return value


def _int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS and len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidMessage(
            REASON_NUMBER_OUT_OF_RANGE, f"an integer has more than {MAX_INT_DIGITS} digits"
        )
    return int(text)


# One decoder, built once: json.loads would build a new one per call when given hooks.
_DECODER = json.JSONDecoder(
    object_pairs_hook=_object, parse_constant=_constant, parse_float=_float, parse_int=_int
)


def _check_depth(data: Any) -> None:
    # Level by level, checking the types of a container's children in C (map, isdisjoint):
    # the Python-level work is per nested container, not per scalar.
    level = [data] if type(data) in _CONTAINERS else []
    for _ in range(MAX_DEPTH):
        deeper: list[Any] = []
        for container in level:
            children = container.values() if type(container) is dict else container
            if not _CONTAINERS.isdisjoint(map(type, children)):
                deeper.extend(c for c in children if type(c) in _CONTAINERS)
        if not deeper:
            return
        level = deeper
    raise InvalidMessage(REASON_TOO_DEEPLY_NESTED, f"message nests deeper than {MAX_DEPTH} levels")


# What _canonical returns for a message the strict parser must read.
_SLOW = object()


def _canonical(value: bytes) -> Any:
    """The parsed value when ``value`` is exactly orjson's own rendering of it, else _SLOW.

    Such a value cannot hide what the strict parser refuses: a duplicate key would
    be missing from the rendering, a non-finite number, an integer orjson reads as a
    double (past 64 bits) or any other number it reads differently would render
    otherwise. Producers that write compact JSON (most do) take this path; every
    other message takes the strict parser, which names the reason.
    """
    try:
        data = orjson.loads(value)
        same = orjson.dumps(data) == value
    except (ValueError, TypeError, RecursionError):
        return _SLOW
    return data if same else _SLOW


def _parse_json(text: str, value: bytes) -> Any:
    data = _canonical(value)
    if data is _SLOW:
        data = _parse_strict(text)
    # Depth is at most the number of brackets, counted in C; most messages stop here.
    if text.count("{") + text.count("[") > MAX_DEPTH:
        _check_depth(data)
    if "\\u" not in text:
        return data
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        # PostgreSQL text and jsonb cannot hold a NUL.
        raise InvalidMessage(REASON_NUL_CHARACTER, "message contains an escaped NUL character")
    if _SURROGATE_ESCAPE.search(text):
        try:
            # A lone surrogate escape decodes to text that UTF-8 cannot encode.
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidMessage(
                REASON_INVALID_JSON, "message has a lone surrogate \\u escape"
            ) from None
    return data


def _parse_strict(text: str) -> Any:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidMessage(REASON_INVALID_JSON, f"message is not JSON ({exc.msg})") from None
    except RecursionError:
        raise InvalidMessage(
            REASON_TOO_DEEPLY_NESTED, f"message nests deeper than {MAX_DEPTH} levels"
        ) from None
    except ValueError:
        # Not expected with the hooks above (they refuse what int() and float() would);
        # kept so that no ValueError can ever escape decode.
        raise InvalidMessage(REASON_INVALID_JSON, "message is not JSON") from None


# What orjson would write otherwise than json.dumps (subclasses of str, int, dict and
# list; datetimes; dataclasses) it refuses instead, for jsonb_text to pass on.
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def jsonb_text(value: Any) -> bytes | str:
    """JSON of a record's value for a jsonb column: orjson's, or json.dumps's where they differ.

    json.dumps is what psycopg writes jsonb with by default. PostgreSQL makes the same
    jsonb of both for what decode gives (the same strings, and numbers of the same value
    and scale: tests/unit/test_jsonb_text.py, tests/integration/test_jsonb_storage.py),
    and orjson takes a tenth of the time. json.dumps writes what orjson refuses
    (integers past 64 bits, deep nesting, keys that are not strings) and raises what it
    raised before; it also writes any value with a null in it, since orjson writes NaN
    and infinity as null where json.dumps writes the NaN that PostgreSQL refuses.
    """
    try:
        text = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(value)
    return json.dumps(value) if b"null" in text else text


def _text_field(data: dict[str, Any], field: str, max_bytes: int) -> str:
    value = data[field]
    if not isinstance(value, str) or not value.strip():
        raise InvalidMessage(REASON_INVALID_FIELD, f"{field} must be a non-empty string")
    # A code point takes at most 4 bytes in UTF-8: short text needs no encoding.
    if len(value) > max_bytes // 4 and utf8_length(value) > max_bytes:
        raise InvalidMessage(
            REASON_FIELD_TOO_LONG, f"{field} is longer than {max_bytes} bytes in UTF-8"
        )
    return value


def decode(
    value: bytes | None,
    *,
    now: datetime,
    future_tolerance: timedelta,
    default_country_code: int = 31,
) -> Record:
    """Decode and validate one message value; InvalidMessage names the reason, never data."""
    if value is None:
        raise InvalidMessage(REASON_TOMBSTONE, "message has no value (tombstone)")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMessage(REASON_NOT_UTF8, "message value is not UTF-8") from None
    if "\x00" in text:
        raise InvalidMessage(REASON_NUL_CHARACTER, "message contains a NUL character")
    data = _parse_json(text, value)
    if not isinstance(data, dict):
        raise InvalidMessage(REASON_NOT_OBJECT, f"message is a JSON {type(data).__name__}")
    for field in _CONTRACT_FIELDS:
        if field not in data:
            raise InvalidMessage(REASON_MISSING_FIELD, f"field {field!r} is missing")
    record_id = _text_field(data, "record_id", MAX_RECORD_ID_BYTES)
    tenant = _text_field(data, "tenant", MAX_TENANT_BYTES)
    occurred_at = parse_timestamp(data["occurred_at"])
    # A difference, not now + tolerance: that sum could overflow for a huge tolerance.
    if occurred_at - now > future_tolerance:
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
    count = 0
    for kind, values in raw.items():
        if not valid_type(kind):
            raise InvalidMessage(REASON_INVALID_FIELD, "subjects has an invalid identifier type")
        items = [values] if isinstance(values, str) else values
        if not isinstance(items, list):
            raise InvalidMessage(
                REASON_INVALID_FIELD, f"subjects.{kind} must be a string or a list of strings"
            )
        count += len(items)
        if count > MAX_IDENTIFIERS:
            raise InvalidMessage(
                REASON_TOO_MANY_IDENTIFIERS, f"subjects has more than {MAX_IDENTIFIERS} identifiers"
            )
        # A dict keeps the first occurrence's order and finds duplicates in O(1).
        normalised: dict[str, None] = {}
        for index, item in enumerate(items):
            try:
                normalised[normalise(kind, item, default_country_code)] = None
            except IdentifierTooLong as exc:
                raise InvalidMessage(
                    REASON_FIELD_TOO_LONG, f"subjects.{kind}[{index}]: {exc}"
                ) from None
            except IdentifierError as exc:
                raise InvalidMessage(
                    REASON_INVALID_IDENTIFIER, f"subjects.{kind}[{index}]: {exc}"
                ) from None
        if normalised:
            out[kind] = list(normalised)
    return out
