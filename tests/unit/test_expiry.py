"""Expiry arithmetic: the shared vectors and properties of calendar clamping."""

from __future__ import annotations

import calendar
import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from purger.durations import add_months, parse_duration
from purger.errors import DurationError
from purger.policy import load_policy

VECTORS = list(
    csv.DictReader(
        (Path(__file__).parents[1] / "data/retention-vectors.csv").read_text().splitlines()
    )
)
REPO = Path(__file__).parents[2]


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("row", VECTORS, ids=lambda r: f"{r['category']}-{r['occurred_at']}")
def test_vectors(row: dict[str, str]) -> None:
    duration = parse_duration(row["retention"])
    assert duration.add_to(_ts(row["occurred_at"])) == _ts(row["expected_expires_at"])


@pytest.mark.parametrize("row", VECTORS, ids=lambda r: f"{r['category']}-{r['occurred_at']}")
def test_vectors_through_the_default_policy(row: dict[str, str]) -> None:
    policy = load_policy(REPO / "config/retention.yaml")
    category = policy.category(row["category"])
    assert category.expires_at("any-tenant", _ts(row["occurred_at"])) == _ts(
        row["expected_expires_at"]
    )


def test_offsets_are_converted_to_utc() -> None:
    local = datetime.fromisoformat("2026-11-01T09:14:07+01:00")
    assert parse_duration("P6M").add_to(local) == datetime(2027, 5, 1, 8, 14, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "months", "exact"),
    [
        ("P6M", 6, timedelta(0)),
        ("P1Y", 12, timedelta(0)),
        ("P90D", 0, timedelta(days=90)),
        ("P1Y2M3DT4H5M6S", 14, timedelta(days=3, hours=4, minutes=5, seconds=6)),
        ("P2W", 0, timedelta(days=14)),
        ("PT12H", 0, timedelta(hours=12)),
    ],
)
def test_parse(text: str, months: int, exact: timedelta) -> None:
    d = parse_duration(text)
    assert (d.months, d.exact) == (months, exact)


@pytest.mark.parametrize("text", ["", "P", "6M", "P6", "PT", "P1.5M", "P-1D", "six months", "P1DT"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(instants, st.integers(min_value=0, max_value=240))
def test_add_months_clamps_to_month_end(instant: datetime, months: int) -> None:
    moved = add_months(instant, months)
    assert (moved.year * 12 + moved.month) - (instant.year * 12 + instant.month) == months
    last = calendar.monthrange(moved.year, moved.month)[1]
    assert moved.day == min(instant.day, last)
    assert moved.time() == instant.time()


@given(instants, st.integers(min_value=0, max_value=1000))
def test_days_are_exact(instant: datetime, days: int) -> None:
    assert parse_duration(f"P{days}D").add_to(instant) - instant == timedelta(days=days)


@given(instants, st.integers(min_value=1, max_value=60))
def test_expiry_is_monotonic(instant: datetime, months: int) -> None:
    # By day, not by instant: the rule keeps the time of day when it clamps, so
    # 2000-01-29T23:00 + P1M = 2000-02-29T23:00 while 2000-01-30T00:00 + P1M =
    # 2000-02-29T00:00. A later record never expires on an earlier day.
    later = instant + timedelta(hours=1)
    d = parse_duration(f"P{months}M")
    assert d.add_to(later).date() >= d.add_to(instant).date()
