"""Property: after every pass, no unheld record is past the expiry the current policy gives it.

Random sequences of ingests (by pods running the applied policy or an older file, with
redeliveries), policy changes (retentions and tenant overrides up and down), legal holds
placed and released, and passes (each preceded by the re-tagging the scheduler runs first),
through the real storage, re-tagging and purge code on a fresh PostgreSQL database.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from purger import applied_rules, audit
from purger.policy import RetentionPolicy, load_policy
from purger.storage import Storage
from tests.integration.conftest import DEFAULT_POLICY, Services, cloned_database
from tests.integration.holds_support import make_purger, place, release
from tests.integration.policy_support import record, retag_all, rows

CATEGORIES = ("cookie_stats", "call_recordings")
TENANTS = ("t1", "callcenter-noord")
MSISDNS = ("+31611111111", "+31622222222", "+31633333333")
RETENTIONS = ("P30D", "P90D", "P6M", "P1Y")
_files = itertools.count()

_ingest = st.tuples(
    st.just("ingest"),
    st.lists(
        st.tuples(
            st.sampled_from(CATEGORIES),
            st.integers(0, 500),  # days before now
            st.sampled_from(TENANTS),
            st.sampled_from(MSISDNS),
        ),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),  # ingested by a pod still running the previous policy file
)
_change = st.tuples(
    st.just("policy"),
    st.sampled_from(CATEGORIES),
    # The category's retention and callcenter-noord's override.
    st.tuples(st.sampled_from(RETENTIONS), st.sampled_from(RETENTIONS)),
)
_hold = st.tuples(st.just("hold"), st.sampled_from(MSISDNS), st.none())
_release = st.tuples(st.just("release"), st.integers(0, 5), st.none())
_pass = st.tuples(st.just("pass"), st.none(), st.none())
_redeliver = st.tuples(st.just("redeliver"), st.integers(0, 50), st.none())
_operations = st.lists(
    st.one_of(_ingest, _change, _hold, _release, _pass, _redeliver, _pass),
    min_size=2,
    max_size=10,
)


def _policy_file(tmp: Path, base: dict[str, Any], rules: dict[str, tuple[str, str]]) -> Path:
    data = yaml.safe_load(yaml.safe_dump(base))
    for name, (retention, override) in rules.items():
        data["categories"][name]["retention"] = retention
        data["categories"][name]["tenant_overrides"] = {"callcenter-noord": override}
    path = tmp / f"policy-{next(_files)}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _check(url: str, t: datetime, where: str) -> None:
    with psycopg.connect(url) as conn:
        current = {c: applied_rules.read(conn, c) for c in CATEGORIES}
    for category in CATEGORIES:
        rules = current[category]
        assert rules is not None
        for rid, (occurred, expires, version, tenant) in rows(url, category).items():
            due = rules.expires_at(tenant, occurred)
            assert expires == due, f"{where}: {category} {rid} not re-tagged"
            assert version == rules.rule_version, f"{where}: {category} {rid}"
            assert due > t, f"{where}: {category} {rid} past its expiry {due} at {t}"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=_operations)
def test_after_every_pass_no_unheld_record_is_past_its_current_expiry(
    services: Services, template_database: str, tmp_path: Path, operations: list[Any]
) -> None:
    base = yaml.safe_load(DEFAULT_POLICY.read_text())
    rules = {c: ("P1Y" if c == "cookie_stats" else "P90D", "P1Y") for c in CATEGORIES}
    current: RetentionPolicy = load_policy(_policy_file(tmp_path, base, rules))
    previous = current
    now = datetime.now(UTC).replace(microsecond=0)
    sent: list[tuple[str, Any]] = []
    holds: list[int] = []
    with cloned_database(services, template_database, "purger_pp") as url:
        with Storage(url, current) as storage:
            storage.migrate(partitions_ahead=0, applied_by="property")
        for step, (op, a, b) in enumerate(operations):
            if op == "ingest":
                running = previous if b else current
                batch: dict[str, list[Any]] = {c: [] for c in CATEGORIES}
                for n, (category, days, tenant, msisdn) in enumerate(a):
                    item = record(
                        running,
                        category,
                        f"s{step}-{n}",
                        now - timedelta(days=days, hours=n),
                        tenant=tenant,
                        msisdn=msisdn,
                    )
                    batch[category].append(item)
                    sent.append((category, item))
                with Storage(url, running) as storage:
                    storage.store(batch)
            elif op == "redeliver" and sent:
                category, item = sent[a % len(sent)]
                # Redelivered to a process running the current file, which decodes the
                # message again and tags it by its own rules.
                rec = item.record
                tagged = current.category(category).expires_at(rec.tenant, rec.occurred_at)
                item = dataclasses.replace(item, expires_at=tagged)
                with Storage(url, current) as storage:
                    result = storage.store_batch(category, [item])
                assert result.inserted == 0, f"step {step}: a redelivery was stored again"
            elif op == "policy":
                rules = {**rules, a: b}
                previous, current = current, load_policy(_policy_file(tmp_path, base, rules))
                with Storage(url, current) as storage:
                    storage.migrate(partitions_ahead=0, applied_by="property")
            elif op == "hold":
                holds.append(place(url, current, f"P{step}", subjects={"msisdn": [a]}).hold.id)
            elif op == "release" and holds:
                release(url, holds.pop(a % len(holds)))
            elif op == "pass":
                for category in CATEGORIES:
                    retag_all(url, category, batch_size=3)
                report = make_purger(url, current).run_pass(categories=list(CATEGORIES))
                assert report.outcome in ("success", "nothing_to_do"), report.error
                _check(url, report.instant, f"step {step}")
        with psycopg.connect(url, autocommit=True) as conn:
            assert audit.verify(conn).ok
