"""The message contract: every bad sample gets its reason, good ones decode normalised."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from purger.errors import InvalidMessage
from purger.identifiers import MAX_IDENTIFIER_BYTES
from purger.records import (
    DEAD_LETTER_REASONS,
    MAX_DEPTH,
    MAX_IDENTIFIERS,
    MAX_INT_DIGITS,
    MAX_RECORD_ID_BYTES,
    MAX_TENANT_BYTES,
    REJECT_REASONS,
    Record,
    decode,
)
from purger.timestamps import EARLIEST, LATEST
from tests.samples import BAD_REASONS, MESSAGES

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def _decode(value: bytes) -> object:
    return decode(value, now=NOW, future_tolerance=timedelta(days=1))


@pytest.mark.parametrize("path", sorted((MESSAGES / "bad").iterdir()), ids=lambda p: p.name)
def test_every_bad_sample_is_refused_with_its_reason(path: Path) -> None:
    with pytest.raises(InvalidMessage) as caught:
        _decode(path.read_bytes())
    assert caught.value.reason == BAD_REASONS[path.name]
    assert caught.value.reason in DEAD_LETTER_REASONS
    # The detail names the problem, never the data.
    for secret in ("+31612345678", "not-a-number", "cdr-x", "t1", "yesterday"):
        assert secret not in str(caught.value)


@pytest.mark.parametrize("path", sorted((MESSAGES / "good").iterdir()), ids=lambda p: p.name)
def test_every_good_sample_decodes(path: Path) -> None:
    raw = json.loads(path.read_bytes())
    record = decode(path.read_bytes(), now=NOW, future_tolerance=timedelta(days=1))
    assert record.record_id == raw["record_id"]
    assert record.occurred_at.tzinfo is not None
    assert record.occurred_at.utcoffset() == timedelta(0)
    assert set(record.payload) == set(raw) - {"record_id", "occurred_at", "tenant", "subjects"}


def test_identifiers_are_normalised_on_decode() -> None:
    value = json.dumps(
        {
            "record_id": "r1",
            "occurred_at": "2026-11-01T09:14:07+01:00",
            "tenant": "t1",
            "subjects": {
                "msisdn": ["0612345678", "+31 6 1234 5678"],
                "email": "Jan.Jansen@Example.NL",
                "ip": "2001:DB8:0:0::1",
            },
        }
    ).encode()
    record = _decode(value)
    assert record.occurred_at == datetime(2026, 11, 1, 8, 14, 7, tzinfo=UTC)  # type: ignore[attr-defined]
    assert set(record.subject_keys) == {  # type: ignore[attr-defined]
        "msisdn:+31612345678",
        "email:jan.jansen@example.nl",
        "ip:2001:db8::1",
    }


def test_a_record_within_the_future_tolerance_is_accepted() -> None:
    occurred = (NOW + timedelta(hours=23)).isoformat()
    value = json.dumps(
        {"record_id": "r", "occurred_at": occurred, "tenant": "t", "subjects": {}}
    ).encode()
    assert _decode(value).occurred_at == NOW + timedelta(hours=23)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            b'{"record_id": "r", "occurred_at": "2026-11-01T09:14:07Z", "tenant": "t", '
            b'"subjects": {"not a type!": "x"}}',
            "invalid_field",
        ),
        (
            b'{"record_id": "r\\u0000", "occurred_at": "2026-11-01T09:14:07Z", "tenant": "t", '
            b'"subjects": {}}',
            "nul_character",
        ),
        (
            b'{"record_id": 7, "occurred_at": "2026-11-01T09:14:07Z", "tenant": "t", '
            b'"subjects": {}}',
            "invalid_field",
        ),
        (
            b'{"record_id": "r", "occurred_at": "2026-11-01T09:14:07Z", "tenant": "", '
            b'"subjects": {}}',
            "invalid_field",
        ),
        (
            b'{"record_id": "r", "occurred_at": "2026-11-01T09:14:07Z", "tenant": "t", '
            b'"subjects": {"msisdn": 612345678}}',
            "invalid_field",
        ),
        (
            b'{"record_id": "r", "occurred_at": "2026-11-01", "tenant": "t", "subjects": {}}',
            "invalid_timestamp",
        ),
    ],
)
def test_contract_violations(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        _decode(value)
    assert caught.value.reason == reason


def _message(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "record_id": "r1",
        "occurred_at": "2026-11-01T09:14:07Z",
        "tenant": "t",
        "subjects": {"msisdn": ["+31612345678"]},
        "call": {"duration_s": 184},
    }
    base.update(fields)
    return base


def _raw(**fields: str) -> bytes:
    # The message as JSON text with some members given as raw JSON, for what
    # json.dumps cannot write (duplicate keys, NaN literals, huge numbers).
    members = {k: json.dumps(v) for k, v in _message().items()}
    members.update(fields)
    return ("{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in members.items()) + "}").encode()


def _reason(value: bytes | None) -> str:
    with pytest.raises(InvalidMessage) as caught:
        decode(value, now=NOW, future_tolerance=timedelta(days=1))
    assert caught.value.reason in DEAD_LETTER_REASONS
    return caught.value.reason


def test_a_tombstone_has_its_own_reason() -> None:
    assert _reason(None) == "tombstone"


def test_every_reason_is_distinct_and_bounded() -> None:
    assert len(set(REJECT_REASONS)) == len(REJECT_REASONS)
    assert "expired_on_arrival" not in DEAD_LETTER_REASONS
    for reason in REJECT_REASONS:
        assert re.fullmatch(r"[a-z][a-z0-9_]{0,31}", reason), reason


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"occurred_at": '"0001-01-01T00:30:00+01:00"'}, "timestamp_out_of_range"),
        ({"occurred_at": '"9999-12-31T23:59:59-23:59"'}, "timestamp_out_of_range"),
        ({"occurred_at": '"2024-W01-1T10:00:00Z"'}, "invalid_timestamp"),
        ({"occurred_at": '"20240101T100000Z"'}, "invalid_timestamp"),
        ({"occurred_at": '"2024-01-01T10:00Z"'}, "invalid_timestamp"),
        ({"occurred_at": '"2024-01-01T10:00:00+0100"'}, "invalid_timestamp"),
        ({"occurred_at": '"2024-01-01 10:00:00Z"'}, "invalid_timestamp"),
        ({"occurred_at": '"2024-01-01T10:00:00Z "'}, "invalid_timestamp"),
        ({"occurred_at": '"\\u0662\\u0660\\u0662\\u0664-01-01T10:00:00Z"'}, "invalid_timestamp"),
        ({"occurred_at": "1700000000"}, "invalid_timestamp"),
        ({"occurred_at": '"2024-01-01T10:00:00"'}, "naive_timestamp"),
        ({"call": '{"duration_s": NaN}'}, "non_finite_number"),
        ({"call": '{"duration_s": Infinity}'}, "non_finite_number"),
        ({"call": "[-Infinity]"}, "non_finite_number"),
        ({"subjects": '{"msisdn": NaN}'}, "non_finite_number"),
        ({"call": "1e400"}, "number_out_of_range"),
        ({"call": "-1E+400"}, "number_out_of_range"),
        ({"call": "[" + "9" * 400 + ".0]"}, "number_out_of_range"),
        ({"call": "1" + "0" * MAX_INT_DIGITS}, "number_out_of_range"),
        ({"call": "-1" + "0" * MAX_INT_DIGITS}, "number_out_of_range"),
        # More digits than Python converts at all (4,300): a ValueError before.
        ({"call": "9" * 5000}, "number_out_of_range"),
        ({"call": "[" * (MAX_DEPTH) + "]" * (MAX_DEPTH)}, "too_deeply_nested"),
        ({"call": '{"a": ' * MAX_DEPTH + "1" + "}" * MAX_DEPTH}, "too_deeply_nested"),
        # Accepted by json.loads, refused later by json.dumps (RecursionError).
        ({"call": "[" * 980 + "]" * 980}, "too_deeply_nested"),
        # Beyond the decoder's own recursion limit.
        ({"call": "[" * 100_000 + "]" * 100_000}, "too_deeply_nested"),
        ({"call": '{"a": 1, "a": 2}'}, "duplicate_key"),
        ({"call": '[{"x": {"a": 1, "b": 2, "a": 1}}]'}, "duplicate_key"),
        ({"subjects": '{"msisdn": "+31612345678", "msisdn": "+31687654321"}'}, "duplicate_key"),
        ({"call": '{"\\u0061": 1, "a": 2}'}, "duplicate_key"),
        ({"call": '"\\u0000"'}, "nul_character"),
        ({"call": '{"k\\u0000": 1}'}, "nul_character"),
        ({"call": '"\\\\\\u0000"'}, "nul_character"),
        ({"subjects": '{"cookie_id": "c\\u0000"}'}, "nul_character"),
        ({"call": '"\\ud800"'}, "invalid_json"),
        ({"call": '{"\\udc00": 1}'}, "invalid_json"),
        ({"call": '"\\ude00\\ud83d"'}, "invalid_json"),
        ({"tenant": json.dumps("t" * (MAX_TENANT_BYTES + 1))}, "field_too_long"),
        ({"tenant": json.dumps("\u20ac" * 100)}, "field_too_long"),  # 100 chars, 300 bytes
        ({"tenant": json.dumps("\U0001f600" * 65, ensure_ascii=False)}, "field_too_long"),
        ({"record_id": json.dumps("r" * (MAX_RECORD_ID_BYTES + 1))}, "field_too_long"),
        ({"record_id": json.dumps("\u00e9" * 129)}, "field_too_long"),  # 258 bytes
        ({"subjects": json.dumps({"cookie_id": "c" * 257})}, "field_too_long"),
        ({"subjects": json.dumps({"cookie_id": "\u20ac" * 86})}, "field_too_long"),
        # Short enough as written, too long once lower-cased (I-dot becomes two code points).
        ({"subjects": json.dumps({"email": "\u0130" * 120 + "@example.nl"})}, "field_too_long"),
        (
            {"subjects": json.dumps({"cookie_id": [f"c{i}" for i in range(MAX_IDENTIFIERS + 1)]})},
            "too_many_identifiers",
        ),
        (
            {"subjects": json.dumps({"cookie_id": ["c"] * 600, "imsi": ["204081234567890"] * 401})},
            "too_many_identifiers",
        ),
        ({"subjects": '{"msisdn\\n": "+31612345678"}'}, "invalid_field"),
        (
            # Arabic-Indic digits, which \d would take for an IMSI.
            {"subjects": json.dumps({"imsi": "\u0662\u0660\u0664\u0660\u0668" * 3})},
            "invalid_identifier",
        ),
        ({"tenant": '"  "'}, "invalid_field"),
    ],
)
def test_messages_that_broke_the_consumer_or_storage_are_refused(
    fields: dict[str, str], reason: str
) -> None:
    assert _reason(_raw(**fields)) == reason


def test_no_detail_names_a_value() -> None:
    secret = "geheim-0612345678"
    values = [
        _raw(tenant=json.dumps(secret * 30)),
        _raw(record_id=json.dumps(secret * 30)),
        _raw(subjects=json.dumps({"cookie_id": secret * 30})),
        _raw(subjects=json.dumps({"email": secret})),
        _raw(call=f'1, "{secret}": 1, "{secret}": 2'),
        _raw(call=f'{{"{secret}": 1, "{secret}": 2}}'),
        _raw(occurred_at=json.dumps(secret)),
        _raw(call="1" * 2000),
    ]
    for value in values:
        with pytest.raises(InvalidMessage) as caught:
            _decode(value)
        assert secret not in str(caught.value)
        assert "1111111111" not in str(caught.value)


@pytest.mark.parametrize(
    "fields",
    [
        # The very edges of every bound are accepted.
        {"tenant": json.dumps("t" * MAX_TENANT_BYTES)},
        {"tenant": json.dumps("\U0001f600" * (MAX_TENANT_BYTES // 4))},
        {"record_id": json.dumps("r" * MAX_RECORD_ID_BYTES)},
        {"subjects": json.dumps({"cookie_id": "c" * MAX_IDENTIFIER_BYTES})},
        {"subjects": json.dumps({"cookie_id": [f"c{i}" for i in range(MAX_IDENTIFIERS)]})},
        {"call": "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)},
        {"call": "9" * MAX_INT_DIGITS},
        {"call": "-" + "9" * MAX_INT_DIGITS},
        {"call": "1.7976931348623157e308"},
        {"call": "1e-400"},  # underflows to 0.0: finite
        # Many brackets, little depth: the exact depth check must not refuse these.
        {"call": json.dumps("[" * 500)},
        {"call": json.dumps([{"i": i} for i in range(500)])},
        # Escapes that look like a NUL or a lone surrogate but are not.
        {"call": json.dumps("\\u0000")},
        {"call": json.dumps("\U0001f600")},
        {"call": json.dumps("\\ud800")},
        # Old, and valid: the consumer counts it as expired on arrival.
        {"occurred_at": '"1900-01-01T00:00:00Z"'},
        {"occurred_at": '"0001-01-02T00:00:00Z"'},
        {"occurred_at": '"2016-12-31T23:59:60Z"'},
        {"occurred_at": '"2026-11-01T09:14:07-00:00"'},
    ],
)
def test_the_edges_of_the_bounds_are_accepted(fields: dict[str, str]) -> None:
    raw = _raw(**fields)
    record = _decode(raw)
    assert isinstance(record, Record)
    _assert_storable(record)
    sent = json.loads(raw)
    assert (record.record_id, record.tenant) == (sent["record_id"], sent["tenant"])
    assert record.payload == {"call": sent["call"]}


def test_a_leap_second_is_kept_in_its_own_day() -> None:
    record = _decode(_raw(occurred_at='"2016-12-31T23:59:60.5Z"'))
    assert record.occurred_at == datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)  # type: ignore[attr-defined]


def test_a_huge_future_tolerance_does_not_overflow() -> None:
    record = decode(
        _raw(occurred_at='"8999-12-31T23:59:59Z"'), now=NOW, future_tolerance=timedelta.max
    )
    assert record.occurred_at.year == 8999


def test_duplicate_identifiers_are_one_subject() -> None:
    record = _decode(
        _raw(subjects=json.dumps({"msisdn": ["0612345678", "+31612345678", "0031612345678"]}))
    )
    assert record.subjects == {"msisdn": ["+31612345678"]}  # type: ignore[attr-defined]


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _assert_storable(record: Record) -> None:
    # What PostgreSQL text, text[] and jsonb (through psycopg's json.dumps) take.
    for part in (record.subjects, record.payload):
        json.dumps(part, allow_nan=False).encode("utf-8")
    assert _depth(record.payload) <= MAX_DEPTH
    texts = [record.record_id, record.tenant, *record.subject_keys]
    texts += _strings(record.payload) + _strings(record.subjects)
    for text in texts:
        assert "\x00" not in text
        text.encode("utf-8")
    assert 0 < len(record.record_id.encode()) <= MAX_RECORD_ID_BYTES
    assert 0 < len(record.tenant.encode()) <= MAX_TENANT_BYTES
    assert len(record.subject_keys) <= MAX_IDENTIFIERS
    for kind, values in record.subjects.items():
        assert len(set(values)) == len(values)
        for value in values:
            assert 0 < len(value.encode()) <= MAX_IDENTIFIER_BYTES
            assert len(kind.encode()) <= 32
    assert record.occurred_at.utcoffset() == timedelta(0)
    assert EARLIEST <= record.occurred_at < LATEST


def _decodes_or_refuses(value: bytes | None) -> None:
    # The guarantee: a storable record or InvalidMessage, nothing else, ever.
    try:
        record = _decode(value)  # type: ignore[arg-type]
    except InvalidMessage as exc:
        assert exc.reason in DEAD_LETTER_REASONS
        return
    assert isinstance(record, Record)
    _assert_storable(record)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoder(value: bytes) -> None:
    _decodes_or_refuses(value)


_NUMBER_TEXT = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1E-400", "-0", "0.0"]),
    # Digit counts around the bounds: of this module, of a double, of Python's int().
    st.sampled_from([309, 400, 999, 1000, 1001, 4300, 4301, 5000]).flatmap(
        lambda n: st.sampled_from(["9" * n, "-" + "9" * n, "9" * n + ".5", "0." + "9" * n])
    ),
    st.integers().map(str),
    st.floats().map(lambda f: repr(f) if f == f and abs(f) != float("inf") else "1e999"),
)
_STRING_TEXT = st.text(
    st.characters(codec="utf-8") | st.sampled_from(["\x00", "\\", '"', "\u0130", "\U0001f600"]),
    max_size=40,
).map(json.dumps) | st.sampled_from(
    ['"\\u0000"', '"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"', '"\\\\u0000"', '"\\ud83d"']
)


def _json_text(leaves: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # JSON-ish text, written by hand so that it may hold what json.dumps never
    # writes: duplicate keys, NaN, huge numbers, escapes of NUL and lone surrogates.
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
            st.lists(st.tuples(_STRING_TEXT | st.just('"a"'), inner), max_size=4).map(
                lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}"
            ),
        ),
        max_leaves=12,
    )


_LEAF_TEXT = _NUMBER_TEXT | _STRING_TEXT | st.sampled_from(["true", "false", "null"])
_JSON_TEXT = _json_text(_LEAF_TEXT)


@given(_JSON_TEXT | st.text(max_size=200))
def test_arbitrary_json_ish_text_never_crashes_the_decoder(text: str) -> None:
    _decodes_or_refuses(text.encode("utf-8", "surrogatepass"))


_TIMESTAMP_TEXT = st.sampled_from(
    [
        "0001-01-01T00:30:00+01:00",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59-23:59",
        "9999-12-31T23:59:60Z",
        "8999-12-31T23:59:59Z",
        "0001-01-02T00:00:00Z",
        "1900-02-28T23:59:60-00:00",
        "2016-12-31T23:59:60Z",
        "2024-W01-1T10:00:00Z",
        "2024-01-01T10:00:00",
        "2024-02-30T10:00:00Z",
    ]
).map(json.dumps)
_EXTREME = st.one_of(
    _JSON_TEXT,
    _TIMESTAMP_TEXT,
    st.integers(1, 400).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 400).map(lambda n: '{"a":' * n + "0" + "}" * n),
    st.integers(200, 300).map(lambda n: json.dumps("x" * n)),
    st.integers(50, 90).map(lambda n: json.dumps("\U0001f600" * n, ensure_ascii=False)),
    st.sampled_from(["msisdn", "email", "ip", "imsi", "cookie_id", "x"]).flatmap(
        lambda kind: st.lists(_STRING_TEXT, max_size=3).map(
            lambda vs: "{" + f'"{kind}": [' + ",".join(vs) + "]}"
        )
    ),
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["record_id", "occurred_at", "tenant", "subjects", "call", "extra"]),
            _EXTREME,
        ),
        min_size=1,
        max_size=3,
    ),
    st.booleans(),
)
def test_a_valid_message_with_extreme_fields_never_crashes_the_decoder(
    replaced: list[tuple[str, str]], duplicate: bool
) -> None:
    members = {k: json.dumps(v) for k, v in _message().items()}
    extra: list[str] = []
    for name, text in replaced:
        if duplicate and name in members:
            extra.append(f'"{name}": {text}')
        else:
            members[name] = text
    body = [f'"{k}": {v}' for k, v in members.items()] + extra
    _decodes_or_refuses(("{" + ", ".join(body) + "}").encode("utf-8", "surrogatepass"))
