"""The orjson fast path of the contract decides exactly what the strict parser decides."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purger.errors import InvalidMessage
from purger.records import _SLOW, _canonical, _parse_strict, decode

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
GOOD = {
    "record_id": "r-1",
    "occurred_at": "2026-11-28T10:00:00+00:00",
    "tenant": "t",
    "subjects": {"msisdn": ["+31612345678"]},
}


def _outcome(value: bytes) -> Any:
    try:
        record = decode(value, now=NOW, future_tolerance=timedelta(days=1))
    except InvalidMessage as exc:
        return ("refused", exc.reason)
    return ("record", record)


def _strict_outcome(value: bytes) -> Any:
    """What the strict parser alone decides: the fast path switched off."""
    text = value.decode("utf-8")
    try:
        data = _parse_strict(text)
    except InvalidMessage as exc:
        return ("refused", exc.reason)
    return ("data", data)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":2}',
        '{"a":{"b":1,"b":1}}',
        '{"a":NaN}',
        '{"a":Infinity}',
        '{"a":-Infinity}',
        '{"a":1e400}',
        '{"a":-1e400}',
        '{"a":' + "9" * 1001 + "}",
        '{"a":18446744073709551616}',
        '{"a":-9223372036854775809}',
        '{"a":"\\ud800"}',
        '{"a":"\\u0000"}',
        '{"a":' + "[" * 70 + "]" * 70 + "}",
        '{"a":' + "[" * 2000 + "]" * 2000 + "}",
    ],
)
def test_what_the_strict_parser_refuses_never_takes_the_fast_path(text: str) -> None:
    value = text.encode()
    fast = _canonical(value)
    strict = _strict_outcome(value)
    if strict[0] == "refused":
        assert fast is _SLOW
    else:
        assert fast is _SLOW or fast == strict[1]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"a":1,"a":2}', "duplicate_key"),
        ('{"a":NaN}', "non_finite_number"),
        ('{"a":1e400}', "number_out_of_range"),
        ('{"a":' + "9" * 1001 + "}", "number_out_of_range"),
        ('{"a":' + "[" * 70 + "]" * 70 + "}", "too_deeply_nested"),
        ('{"a":"\\u0000"}', "nul_character"),
    ],
)
def test_decode_names_the_strict_reason(text: str, reason: str) -> None:
    message = {**GOOD}
    body = json.dumps(message, separators=(",", ":"))[:-1] + "," + text[1:]
    assert _outcome(body.encode()) == ("refused", reason)


def test_compact_messages_take_the_fast_path_and_decode_the_same() -> None:
    value = json.dumps({**GOOD, "call": {"d": 1.5, "n": -3, "s": "x"}}, separators=(",", ":"))
    assert _canonical(value.encode()) == json.loads(value)
    assert _outcome(value.encode())[0] == "record"


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(value=JSON_VALUES, compact=st.booleans(), duplicate=st.booleans())
def test_fast_path_agrees_with_the_strict_parser(
    value: Any, compact: bool, duplicate: bool
) -> None:
    separators = (",", ":") if compact else (", ", ": ")
    text = json.dumps({"k": value}, separators=separators)
    if duplicate:
        text = text[:-1] + ', "k": 0}'
    data = text.encode()
    fast = _canonical(data)
    strict = _strict_outcome(data)
    if fast is not _SLOW:
        assert strict == ("data", fast)
