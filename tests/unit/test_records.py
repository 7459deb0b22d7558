"""The message contract: every bad sample gets its reason, good ones decode normalised."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from purger.errors import InvalidMessage
from purger.records import DEAD_LETTER_REASONS, decode
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


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_decoder(value: bytes) -> None:
    try:
        _decode(value)
    except InvalidMessage as exc:
        assert exc.reason in DEAD_LETTER_REASONS
