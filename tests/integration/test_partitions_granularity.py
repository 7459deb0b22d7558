"""Changing partition_granularity on the real PostgreSQL: no overlap, nothing refused.

Records are stored with one granularity, then with another, into the same and
neighbouring periods. Existing partitions keep their ranges, new ones fill the
gaps (clipped to their neighbours), every record lands in the partition whose
range holds its expiry, and a purge pass still drops what has wholly expired.
The ranges are read from the catalog (pg_partition_tree, pg_get_expr) and
compared with the purger's registry.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from datetime import datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from purger.partitions import PartitionManager, parent_table, partition_name, range_containing
from purger.policy import RetentionPolicy, load_policy
from purger.storage import Storage
from tests.integration.conftest import DEFAULT_POLICY, Services, cloned_database
from tests.integration.holds_support import make_purger
from tests.integration.purge_support import (
    DAY,
    audited_rows,
    envelope,
    midnight,
    registry,
    stored,
    utcnow,
)

pytestmark = pytest.mark.integration

H = timedelta(hours=1)
WEEK = timedelta(days=7)
CATEGORY = "cdr"

Span = tuple[datetime, datetime]


def catalog(url: str, category: str = CATEGORY) -> list[tuple[str, datetime, datetime]]:
    """The partitions of the category's parent in the catalog: name, start, end."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            r"""
            SELECT c.relname, b[1]::timestamptz, b[2]::timestamptz
            FROM pg_partition_tree(format('purger.%%I', %s::text)::regclass) t
            JOIN pg_class c ON c.oid = t.relid
            CROSS JOIN LATERAL regexp_match(
                pg_get_expr(c.relpartbound, c.oid), 'FROM \(''(.*)''\) TO \(''(.*)''\)'
            ) AS b
            WHERE t.level = 1
            ORDER BY 2
            """,
            (parent_table(category),),
        ).fetchall()
    return [(str(r[0]), r[1], r[2]) for r in rows]


def spans(url: str, near: datetime | None = None) -> list[Span]:
    """The catalog's partition ranges, in order; with ``near``, those within 30 days of it.

    Migrating the template database made one partition ahead, half a year away.
    """
    return [(s, e) for _, s, e in catalog(url) if near is None or abs(s - near) <= 30 * DAY]


def rows_by_partition(url: str, category: str = CATEGORY) -> list[tuple[str, datetime]]:
    """(partition holding it, expires_at) of every stored row."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT c.relname, r.expires_at FROM purger.{} r "
                "JOIN pg_class c ON c.oid = r.tableoid"
            ).format(sql.Identifier(parent_table(category)))
        ).fetchall()
    return [(str(r[0]), r[1]) for r in rows]


def check_partitions(
    url: str, expiries: list[datetime], near: datetime | None = None
) -> list[Span]:
    """Catalog and registry agree, ranges do not overlap, every row is where it belongs.

    ``expiries``: every expiry stored so far. Returns ``spans(url, near)``.
    """
    parts = catalog(url)
    assert parts, "no partition at all"
    for (_, _, end), (name, start, _) in itertools.pairwise(parts):
        assert end <= start, f"{name} overlaps the partition before it"
    for name, start, end in parts:
        assert start < end
        assert name == partition_name(CATEGORY, start)
    reg = registry(url, CATEGORY)
    assert [(n, s, e) for n, s, e, _, _ in reg] == parts
    assert all(state == "attached" for *_, state in reg)
    # Every row in the partition whose range holds its expiry; the registry counts it there.
    where = rows_by_partition(url)
    ranges = {n: (s, e) for n, s, e in parts}
    for name, expires_at in where:
        start, end = ranges[name]
        assert start <= expires_at < end, f"{expires_at} stored in {name} [{start}, {end})"
    assert sorted(e for _, e in where) == sorted(expiries)
    assert {n: c for n, _, _, c, _ in reg if c} == dict(Counter(n for n, _ in where))
    return spans(url, near)


def store(
    url: str, policy: RetentionPolicy, granularity: timedelta, expiries: list[datetime]
) -> None:
    """Store one record per expiry with ``granularity`` (a fresh worker); all must go in."""
    items = [envelope(e) for e in expiries]
    with Storage(url, policy, granularity, application="test") as storage:
        result = storage.store_batch(CATEGORY, items)
    assert result.inserted == len(items), result


def ahead() -> datetime:
    """A UTC midnight ten days from now: records expiring there are live."""
    return midnight(utcnow() + 10 * DAY)


