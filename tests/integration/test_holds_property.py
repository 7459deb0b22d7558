"""The purge invariant with legal holds, as a property on the real PostgreSQL.

Random records around partition boundaries, random holds and releases, random
arrivals of expired records and random pass instants. After every step the
database holds exactly what a plain model says: no record an active hold covers
is ever destroyed, and no uncovered record expired at T survives a pass at T.
The model's idea of coverage is written here, independently of the purger's hold modules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from purger import audit
from purger.partitions import range_containing
from purger.policy import RetentionPolicy, load_policy
from purger.records import Record
from purger.storage import Envelope, Storage
from tests.integration.conftest import DEFAULT_POLICY, Services, cloned_database
from tests.integration.holds_support import (
    DAY,
    Row,
    make_purger,
    place,
    release,
    seed,
    where_stored,
)

pytestmark = pytest.mark.integration

CATEGORIES = ("cdr", "cookie_stats")
TENANTS = ("a", "b")
# Stored form -> how an operator may write it.
MSISDNS = {
    "+31610000001": ("0610000001", "+31610000001", "06 1000 0001"),
    "+31610000002": ("0610000002", "+31 6 10000002"),
    "+31610000003": ("+31610000003",),
}
EMAILS = {"a@x.nl": ("A@X.NL", "a@x.nl"), "b@x.nl": ("b@X.nl",)}
BASE = range_containing(datetime.now(UTC) - timedelta(days=60), DAY)[0]
MS = timedelta(milliseconds=1)
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Rec:
    """A record of the model."""

    record_id: str
    category: str
    expires_at: datetime
    occurred_at: datetime
    tenant: str
    msisdn: str | None
    email: str | None

    def row(self) -> Row:
        """As seeded."""
        subjects: dict[str, list[str]] = {}
        if self.msisdn:
            subjects["msisdn"] = [self.msisdn]
        if self.email:
            subjects["email"] = [self.email]
        return Row(self.record_id, self.expires_at, self.tenant, self.occurred_at, subjects)


@dataclass(frozen=True)
class Scope:
    """A hold's scope as generated: stored forms plus how the operator wrote them."""

    categories: tuple[str, ...] | None
    msisdns: tuple[tuple[str, str], ...]  # (stored, written)
    emails: tuple[tuple[str, str], ...]
    tenant: str | None
    occurred_from: datetime | None
    occurred_to: datetime | None

    def covers(self, rec: Rec) -> bool:
        """The model's coverage rule (the issue's semantics, written out again)."""
        if self.categories is not None and rec.category not in self.categories:
            return False
        if self.msisdns or self.emails:
            ids = {("msisdn", m) for m, _ in self.msisdns} | {("email", e) for e, _ in self.emails}
            if ("msisdn", rec.msisdn) not in ids and ("email", rec.email) not in ids:
                return False
        if self.tenant is not None and rec.tenant != self.tenant:
            return False
        if self.occurred_from is not None and rec.occurred_at < self.occurred_from:
            return False
        return self.occurred_to is None or rec.occurred_at <= self.occurred_to

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``build_scope``."""
        subjects = {}
        if self.msisdns:
            subjects["msisdn"] = [w for _, w in self.msisdns]
        if self.emails:
            subjects["email"] = [w for _, w in self.emails]
        return {
            "categories": self.categories or (),
            "subjects": subjects,
            "tenant": self.tenant,
            "occurred_from": self.occurred_from,
            "occurred_to": self.occurred_to,
            "all_records": not (subjects or self.tenant),
        }


def _instant(day: int, ms: int) -> datetime:
    return BASE + day * DAY + ms * MS


# Expiries and pass instants crowd around partition boundaries (one millisecond
# either side and exactly on them), with some anywhere in between.
_offsets = st.one_of(st.sampled_from([-1, 0, 1]), st.integers(-DAY_MS + 1, DAY_MS - 1))
_occurred = st.integers(0, 3).map(lambda d: BASE - timedelta(days=90) + d * DAY)


@st.composite
def records(draw: st.DrawFn, prefix: str, n_max: int) -> list[Rec]:
    n = draw(st.integers(0, n_max) | st.just(n_max))
    out = []
    for i in range(n):
        out.append(
            Rec(
                record_id=f"{prefix}{i}",
                category=draw(st.sampled_from(CATEGORIES)),
                expires_at=_instant(draw(st.integers(0, 3)), draw(_offsets)),
                occurred_at=draw(_occurred),
                tenant=draw(st.sampled_from(TENANTS)),
                msisdn=draw(st.sampled_from([None, *MSISDNS])),
                email=draw(st.sampled_from([None, *EMAILS])),
            )
        )
    return out


@st.composite
def scopes(draw: st.DrawFn) -> Scope:
    kind = draw(st.sampled_from(("subject", "subject", "tenant", "all")))
    msisdns: tuple[tuple[str, str], ...] = ()
    emails: tuple[tuple[str, str], ...] = ()
    if kind == "subject":
        for stored in draw(st.lists(st.sampled_from(list(MSISDNS)), max_size=2, unique=True)):
            msisdns += ((stored, draw(st.sampled_from(MSISDNS[stored]))),)
        for stored in draw(st.lists(st.sampled_from(list(EMAILS)), max_size=2, unique=True)):
            emails += ((stored, draw(st.sampled_from(EMAILS[stored]))),)
        if not msisdns and not emails:
            msisdns = (("+31610000001", "0610000001"),)
    tenant = draw(st.sampled_from(TENANTS)) if kind == "tenant" or draw(st.booleans()) else None
    if kind == "all":
        tenant = None
    window = draw(st.one_of(st.none(), st.tuples(st.integers(0, 3), st.integers(0, 3))))
    start = end = None
    if window is not None:
        start = BASE - timedelta(days=90) + min(window) * DAY
        end = BASE - timedelta(days=90) + max(window) * DAY
        start = draw(st.sampled_from([start, None]))
        end = draw(st.sampled_from([end, None]))
    cats = draw(
        st.one_of(
            st.none(), st.lists(st.sampled_from(CATEGORIES), min_size=1, max_size=2, unique=True)
        )
    )
    return Scope(tuple(sorted(cats)) if cats else None, msisdns, emails, tenant, start, end)


_place = st.tuples(st.just("place"), scopes())
_pass = st.tuples(st.just("pass"), st.tuples(st.integers(-1, 4), _offsets))
_operations = st.lists(
    st.one_of(
        _place,
        _place,
        _place,
        _pass,
        _pass,
        st.tuples(st.just("release"), st.integers(0, 5)),
        st.tuples(st.just("arrive"), records("late", 3)),
    ),
    min_size=4,
    max_size=12,
).map(
    # Every example ends with a pass after all expiries: each partition is dropped.
    lambda ops: [*ops, ("pass", (5, 0))]
)


@pytest.fixture(scope="module")
def property_policy() -> RetentionPolicy:
    """The default policy (its topics are not used here)."""
    return load_policy(DEFAULT_POLICY)


def _check(url: str, model: dict[str, Rec], step: str) -> None:
    stored: dict[str, str] = {}
    for category in CATEGORIES:
        for rid, where in where_stored(url, category).items():
            stored[rid] = where
    assert set(stored) == set(model), (
        f"after {step}: destroyed {sorted(set(model) - set(stored))}, "
        f"kept {sorted(set(stored) - set(model))}"
    )


# A failure shrinks on the real database, which takes longer than the default timeout.
@pytest.mark.timeout(900)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(initial=records("r", 20), operations=_operations)
def test_no_covered_record_is_destroyed_and_no_uncovered_expired_record_survives(
    services: Services,
    template_database: str,
    property_policy: RetentionPolicy,
    initial: list[Rec],
    operations: list[tuple[str, Any]],
) -> None:
    policy = property_policy
    with cloned_database(services, template_database, "purger_hp") as url:
        for category in CATEGORIES:
            seed(url, category, [r.row() for r in initial if r.category == category])
        model = {r.record_id: r for r in initial}
        holds: list[tuple[int, Scope, bool]] = []  # id, scope, active
        purger = make_purger(url, policy)
        last_t = BASE - DAY
        for step, (op, arg) in enumerate(operations):
            active = [s for _, s, on in holds if on]
            if op == "place":
                placement = place(url, policy, f"P{step}", **arg.arguments())
                holds.append((placement.hold.id, arg, True))
                for category in CATEGORIES:
                    expected = sum(
                        1 for r in model.values() if r.category == category and arg.covers(r)
                    )
                    if arg.categories is None or category in arg.categories:
                        assert placement.preserved[category] == expected, (step, category)
                        assert placement.destroyed_while_placing[category] == 0
            elif op == "release" and holds:
                index = arg % len(holds)
                hold_id, scope, on = holds[index]
                if on:
                    release(url, hold_id)
                    holds[index] = (hold_id, scope, False)
            elif op == "pass":
                day, ms = arg
                t = max(_instant(day, ms), last_t)
                last_t = t
                report = purger.run_pass(categories=list(CATEGORIES), now=t)
                assert report.outcome in ("success", "nothing_to_do"), report.error
                for rid, r in list(model.items()):
                    if r.expires_at <= t and not any(s.covers(r) for s in active):
                        del model[rid]
            elif op == "arrive":
                # Every arrival is long expired by the database clock: kept only if covered.
                batch: dict[str, list[Envelope]] = {c: [] for c in CATEGORIES}
                kept = 0
                for drawn in arg:
                    rec = dataclasses.replace(drawn, record_id=f"{drawn.record_id}-{step}")
                    subjects = rec.row().subjects
                    record = Record(rec.record_id, rec.occurred_at, rec.tenant, subjects, {})
                    batch[rec.category].append(Envelope(record, rec.expires_at))
                    if any(s.covers(rec) for s in active):
                        model[rec.record_id] = rec
                        kept += 1
                with Storage(url, policy) as storage:
                    results = storage.store(batch)
                assert sum(r.held for r in results.values()) == kept
                assert sum(r.expired_on_arrival for r in results.values()) == len(arg) - kept
            _check(url, model, f"step {step} ({op})")
        with psycopg.connect(url, autocommit=True) as conn:
            assert audit.verify(conn).ok
