"""The JSON the COPY writes for jsonb means, to PostgreSQL, what json.dumps's meant.

PostgreSQL's jsonb keeps strings and, for numbers, their value and scale (``1.50`` and
``1.5`` differ, ``1e-05`` and ``0.00001`` do not). ``_meaning`` reads JSON text that
way; tests/integration/test_jsonb_storage.py checks the same on a real database.
"""

from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from examples import samples
from purger.records import decode, jsonb_text


def _number(text: str) -> tuple[str, Decimal, int]:
    value = Decimal(text)
    # PostgreSQL's numeric keeps the digits after the point (its display scale).
    return ("number", value, max(0, -int(value.as_tuple().exponent)))


def _meaning(text: bytes | str) -> Any:
    return json.loads(text, parse_float=_number, parse_int=_number)


def _check(value: Any) -> None:
    try:
        expected = json.dumps(value)
    except (ValueError, TypeError, RecursionError) as exc:
        # What psycopg's json.dumps refused (a RecordRefused) is refused alike.
        with pytest.raises(type(exc)):
            jsonb_text(value)
        return
    text = jsonb_text(value)
    if isinstance(text, str):
        assert text == expected
    else:
        assert _meaning(text) == _meaning(expected), (value, text, expected)


def _float(bits: int) -> float:
    return float(struct.unpack("<d", bits.to_bytes(8, "little"))[0])


FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2**64 - 1).map(
    _float
).filter(math.isfinite)
# What decode can give: JSON of any strings, integers of up to 1,000 digits, finite floats.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.integers(-(10**1000) + 1, 10**1000 - 1)
    | FLOATS
    | st.text()
    | st.text(st.characters(codec="utf-8"), max_size=4)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=1500, deadline=None)
@given(value=JSON_VALUES)
@example(value={"f": 1e-05, "g": 1.5e-07, "h": 1e16, "i": 100.0, "j": -0.0, "k": 5e-324})
@example(value={"n": 2**63 - 1, "m": -(2**63), "u": 2**64 - 1, "big": 2**64, "neg": -(2**63) - 1})
@example(value={"s": '\u2028\u2029\x7f\x1f"\\/ é 😀 \ud7ff\ue000\uffff', "\u00e9": [True, False]})
def test_the_jsonb_of_any_decoded_value_is_the_same(value: Any) -> None:
    _check({"v": value})


@settings(max_examples=300, deadline=None)
@given(value=FLOATS)
def test_every_float_keeps_its_value_and_scale(value: float) -> None:
    _check(value)


@pytest.mark.parametrize(
    "value",
    [
        {"nan": math.nan},
        {"inf": [math.inf]},
        {"lone": "\ud800"},
        {"huge": 10**5000},
        {1: "a key that is not a string"},
        {"deep": json.loads("[" * 300 + "]" * 300)},
        {"when": datetime(2026, 1, 1, tzinfo=UTC)},
        {"nested": [{"null": None}]},
    ],
    ids=["nan", "infinity", "surrogate", "int-5000-digits", "int-key", "deep", "datetime", "null"],
)
def test_what_orjson_writes_otherwise_is_left_to_json_dumps(value: Any) -> None:
    try:
        expected: str | None = json.dumps(value)
    except (ValueError, TypeError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            jsonb_text(value)
        expected = None
    if expected is not None:
        assert jsonb_text(value) == expected


def test_a_subclass_is_left_to_json_dumps() -> None:
    @dataclass
    class Point:
        x: int

    class Text(str):
        pass

    with pytest.raises(TypeError):
        jsonb_text({"p": Point(1)})
    assert jsonb_text({"t": Text("x")}) == json.dumps({"t": Text("x")})


def test_decoded_records_take_orjson() -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    for category in ("cdr", "call_recordings", "interception", "web"):
        value = samples.encode(samples.message(category, "r-1", now, random.Random(1)))
        record = decode(value, now=now, future_tolerance=timedelta(days=1))
        for part in (record.subjects, record.payload):
            text = jsonb_text(part)
            assert isinstance(text, bytes)
            assert _meaning(text) == _meaning(json.dumps(part))