# -- (1) P1D, then PT6H ----------------------------------------------------------------------
def test_finer_after_coarser_keeps_days_and_adds_quarters(
    database: str, policy: RetentionPolicy
) -> None:
    base = ahead()
    first = [base + 3 * H, base + DAY + 5 * H, base + DAY + 20 * H]
    store(database, policy, DAY, first)
    days = [(base, base + DAY), (base + DAY, base + 2 * DAY)]
    assert check_partitions(database, first, base) == days

    # The same days, the day before and the day after, in one batch and then another.
    second = [
        base + 13 * H,  # inside an existing day
        base + DAY + 23 * H,  # inside the other one
        base - DAY + 20 * H,  # the last quarter of the day before
        base + 2 * DAY,  # exactly where the last day ends
        base + 2 * DAY + 7 * H,
    ]
    store(database, policy, 6 * H, second)
    third = [base - DAY + 19 * H, base + 2 * DAY + 11 * H, base + 2 * DAY + 12 * H]
    store(database, policy, 6 * H, third)
    assert check_partitions(database, first + second + third, base) == [
        (base - DAY + 18 * H, base),
        *days,
        (base + 2 * DAY, base + 2 * DAY + 6 * H),
        (base + 2 * DAY + 6 * H, base + 2 * DAY + 12 * H),
        (base + 2 * DAY + 12 * H, base + 2 * DAY + 18 * H),
    ]


def test_ensure_ahead_covers_the_horizon_without_gaps_across_granularities(
    database: str, policy: RetentionPolicy
) -> None:
    category = policy.category(CATEGORY)
    now = utcnow() + 60 * DAY  # clear of the partition the template's migration made
    base = category.expires_at("", now)
    with psycopg.connect(database, autocommit=True) as conn:
        assert PartitionManager(DAY).ensure_ahead(conn, category, now, 2) == 3
        days = spans(database, base)
        assert days[0][0] <= base < days[-1][1]
        # PT6H for five days' worth of quarters, then P1D again for eight days.
        assert PartitionManager(6 * H).ensure_ahead(conn, category, now, 20) > 0
        after_quarters = spans(database, base)
        assert PartitionManager(DAY).ensure_ahead(conn, category, now, 8) > 0
        after_days = spans(database, base)
    assert set(days) <= set(after_quarters) <= set(after_days)
    assert after_quarters[-1][1] > base + 20 * 6 * H
    assert after_days[-1][1] > base + 8 * DAY
    for (_, end), (start, _) in itertools.pairwise(after_days):
        assert end == start, "a gap or an overlap between partitions made ahead"
    check_partitions(database, [], base)


def test_workers_with_different_granularities_racing_never_overlap(
    database: str, policy: RetentionPolicy
) -> None:
    # A rolling restart: old (P1D) and new (PT6H, P7D) workers create partitions
    # for the same instants at once; the DDL lock and the re-read under it decide.
    base = ahead()
    expiries = [base + k * 5 * H + timedelta(minutes=k) for k in range(30)]
    granularities = (DAY, 6 * H, WEEK)
    barrier = threading.Barrier(len(granularities))
    errors: list[BaseException] = []

    def worker(granularity: timedelta) -> None:
        try:
            with psycopg.connect(database, autocommit=True) as conn:
                manager = PartitionManager(granularity)
                barrier.wait(timeout=60)
                for expiry in expiries:
                    manager.ensure(conn, CATEGORY, [expiry])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(g,)) for g in granularities]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    store(database, policy, 12 * H, expiries)
    made = check_partitions(database, expiries, base)
    assert all(any(s <= e < end for s, end in made) for e in expiries)


# -- (2) PT6H, then P1D ----------------------------------------------------------------------
def test_coarser_after_finer_fills_the_rest_of_the_day(
    database: str, policy: RetentionPolicy
) -> None:
    base = ahead()
    first = [base + 7 * H, base + 19 * H]
    store(database, policy, 6 * H, first)
    quarters = [(base + 6 * H, base + 12 * H), (base + 18 * H, base + DAY)]
    assert check_partitions(database, first, base) == quarters

    second = [
        base + 1 * H,  # before the first quarter: [midnight, 06:00)
        base + 8 * H,  # inside an existing quarter
        base + 12 * H,  # between the quarters: [12:00, 18:00)
        base + 17 * H,
        base + DAY + 3 * H,  # the next whole day
        base - 2 * DAY,  # a whole day before
    ]
    store(database, policy, DAY, second)
    assert check_partitions(database, first + second, base) == [
        (base - 2 * DAY, base - DAY),
        (base, base + 6 * H),
        quarters[0],
        (base + 12 * H, base + 18 * H),
        quarters[1],
        (base + DAY, base + 2 * DAY),
    ]


