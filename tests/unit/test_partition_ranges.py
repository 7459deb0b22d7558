"""The range of a new partition: aligned to the granularity, clipped by its neighbours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from purger.partitions import (
    EPOCH,
    PartitionManager,
    Range,
    covering,
    partition_name,
    plan_range,
    range_containing,
    sorted_ranges,
)

H = timedelta(hours=1)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
GRANULARITIES = (H, 6 * H, 12 * H, DAY, WEEK)
D0 = datetime(2030, 3, 12, tzinfo=UTC)  # a Tuesday; P7D weeks start on Thursdays


def at(days: float = 0, hours: float = 0) -> datetime:
    """An instant ``days`` and ``hours`` after D0."""
    return D0 + timedelta(days=days, hours=hours)


def test_with_no_partition_the_range_is_the_aligned_one() -> None:
    assert plan_range(at(0, 7.5), 6 * H, []) == (at(0, 6), at(0, 12))
    assert plan_range(at(0, 7.5), DAY, []) == (at(0), at(1))


def test_a_covered_instant_needs_no_partition() -> None:
    existing = [(at(0), at(1))]
    assert plan_range(at(0), 6 * H, existing) is None
    assert plan_range(at(0, 23.5), 6 * H, existing) is None
    assert covering(existing, at(0, 12)) == (at(0), at(1))


def test_the_end_of_a_partition_is_not_covered_by_it() -> None:
    existing = [(at(0), at(1))]
    assert covering(existing, at(1)) is None
    assert plan_range(at(1), 6 * H, existing) == (at(1), at(1, 6))


def test_finer_granularity_next_to_a_day_keeps_its_own_alignment() -> None:
    # P1D then PT6H: the day stays, the next day is cut in quarters.
    existing = [(at(0), at(1))]
    assert plan_range(at(1, 13), 6 * H, existing) == (at(1, 12), at(1, 18))
    assert plan_range(at(-1, 2), 6 * H, existing) == (at(-1), at(-1, 6))


def test_coarser_granularity_starts_where_the_last_partition_ends() -> None:
    # PT6H then P1D: the rest of the day after the last quarter.
    existing = [(at(0), at(0, 6)), (at(0, 6), at(0, 12))]
    assert plan_range(at(0, 15), DAY, existing) == (at(0, 12), at(1))
    assert plan_range(at(1, 15), DAY, existing) == (at(1), at(2))


def test_coarser_granularity_ends_where_the_next_partition_starts() -> None:
    existing = [(at(0, 18), at(1))]
    assert plan_range(at(0, 3), DAY, existing) == (at(0), at(0, 18))


def test_a_week_fills_the_gap_between_days() -> None:
    # P1D then P7D: the week around D0 runs Thursday 7 March to Thursday 14 March 2030.
    week = range_containing(at(0), WEEK)
    assert week == (datetime(2030, 3, 7, tzinfo=UTC), datetime(2030, 3, 14, tzinfo=UTC))
    existing = [(at(-1), at(0)), (at(1), at(1, 12))]
    assert plan_range(at(0, 5), WEEK, existing) == (at(0), at(1))
    assert plan_range(at(-3), WEEK, existing) == (week[0], at(-1))
    assert plan_range(at(1, 13), WEEK, existing) == (at(1, 12), week[1])
    assert plan_range(week[1], WEEK, existing) == (week[1], week[1] + WEEK)


def test_ranges_are_sorted_and_deduplicated() -> None:
    ranges: list[Range] = [(at(1), at(2)), (at(0), at(1)), (at(1), at(2))]
    assert sorted_ranges(ranges) == [(at(0), at(1)), (at(1), at(2))]


@pytest.mark.parametrize("granularity", [timedelta(0), -H, timedelta(minutes=30), H + H / 2])
def test_the_manager_refuses_granularities_that_are_not_whole_hours(
    granularity: timedelta,
) -> None:
    with pytest.raises(ValueError, match="whole hours"):
        PartitionManager(granularity)


# Instants in whole seconds over ~60 days around D0, and granularity changes between them.
_instants = st.integers(0, 60 * 86400).map(lambda s: D0 - 30 * DAY + timedelta(seconds=s))
_steps = st.lists(
    st.tuples(st.sampled_from(GRANULARITIES), st.lists(_instants, min_size=1, max_size=8)),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300)
@given(steps=_steps)
def test_ranges_never_overlap_and_cover_every_instant(
    steps: list[tuple[timedelta, list[datetime]]],
) -> None:
    ranges: list[Range] = []
    seen: list[datetime] = []
    for granularity, instants in steps:
        for instant in instants:
            planned = plan_range(instant, granularity, ranges)
            if planned is None:
                assert covering(ranges, instant) is not None
                continue
            start, end = planned
            assert start <= instant < end
            # Never wider than the aligned range, and made of whole hours.
            aligned = range_containing(instant, granularity)
            assert aligned[0] <= start and end <= aligned[1]
            assert (start - EPOCH) % H == timedelta(0) and (end - EPOCH) % H == timedelta(0)
            # It touches its neighbours or leaves a gap, never overlaps them.
            assert all(end <= s or e <= start for s, e in ranges)
            ranges = sorted_ranges([*ranges, planned])
        seen.extend(instants)
    for instant in seen:
        assert covering(ranges, instant) is not None
    names = [partition_name("cdr", s) for s, _ in ranges]
    assert len(names) == len(set(names))
