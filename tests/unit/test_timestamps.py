"""RFC 3339 timestamps: exactly the ABNF of section 5.6, in range, never another exception."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from purger.errors import InvalidMessage
from purger.records import parse_timestamp
from purger.timestamps import (
    EARLIEST,
    LATEST,
    NaiveTimestamp,
    TimestampError,
    TimestampOutOfRange,
    days_in_month,
    parse_rfc3339,
)


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01T09:14:07Z", _utc(2026, 11, 1, 9, 14, 7)),
        ("2026-11-01t09:14:07z", _utc(2026, 11, 1, 9, 14, 7)),
        ("2026-11-01T09:14:07+01:00", _utc(2026, 11, 1, 8, 14, 7)),
        ("2026-11-01T09:14:07-05:30", _utc(2026, 11, 1, 14, 44, 7)),
        ("2026-11-01T09:14:07+23:59", _utc(2026, 10, 31, 9, 15, 7)),
        # -00:00: the local offset is unknown, the instant is not.
        ("2026-11-01T09:14:07-00:00", _utc(2026, 11, 1, 9, 14, 7)),
        ("2026-11-01T09:14:07.5Z", _utc(2026, 11, 1, 9, 14, 7, 500000)),
        ("2026-11-01T09:14:07.000001Z", _utc(2026, 11, 1, 9, 14, 7, 1)),
        # Beyond microseconds: truncated, never rounded into the next day.
        ("2026-12-31T23:59:59.99999999999999999999Z", _utc(2026, 12, 31, 23, 59, 59, 999999)),
        ("2000-02-29T00:00:00Z", _utc(2000, 2, 29)),
        # Leap seconds, at the end of a UTC month, whatever the local offset.
        ("2016-12-31T23:59:60Z", _utc(2016, 12, 31, 23, 59, 59, 999999)),
        ("2017-01-01T00:59:60.25+01:00", _utc(2016, 12, 31, 23, 59, 59, 999999)),
        ("2015-06-30T18:59:60-05:00", _utc(2015, 6, 30, 23, 59, 59, 999999)),
        ("2024-02-29T23:59:60Z", _utc(2024, 2, 29, 23, 59, 59, 999999)),
        # Old, but a valid instant: expiry is the caller's business.
        ("1900-01-01T00:00:00Z", _utc(1900, 1, 1)),
        ("1990-05-17T12:00:00+02:00", _utc(1990, 5, 17, 10)),
        # The range's edges.
        ("0001-01-02T00:00:00Z", EARLIEST),
        ("0001-01-02T01:00:00+01:00", EARLIEST),
        ("0001-01-01T20:00:00-04:00", EARLIEST),
        ("8999-12-31T23:59:59.999999Z", LATEST - timedelta(microseconds=1)),
        ("9000-01-01T00:59:59+01:00", LATEST - timedelta(seconds=1)),
        ("8998-12-31T23:59:00-23:59", _utc(8999, 1, 1, 23, 58)),
    ],
)
def test_valid_timestamps(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-11-01",
        "2024-W01-1T10:00:00Z",  # ISO 8601 week date
        "2024-001T10:00:00Z",  # ISO 8601 ordinal date
        "20240101T100000Z",  # ISO 8601 basic format
        "2024-01-01T10:00Z",  # no seconds
        "2024-01-01T10Z",
        "2024-01-01T10:00:00+0100",  # offset without colon
        "2024-01-01T10:00:00+01",
        "2024-01-01T10:00:00+1:00",
        "2024-01-01T10:00:00+01:00:00",  # seconds in the offset
        "2024-01-01T10:00:00+05.5",  # fractional-hour offset
        "2024-01-01T10:00:00+24:00",
        "2024-01-01T10:00:00+23:60",
        "2024-01-01T10:00:00UTC",
        "2024-01-01 10:00:00Z",  # a space separator: not agreed
        "2024-01-01_10:00:00Z",
        "2024-01-01T10:00:00,5Z",  # comma fraction
        "2024-01-01T10:00:00.Z",  # dot without digits
        " 2024-01-01T10:00:00Z",
        "2024-01-01T10:00:00Z ",
        "2024-01-01T10:00:00Z\n",
        "\u0662\u0660\u0662\u0664-01-01T10:00:00Z",  # Arabic-Indic digits
        "2024-01-01T10:00:00\uff3a",  # fullwidth Z
        "+2024-01-01T10:00:00Z",
        "12024-01-01T10:00:00Z",
        "2024-1-01T10:00:00Z",
        "2024-00-10T10:00:00Z",
        "2024-13-10T10:00:00Z",
        "2024-01-00T10:00:00Z",
        "2024-01-32T10:00:00Z",
        "2023-02-29T10:00:00Z",  # not a leap year
        "1900-02-29T10:00:00Z",  # not a leap year either
        "2024-04-31T10:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T10:60:00Z",
        "2024-01-01T10:00:61Z",
        # Second 60 where no leap second can be.
        "2016-12-31T23:59:60+01:00",
        "2016-12-30T23:59:60Z",
        "2016-12-31T22:59:60Z",
        "2016-12-31T23:58:60Z",
    ],
)
def test_anything_else_is_not_a_timestamp(text: str) -> None:
    with pytest.raises(TimestampError) as caught:
        parse_rfc3339(text)
    assert type(caught.value) is TimestampError


@pytest.mark.parametrize("text", ["2026-11-01T09:14:07", "2026-11-01T09:14:07.25"])
def test_a_timestamp_without_offset_is_naive(text: str) -> None:
    with pytest.raises(NaiveTimestamp):
        parse_rfc3339(text)


@pytest.mark.parametrize(
    "text",
    [
        # Python's astimezone raised OverflowError for this one.
        "0001-01-01T00:30:00+01:00",
        "0001-01-01T23:59:59.999999Z",
        "0001-01-02T00:00:00+00:01",
        "0000-01-01T00:00:00Z",
        "0000-02-29T12:00:00Z",
        "9000-01-01T00:00:00Z",
        "8999-12-31T23:59:00-23:59",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-23:59",
        "9999-12-31T23:59:60Z",
    ],
)
def test_instants_outside_the_range(text: str) -> None:
    with pytest.raises(TimestampOutOfRange):
        parse_rfc3339(text)


def test_each_problem_has_its_reason_and_no_detail_names_the_value() -> None:
    cases = {
        "2024-W01-1T10:00:00Z": "invalid_timestamp",
        "2026-11-01T09:14:07": "naive_timestamp",
        "0001-01-01T00:30:00+01:00": "timestamp_out_of_range",
    }
    for text, reason in cases.items():
        with pytest.raises(InvalidMessage) as caught:
            parse_timestamp(text)
        assert caught.value.reason == reason
        assert caught.value.detail.startswith("occurred_at ")
        assert text not in str(caught.value)
    with pytest.raises(InvalidMessage) as not_text:
        parse_timestamp(1700000000, "--since")
    assert not_text.value.reason == "invalid_timestamp"
    assert not_text.value.detail == "--since must be an RFC 3339 string"


def test_the_grammar_error_keeps_the_cli_wording() -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_timestamp("yesterday", "--since")
    assert caught.value.detail == "--since is not an RFC 3339 timestamp"


_OFFSETS = st.one_of(
    st.sampled_from(["Z", "z", "-00:00"]),
    st.tuples(st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)).map(
        lambda t: f"{t[0]}{t[1]:02d}:{t[2]:02d}"
    ),
)
# Years near the range's edges (and year 0) get as much attention as the middle.
_YEARS = st.one_of(st.integers(0, 3), st.integers(8997, 9999), st.integers(0, 9999))


@st.composite
def _components(draw: st.DrawFn) -> tuple[str, int, int, int, int, int, int, str, str]:
    year = draw(_YEARS)
    month = draw(st.integers(1, 12))
    day = draw(st.integers(1, days_in_month(year, month)))
    hour, minute, second = (
        draw(st.integers(0, 23)),
        draw(st.integers(0, 59)),
        draw(st.integers(0, 59)),
    )
    fraction = draw(st.text("0123456789", max_size=12))
    sep = draw(st.sampled_from("Tt"))
    return sep, year, month, day, hour, minute, second, fraction, draw(_OFFSETS)


def _offset_minutes(offset: str) -> int:
    if offset in ("Z", "z"):
        return 0
    minutes = int(offset[1:3]) * 60 + int(offset[4:6])
    return -minutes if offset[0] == "-" else minutes


def _days_from_civil(year: int, month: int, day: int) -> int:
    # Days since 1970-01-01 in the proleptic Gregorian calendar, for any year
    # (H. Hinnant's algorithm): independent of datetime and its range.
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _reference(
    year: int, month: int, day: int, hour: int, minute: int, second: int, micro: int, offset: int
) -> datetime | None:
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    total = (seconds - offset * 60) * 1_000_000 + micro
    low = _days_from_civil(1, 1, 2) * 86400 * 1_000_000
    high = _days_from_civil(9000, 1, 1) * 86400 * 1_000_000
    if not low <= total < high:
        return None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=total)


@given(_components())
@example(("T", 1, 1, 1, 0, 30, 0, "", "+01:00"))
@example(("T", 8999, 12, 31, 23, 59, 0, "", "-23:59"))
@example(("t", 2024, 2, 29, 23, 59, 59, "9999999", "z"))
def test_the_parser_agrees_with_a_reference(
    parts: tuple[str, int, int, int, int, int, int, str, str],
) -> None:
    sep, year, month, day, hour, minute, second, fraction, offset = parts
    text = f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}"
    text += f".{fraction}" if fraction else ""
    text += offset
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    expected = _reference(year, month, day, hour, minute, second, micro, _offset_minutes(offset))
    if expected is None:
        with pytest.raises(TimestampOutOfRange):
            parse_rfc3339(text)
    else:
        assert parse_rfc3339(text) == expected


@given(st.integers(1, 8998), st.integers(1, 12), _OFFSETS, st.text("0123456789", max_size=9))
def test_a_leap_second_is_the_last_microsecond_of_its_utc_month(
    year: int, month: int, offset: str, fraction: str
) -> None:
    end = _utc(year, month, days_in_month(year, month), 23, 59, 59)
    local = end + timedelta(minutes=_offset_minutes(offset))
    text = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}T{local.hour:02d}:{local.minute:02d}:60"
        + (f".{fraction}" if fraction else "")
        + offset
    )
    assert parse_rfc3339(text) == end.replace(microsecond=999999)


_TIMESTAMP_ALPHABET = "0123456789-:.+TtZz \n\u0660\u0669\uff10"


@given(
    st.one_of(
        st.text(max_size=40),
        st.text(_TIMESTAMP_ALPHABET, max_size=40),
        st.builds(
            lambda s, i, c: s[:i] + c + s[i + 1 :],
            st.sampled_from(["2016-12-31T23:59:60Z", "0001-01-02T00:00:00+00:00"]),
            st.integers(0, 25),
            st.sampled_from(list(_TIMESTAMP_ALPHABET)),
        ),
    )
)
def test_any_text_is_a_utc_instant_in_range_or_a_timestamp_error(text: str) -> None:
    try:
        parsed = parse_rfc3339(text)
    except TimestampError:
        return
    assert parsed.tzinfo is UTC
    assert EARLIEST <= parsed < LATEST
    assert text.isascii()