# -- (3) P1D, then P7D -----------------------------------------------------------------------
def test_weeks_after_days_start_where_the_days_end(database: str, policy: RetentionPolicy) -> None:
    week = range_containing(utcnow() + 14 * DAY, WEEK)[0]  # a Thursday, P7D-aligned
    base = week + 2 * DAY  # the Saturday
    first = [base + 12 * H, base + DAY + 1 * H]
    store(database, policy, DAY, first)
    days = [(base, base + DAY), (base + DAY, base + 2 * DAY)]
    assert check_partitions(database, first, base) == days

    second = [
        base - DAY,  # the Friday, in the same week: from the week's start to the days
        base + 3 * DAY,  # later that week: from the days to the week's end
        base + DAY + 2 * H,  # inside an existing day
        week + 8 * DAY,  # the next week, whole
        week + 14 * DAY - H,
    ]
    store(database, policy, WEEK, second)
    assert check_partitions(database, first + second, base) == [
        (week, base),
        *days,
        (base + 2 * DAY, week + WEEK),
        (week + WEEK, week + 2 * WEEK),
    ]


# -- (4) any sequence of granularities -------------------------------------------------------
GRANULARITIES = (H, 6 * H, 12 * H, DAY, WEEK)
BASE = midnight(utcnow() + 20 * DAY)

_steps = st.lists(
    st.tuples(
        st.sampled_from(GRANULARITIES),
        # Instants in whole seconds over 30 days; a step is one worker's batch.
        st.lists(st.integers(0, 30 * 86400), min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=5,
)


@pytest.fixture(scope="module")
def property_policy() -> RetentionPolicy:
    """The default policy (its topics are not used here)."""
    return load_policy(DEFAULT_POLICY)


@pytest.mark.timeout(900)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=_steps)
def test_any_granularity_sequence_stores_everything_without_overlap(
    services: Services,
    template_database: str,
    property_policy: RetentionPolicy,
    steps: list[tuple[timedelta, list[int]]],
) -> None:
    with cloned_database(services, template_database, "purger_gp") as url:
        stored_so_far: list[datetime] = []
        kept = spans(url)
        for granularity, seconds in steps:
            expiries = sorted({BASE + timedelta(seconds=s) for s in seconds})
            store(url, property_policy, granularity, expiries)
            stored_so_far += expiries
            now = check_partitions(url, stored_so_far)
            # Existing partitions keep their ranges; every new one sits inside the
            # current granularity's aligned range around one of this step's expiries.
            assert set(kept) <= set(now)
            for start, end in set(now) - set(kept):
                assert any(
                    start <= e < end
                    and range_containing(e, granularity)[0] <= start
                    and end <= range_containing(e, granularity)[1]
                    for e in expiries
                ), (start, end, granularity)
            kept = now


# -- (5) a purge pass after a change ---------------------------------------------------------
def test_a_purge_after_a_change_drops_the_wholly_expired_partitions(
    database: str, policy: RetentionPolicy
) -> None:
    base = ahead()
    days = [base + d * DAY + h * H for d in range(3) for h in (1, 13)]
    store(database, policy, DAY, days)
    quarters = [base + DAY + 22 * H, base + 3 * DAY + 2 * H, base + 3 * DAY + 8 * H]
    quarters += [base + 3 * DAY + 9 * H, base + 3 * DAY + 20 * H]
    store(database, policy, 6 * H, quarters)
    everything = days + quarters
    check_partitions(database, everything)
    before = {n: (s, e, c) for n, s, e, c, _ in registry(database, CATEGORY)}

    t = base + 3 * DAY + 8 * H + 30 * timedelta(minutes=1)  # inside [06:00, 12:00) of day 3
    report = make_purger(database, policy).run_pass(categories=[CATEGORY], now=t)
    assert report.outcome == "success", report.error
    actions = {a.partition: a for a in report.categories[CATEGORY].actions}
    dropped = {n for n, (_, end, _) in before.items() if end <= t}
    assert dropped == {
        partition_name(CATEGORY, s) for s in (base, base + DAY, base + 2 * DAY, base + 3 * DAY)
    }
    assert {n for n, a in actions.items() if a.action == "drop"} == dropped
    assert all(actions[n].rows == before[n][2] for n in dropped)
    at_t = partition_name(CATEGORY, base + 3 * DAY + 6 * H)
    assert actions[at_t].action == "delete_rows" and actions[at_t].rows == 1

    expired = [e for e in everything if e <= t]
    assert len(expired) == 9
    assert report.categories[CATEGORY].rows_purged == len(expired) == audited_rows(database)
    assert sorted(r[3] for r in stored(database, CATEGORY).values()) == sorted(
        e for e in everything if e > t
    )
    assert [n for n, s, *_ in registry(database, CATEGORY) if s < base + 30 * DAY] == [
        at_t,
        partition_name(CATEGORY, base + 3 * DAY + 18 * H),
    ]
    # Storing goes on with the new granularity next to what is left.
    later = [base + 3 * DAY + 14 * H, base + 4 * DAY + 1 * H]
    store(database, policy, 6 * H, later)
    assert spans(database, base)[-3:] == [
        (base + 3 * DAY + 12 * H, base + 3 * DAY + 18 * H),
        (base + 3 * DAY + 18 * H, base + 4 * DAY),
        (base + 4 * DAY, base + 4 * DAY + 6 * H),
    ]
