"""ISO-8601 durations and the project's expiry arithmetic.

Calendar parts (years, months) move the date and clamp a day that does not
exist in the target month to its last day; days, hours, minutes and seconds are
exact (a day is 86,400 s). Everything is computed in UTC.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from purger.errors import DurationError

_PATTERN = re.compile(
    r"^P(?!$)(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)


@dataclass(frozen=True, slots=True)
class Duration:
    """A parsed ISO-8601 duration: calendar months plus an exact span."""

    months: int
    exact: timedelta
    text: str

    def __str__(self) -> str:
        return self.text

    @property
    def is_zero(self) -> bool:
        """True when the duration adds nothing."""
        return self.months == 0 and self.exact == timedelta(0)

    def add_to(self, instant: datetime) -> datetime:
        """Return ``instant + self`` in UTC (calendar part first, then the exact part)."""
        if instant.tzinfo is None:
            raise ValueError("naive datetime: an instant needs an offset")
        if instant.tzinfo is not UTC:
            instant = instant.astimezone(UTC)
        return add_months(instant, self.months) + self.exact

    def approx_timedelta(self) -> timedelta:
        """An upper bound of the duration as a timedelta (31-day months), for planning only."""
        return timedelta(days=31 * self.months) + self.exact


def parse_duration(text: str) -> Duration:
    """Parse ``PnYnMnWnDTnHnMnS`` (integer parts only); raise DurationError otherwise."""
    if not isinstance(text, str):
        raise DurationError(f"expected an ISO-8601 duration string, got {type(text).__name__}")
    return _parse(text)


# Settings hand out durations as properties read on hot paths (once per message);
# the few distinct strings of a configuration are parsed once.
@lru_cache(maxsize=256)
def _parse(text: str) -> Duration:
    match = _PATTERN.match(text.strip())
    if match is None:
        raise DurationError(f"{text!r} is not an ISO-8601 duration such as P6M, P90D, P1Y or PT12H")
    parts = {k: int(v) if v else 0 for k, v in match.groupdict().items()}
    months = parts["years"] * 12 + parts["months"]
    exact = timedelta(
        weeks=parts["weeks"],
        days=parts["days"],
        hours=parts["hours"],
        minutes=parts["minutes"],
        seconds=parts["seconds"],
    )
    return Duration(months=months, exact=exact, text=text.strip())


def add_months(instant: datetime, months: int) -> datetime:
    """Move ``instant`` by calendar months, clamping the day to the target month's end."""
    if months == 0:
        return instant
    index = instant.year * 12 + (instant.month - 1) + months
    year, month0 = divmod(index, 12)
    month = month0 + 1
    day = instant.day
    # Only days past 28 can fall outside the target month: most skip monthrange.
    if day > 28:
        day = min(day, calendar.monthrange(year, month)[1])
    return instant.replace(year=year, month=month, day=day)
