"""RFC 3339 timestamps, parsed strictly by the ABNF of RFC 3339 section 5.6.

Accepted, and nothing else (no surrounding whitespace; ASCII digits only)::

    date-time = YYYY "-" MM "-" DD ("T" / "t") hh ":" mm ":" ss ["." 1*DIGIT] offset
    offset    = "Z" / "z" / ("+" / "-") hh ":" mm        ; hh 00-23, mm 00-59

Choices where RFC 3339 leaves room, or where its ABNF and Python differ:

* The separator is ``T`` or ``t`` only. The space the note in section 5.6 allows
  "by mutual agreement" is not agreed: ``2024-01-01 10:00:00Z`` is refused.
* ``-00:00`` ("the offset to local time is unknown", section 4.3) still names an
  exact instant; it is read as UTC.
* Fractional seconds may have any number of digits; digits beyond microseconds
  are truncated, never rounded, so an instant never moves into the next second
  (or day, or month).
* Second 60 is a leap second. It is accepted only where one can occur: at
  23:59:60 UTC, after the offset is applied, on the last day of a month
  (section 5.7; the table of past leap seconds is not consulted). It becomes
  23:59:59.999999 UTC of that day: the instant stays in its own UTC day and
  month, and stays after every earlier second.
* A date-time that is valid except that it has no offset is a
  :class:`NaiveTimestamp`, so that a producer's most common mistake gets its own
  reason.
* The UTC instant must lie in [0001-01-02T00:00:00Z, 9000-01-01T00:00:00Z).
  Python's ``datetime`` ends at 9999-12-31 (PostgreSQL's ``timestamptz`` much
  later, 294276 AD); the upper bound leaves ~1000 years for expiry arithmetic
  (occurred_at + retention, partition bounds), and the lower bound one day for
  code that moves an instant back by an offset or to the start of its day. An old
  instant in range (1900, 1990) is valid: whether it is expired is the caller's
  business.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import cache

EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)  # exclusive

# The ABNF, with the value ranges its comments give (hour 00-23, minute 00-59,
# second 00-60, month 01-12, mday 01-31); whether the mday exists in its month is
# checked after matching.
_GRAMMAR = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]|60)(?:\.([0-9]+))?"
    r"([Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?",
    re.ASCII,
)
_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Naive bounds: an offset moves them by less than a day, which cannot overflow.
_EARLIEST_LOCAL = EARLIEST.replace(tzinfo=None)
_LATEST_LOCAL = LATEST.replace(tzinfo=None)


_OUT_OF_RANGE = "lies outside [0001-01-02T00:00:00Z, 9000-01-01T00:00:00Z)"


class TimestampError(ValueError):
    """Not a valid RFC 3339 date-time; the message never contains the value."""


class NaiveTimestamp(TimestampError):
    """A date-time without an offset: which instant it names is unknown."""


class TimestampOutOfRange(TimestampError):
    """A valid date-time whose instant lies outside [EARLIEST, LATEST)."""


def days_in_month(year: int, month: int) -> int:
    """Days of ``month`` in the proleptic Gregorian calendar (year 0 included)."""
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _DAYS[month - 1]


@cache  # bounded by the grammar: 2 * 24 * 60 + 2 offsets
def _offset(text: str) -> timedelta:
    if text in ("Z", "z"):
        return timedelta(0)
    offset = timedelta(hours=int(text[1:3]), minutes=int(text[4:6]))
    return -offset if text[0] == "-" else offset


def parse_rfc3339(text: str) -> datetime:
    """The instant ``text`` names, as an aware UTC datetime; TimestampError otherwise."""
    match = _GRAMMAR.fullmatch(text)
    if match is None:
        raise TimestampError("is not an RFC 3339 timestamp")
    # The common case in C: the grammar is checked, so fromisoformat reads exactly
    # RFC 3339 here (it truncates digits beyond microseconds, as documented above).
    # A year far from the bounds cannot leave the range, whatever the offset.
    if match.lastindex == 8 and text[17:19] != "60" and "0002" <= text[:4] <= "8998":
        if text[-1] == "z":
            text = text[:-1] + "Z"
        try:
            return datetime.fromisoformat(text).astimezone(UTC)
        except ValueError:
            pass  # a day past the end of its month: reported below
    return _parse(match)


def _parse(match: re.Match[str]) -> datetime:
    year_s, month_s, day_s, hour_s, minute_s, second_s, fraction, offset_s = match.groups()
    year, month, day = int(year_s), int(month_s), int(day_s)
    if day > days_in_month(year, month):
        raise TimestampError("has a date that does not exist")
    if offset_s is None:
        raise NaiveTimestamp("has no UTC offset")
    offset = _offset(offset_s)
    if not 1 <= year <= 9000:
        # Out of range whatever the offset; year 0 cannot even be built.
        raise TimestampOutOfRange(_OUT_OF_RANGE)
    second = int(second_s)
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    local = datetime(year, month, day, int(hour_s), int(minute_s), min(second, 59), micro)
    if not _EARLIEST_LOCAL + offset <= local < _LATEST_LOCAL + offset:
        raise TimestampOutOfRange(_OUT_OF_RANGE)
    instant = (local - offset).replace(tzinfo=UTC)
    if second == 60:
        if (
            instant.hour != 23
            or instant.minute != 59
            or instant.day != days_in_month(instant.year, instant.month)
        ):
            raise TimestampError("has a leap second where none can occur")
        return instant.replace(microsecond=999_999)
    return instant
