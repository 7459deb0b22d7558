"""The invariant, property-based, on the real PostgreSQL.

After a pass at instant T: no record with ``expires_at <= T`` remains and every
record with ``expires_at > T`` is there, unchanged. Records and instants are
generated around P1D partition boundaries (exactly on them, a microsecond either
side, and anywhere in the day), including records that expire exactly at T, over
several passes with increasing T and records stored between passes. Each pass is
preceded by a dry run at the same instant, which must report the same counts.

Everything lies in the future of the database clock, so that ``Storage.store``
(which refuses records already expired on arrival) stores every record and
creates partitions exactly as in production; ``run_pass(now=T)`` then plays a
pass at that future instant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from psycopg import sql

from purger import audit
from purger.policy import RetentionPolicy
from purger.purge_report import OUTCOME_NOTHING, OUTCOME_SUCCESS
from purger.settings import Settings
from purger.storage import Storage
from tests.integration.purge_support import (
    DAY,
    audit_entries,
    envelope,
    make_purger,
    midnight,
    registry,
    stored,
    utcnow,
)

pytestmark = pytest.mark.integration

CATEGORIES = ("cdr", "call_recordings")
US = timedelta(microseconds=1)
DAY_US = 86_400_000_000
DAYS = 4  # the generated instants span this many partitions (plus one before)

# Offsets within a day: the boundary itself and its neighbours are drawn often.
_in_day = st.one_of(
    st.sampled_from([0, 1, DAY_US - 1, 1_000_000, DAY_US - 1_000_000, DAY_US // 2]),
    st.integers(0, DAY_US - 1),
)
# An instant: (day, microseconds into the day), relative to a future base midnight.
_instant = st.tuples(st.integers(-1, DAYS), _in_day)


@dataclass(frozen=True)
class Scenario:
    """Records to store first, then passes, each with the records stored after it."""

    initial: list[tuple[str, tuple[int, int]]]
    passes: list[tuple[tuple[int, int], list[tuple[str, tuple[int, int]]]]]


_records = st.lists(st.tuples(st.sampled_from(CATEGORIES), _instant), max_size=16)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """Records, 1-3 purge instants (non-decreasing; some equal to a record's expiry)."""
    initial = draw(st.lists(st.tuples(st.sampled_from(CATEGORIES), _instant), max_size=24))
    instants = draw(st.lists(_instant, min_size=1, max_size=3))
    if initial and draw(st.booleans()):
        # T exactly at a stored record's expiry.
        instants[0] = draw(st.sampled_from(initial))[1]
    instants.sort()
    passes = [(t, draw(_records)) for t in instants]
    return Scenario(initial, passes)


def _reset(url: str) -> None:
    """Drop every partition and empty the registry (the audit trail stays: append-only)."""
    with psycopg.connect(url, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relname LIKE 'records\\_%' AND c.relkind = 'r' "
                "UNION SELECT partition_name FROM purger.partitions"
            )
        ]
        with conn.transaction():
            for name in names:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS purger.{}").format(sql.Identifier(name)))
            conn.execute("DELETE FROM purger.partitions")


def _counts(report: Any) -> dict[str, tuple[int, int, int]]:
    return {
        n: (c.partitions_dropped, c.rows_purged, c.contended) for n, c in report.categories.items()
    }


@hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
# Always played: a record expiring exactly at T, with T on a partition boundary
# (the partition starting at T holds it) and with T inside a day; then a record
# stored, after the pass, into a partition the pass dropped.
@example(
    Scenario(
        initial=[("cdr", (0, 0)), ("cdr", (0, 1)), ("cdr", (-1, DAY_US - 1))],
        passes=[((0, 0), [("call_recordings", (0, 0))]), ((1, 0), [("cdr", (0, 5))])],
    )
)
@example(
    # The first batch of call_recordings arrives with cdr records whose partition
    # the pass dropped: the store is retried and must still find its staging table.
    Scenario(
        initial=[("cdr", (0, 0))],
        passes=[((1, 0), [("call_recordings", (0, 3)), ("cdr", (0, 3))]), ((1, 0), [])],
    )
)
@example(
    Scenario(
        initial=[("cdr", (1, 4321)), ("call_recordings", (1, 4322)), ("cdr", (1, 4320))],
        passes=[((1, 4321), [("cdr", (0, 7)), ("call_recordings", (0, 7))]), ((2, 0), [])],
    )
)
def test_no_expired_record_survives_a_pass_and_no_live_record_is_touched(
    settings: Settings, policy: RetentionPolicy, scenario: Scenario
) -> None:
    url = settings.conninfo()
    _reset(url)
    base = midnight(utcnow()) + 30 * DAY
    purger = make_purger(settings, policy, delete_batch_size=5)

    def at(instant: tuple[int, int]) -> datetime:
        day, micros = instant
        return base + day * DAY + micros * US

    def store(batch: list[tuple[str, tuple[int, int]]]) -> None:
        by_category: dict[str, list[Any]] = {}
        for category, instant in batch:
            by_category.setdefault(category, []).append(envelope(at(instant)))
        results = storage.store(by_category)
        for category, items in by_category.items():
            assert results[category].inserted == len(items), results

    with (
        Storage(url, policy, DAY, application="test") as storage,
        psycopg.connect(url, autocommit=True) as db,
    ):
        store(scenario.initial)
        for instant, arriving in scenario.passes:
            t = at(instant)
            before = {c: stored(db, c) for c in CATEGORIES}
            expired = {c: {r for r, row in before[c].items() if row[3] <= t} for c in CATEGORIES}
            whole = {c: sum(1 for p in registry(db, c) if p[2] <= t) for c in CATEGORIES}

            dry = purger.run_pass(categories=list(CATEGORIES), dry_run=True, now=t)
            assert dry.outcome in (OUTCOME_SUCCESS, OUTCOME_NOTHING), dry.error
            assert {c: stored(db, c) for c in CATEGORIES} == before, "a dry run changed data"

            report = purger.run_pass(categories=list(CATEGORIES), now=t)
            assert report.outcome in (OUTCOME_SUCCESS, OUTCOME_NOTHING), report.error
            assert report.instant == t
            for c in CATEGORIES:
                after = stored(db, c)
                left = sorted(r for r, row in after.items() if row[3] <= t)
                assert not left, f"{c}: expired at {t} yet still stored: {left}"
                survivors = {r: row for r, row in before[c].items() if row[3] > t}
                assert after == survivors, f"{c}: a record expiring after {t} was touched"
                assert report.categories[c].rows_purged == len(expired[c])
                assert report.categories[c].partitions_dropped == whole[c]
                # The registry's counts are what drops report: they must stay exact.
                assert sum(p[3] for p in registry(db, c)) == len(after)
            assert _counts(dry) == _counts(report), "dry run and real run disagree"
            audited = sum(
                int(e["content"]["rows"])
                for e in audit_entries(db)
                if e["content"].get("pass_id") == report.pass_id and "rows" in e["content"]
            )
            assert audited == report.rows_purged
            store(arriving)
        assert audit.verify(db).ok
