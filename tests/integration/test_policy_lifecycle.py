"""Policy changes reach stored data: one row per record, re-tagging, bounds, retirement."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg import sql

from purger import policy_versions
from purger.durations import parse_duration
from purger.errors import PolicyError, RecordRefused
from purger.metrics import Metrics
from purger.partitions import keys_table
from purger.policy import RetentionPolicy
from purger.scheduler import PurgeScheduler
from purger.settings import Settings
from purger.storage import Storage
from tests.integration.holds_support import (
    audit_kinds,
    make_purger,
    place,
    relation_exists,
    release,
)
from tests.integration.policy_support import (
    changed_policy,
    keys,
    record,
    registry_counts_match,
    retag_all,
    rows,
    store,
)
from tests.integration.support import purger_cli, settings_env

HELD = "+31687654321"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _apply(url: str, policy: RetentionPolicy, **options: bool) -> None:
    with Storage(url, policy) as storage:
        storage.migrate(partitions_ahead=0, applied_by="tester", **options)


def test_a_redelivery_after_a_policy_change_leaves_one_row_per_record(
    database: str, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    now = _now()
    occurred = {f"c{i}": now - timedelta(days=30 + i) for i in range(20)}
    items = [record(policy, "cookie_stats", rid, t) for rid, t in occurred.items()]
    assert store(database, policy, "cookie_stats", items).inserted == 20

    shorter = changed_policy(policy_file, tmp_path / "v2.yaml", cookie_stats={"retention": "P6M"})
    _apply(database, shorter)
    # A rolling update redelivers the uncommitted batch to pods with the new policy,
    # while pods with the old one still run: neither stores a record a second time.
    for running in (shorter, policy):
        again = [record(running, "cookie_stats", rid, t) for rid, t in occurred.items()]
        result = store(database, running, "cookie_stats", again)
        assert (result.inserted, result.duplicates) == (0, 20)
    # A producer's re-send with a corrected occurred_at: the first copy wins.
    corrected = record(shorter, "cookie_stats", "c0", now - timedelta(days=2))
    result = store(database, shorter, "cookie_stats", [corrected])
    assert (result.inserted, result.duplicates) == (0, 1)
    # Two copies of one record in one batch: the first by offset is stored.
    first = record(shorter, "cookie_stats", "twin", now - timedelta(days=3))
    second = record(shorter, "cookie_stats", "twin", now - timedelta(days=4))
    result = store(database, shorter, "cookie_stats", [first, second])
    assert (result.inserted, result.duplicates) == (1, 1)

    stored = rows(database, "cookie_stats")
    assert len(stored) == 21
    assert stored["c0"][0] == occurred["c0"]
    assert stored["twin"][0] == first.record.occurred_at
    assert keys(database, "cookie_stats") == {rid: r[1] for rid, r in stored.items()}
    registry_counts_match(database, "cookie_stats")


def test_a_row_stored_without_its_key_is_not_doubled_and_its_batch_is_stored(
    database: str, policy: RetentionPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    now = _now()
    items = [record(policy, "cookie_stats", f"k{i}", now - timedelta(days=3 + i)) for i in range(6)]
    assert store(database, policy, "cookie_stats", items[:3]).inserted == 3
    # k0 and k2 lose their keys, as a row seeded past the purger has none.
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DELETE FROM purger.{} WHERE record_id = ANY(%s)").format(
                sql.Identifier(keys_table("cookie_stats"))
            ),
            (["k0", "k2"],),
        )
    with (
        caplog.at_level(logging.WARNING, logger="purger.storage"),
        Storage(database, policy) as storage,
    ):
        # Unguarded, the insert meets k0's row; the batch is stored again, guarded.
        result = storage.store_batch("cookie_stats", [items[0], items[1], items[3], items[4]])
        assert (result.inserted, result.duplicates) == (2, 2)
        # The category stays guarded: k2 is skipped at once.
        result = storage.store_batch("cookie_stats", [items[2], items[5]])
        assert (result.inserted, result.duplicates) == (1, 1)
    warned = [r for r in caplog.records if "no key in the registry" in r.getMessage()]
    assert len(warned) == 1
    stored = rows(database, "cookie_stats")
    assert sorted(stored) == [f"k{i}" for i in range(6)]
    assert keys(database, "cookie_stats") == {rid: r[1] for rid, r in stored.items()}
    registry_counts_match(database, "cookie_stats")


def test_a_process_running_another_policy_tags_records_by_the_applied_one(
    database: str, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    # A pod whose policy file was refused (or not applied yet) must not decide expiries:
    # here it would keep interception records six days instead of six months.
    typo = changed_policy(
        policy_file,
        tmp_path / "typo.yaml",
        interception={"retention": "P6D", "minimum_retention": None},
    )
    occurred = _now() - timedelta(days=10)
    item = record(typo, "interception", "i1", occurred)
    assert item.expires_at < _now()
    result = store(database, typo, "interception", [item])
    assert (result.inserted, result.expired_on_arrival) == (1, 0)
    (stored,) = rows(database, "interception").values()
    assert stored[1] == parse_duration("P6M").add_to(occurred)
    assert stored[2] == 1


def test_an_expiry_past_the_calendar_by_the_applied_rules_is_one_refused_record(
    database: str, policy_file: Path, tmp_path: Path
) -> None:
    # The process's own rules (one month) give a representable expiry; the applied
    # ones (six months) do not: the record is refused by its position, so the sink
    # dead-letters it alone, never a retried batch nor a traceback.
    short = changed_policy(policy_file, tmp_path / "short.yaml", cdr={"retention": "P1M"})
    ordinary = record(short, "cdr", "ordinary", _now() - timedelta(days=3))
    edge = record(short, "cdr", "edge", datetime(9999, 9, 1, tzinfo=UTC))
    with pytest.raises(RecordRefused, match="out of range") as refused:
        store(database, short, "cdr", [ordinary, edge])
    assert (refused.value.category, refused.value.index) == ("cdr", 1)
    assert "9999" not in str(refused.value)
    assert store(database, short, "cdr", [ordinary]).inserted == 1
    (stored,) = rows(database, "cdr").values()
    assert stored[1] == parse_duration("P6M").add_to(ordinary.record.occurred_at)


def test_a_shortened_retention_makes_old_records_due_and_the_next_pass_removes_them(
    database: str, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    now = _now()
    old = {f"old{i}": now - timedelta(days=240 + i) for i in range(10)}
    recent = {f"new{i}": now - timedelta(days=20 + i) for i in range(5)}
    items = [
        record(policy, "cookie_stats", rid, t, msisdn=HELD)
        if rid in ("old0", "old1")
        else record(policy, "cookie_stats", rid, t)
        for rid, t in {**old, **recent}.items()
    ]
    assert store(database, policy, "cookie_stats", items).inserted == 15
    hold = place(database, policy, subjects={"msisdn": [HELD]}).hold

    shorter = changed_policy(policy_file, tmp_path / "v2.yaml", cookie_stats={"retention": "P6M"})
    with psycopg.connect(database) as conn:
        plan = policy_versions.plan(conn, shorter)
        (diff,) = policy_versions.diff(conn, shorter, now)["cookie_stats"]
    assert not plan.refusals
    assert {c.category: c.status for c in plan.changes}["cookie_stats"] == "changed"
    assert (diff.tenant, diff.records, diff.changed, diff.earlier, diff.due_now) == (
        "t1",
        15,
        15,
        15,
        10,
    )
    _apply(database, shorter)
    (applied,) = audit_kinds(database, "policy_applied")[-1:]
    change = applied["categories"]["cookie_stats"]
    assert (change["from"]["retention"], change["to"]["retention"]) == ("P1Y", "P6M")
    assert applied["applied_by"] == "tester"

    report = retag_all(database, "cookie_stats", batch_size=4)
    assert (report.retagged, report.finished) == (15, True)
    stored = rows(database, "cookie_stats")
    for rid, (occurred, expires, version, _tenant) in stored.items():
        assert expires == parse_duration("P6M").add_to(occurred), rid
        assert version == 2
    assert keys(database, "cookie_stats") == {rid: r[1] for rid, r in stored.items()}
    registry_counts_match(database, "cookie_stats")
    assert audit_kinds(database, "records_retagged")[-1]["records"] == 15

    purger = make_purger(database, shorter)
    result = purger.run_pass()
    assert result.outcome == "success", result.error
    assert set(rows(database, "cookie_stats")) == set(recent)
    assert set(rows(database, "cookie_stats", "held")) == {"old0", "old1"}
    # The drops left the destroyed records' keys; they are forgotten after the pass,
    # the held records' keys are kept.
    assert purger.forget_keys(result) == 8
    assert set(keys(database, "cookie_stats")) == set(recent) | {"old0", "old1"}
    release(database, hold.id)
    after = purger.run_pass()
    assert not rows(database, "cookie_stats", "held")
    assert purger.forget_keys(after) == 2
    assert set(keys(database, "cookie_stats")) == set(recent)


def test_a_lengthened_retention_moves_records_later_tenant_by_tenant(
    database: str, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    now = _now()
    items = [
        record(policy, "call_recordings", f"r{i}", now - timedelta(days=60 + i), tenant=tenant)
        for i, tenant in enumerate(["t1", "t1", "callcenter-noord", "other"])
    ]
    store(database, policy, "call_recordings", items)
    before = rows(database, "call_recordings")
    longer = changed_policy(
        policy_file,
        tmp_path / "v2.yaml",
        call_recordings={"tenant_overrides": {"callcenter-noord": "P2Y", "other": "P180D"}},
    )
    _apply(database, longer)
    assert retag_all(database, "call_recordings").retagged == 4
    after = rows(database, "call_recordings")
    assert after["r0"][1] == before["r0"][1] and after["r1"][1] == before["r1"][1]
    assert after["r2"][1] == parse_duration("P2Y").add_to(after["r2"][0])
    assert after["r3"][1] == after["r3"][0] + timedelta(days=180)
    assert all(r[2] == 2 for r in after.values())
    registry_counts_match(database, "call_recordings")
    assert make_purger(database, longer).run_pass().rows_purged == 0


def test_a_policy_under_a_minimum_is_refused_and_bounds_change_only_with_the_flag(
    database: str, settings: Settings, policy_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        PolicyError, match=r"categories\.interception: retention P6D is under minimum_retention P6M"
    ):
        changed_policy(policy_file, tmp_path / "typo.yaml", interception={"retention": "P6D"})

    loose = changed_policy(
        policy_file,
        tmp_path / "loose.yaml",
        interception={"retention": "P6D", "minimum_retention": None},
    )
    with pytest.raises(PolicyError, match=r"category interception: changes its bounds"):
        _apply(database, loose)
    env = {**settings_env(settings), "PURGER_POLICY_FILE": str(tmp_path / "loose.yaml")}
    refused = purger_cli("migrate", env=env)
    assert refused.returncode == 2, refused.stderr
    assert "minimum_retention P6M -> unset" in refused.stderr
    assert "--allow-bound-change" in refused.stderr
    assert "Traceback" not in refused.stderr

    allowed = purger_cli("migrate", "--allow-bound-change", "--by", "dpo", env=env)
    assert allowed.returncode == 0, allowed.stderr
    entry = audit_kinds(settings.conninfo(), "policy_applied")[-1]
    assert entry["applied_by"] == "dpo"
    assert entry["categories"]["interception"]["bounds_changed"] is True


def test_the_applied_maximum_binds_the_next_policy(
    database: str, policy_file: Path, tmp_path: Path
) -> None:
    capped = changed_policy(policy_file, tmp_path / "capped.yaml", cdr={"maximum_retention": "P6M"})
    _apply(database, capped, allow_bound_change=True)
    with pytest.raises(PolicyError, match=r"retention P7M is over maximum_retention P6M"):
        changed_policy(tmp_path / "capped.yaml", tmp_path / "longer.yaml", cdr={"retention": "P7M"})
    # Dropping the ceiling to get there is a change of a bound: refused without the flag.
    uncapped = changed_policy(
        tmp_path / "capped.yaml",
        tmp_path / "uncapped.yaml",
        cdr={"retention": "P7M", "maximum_retention": None},
    )
    with pytest.raises(PolicyError, match=r"maximum_retention P6M -> unset"):
        _apply(database, uncapped)


def test_a_removed_category_is_refused_then_retired_destroyed_and_dropped(
    database: str, settings: Settings, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    now = _now()
    items = [
        record(policy, "cookie_stats", "k0", now - timedelta(days=3), msisdn=HELD),
        record(policy, "cookie_stats", "k1", now - timedelta(days=3)),
        record(policy, "cookie_stats", "k2", now - timedelta(days=300)),
    ]
    store(database, policy, "cookie_stats", items)
    hold = place(database, policy, subjects={"msisdn": [HELD]}).hold
    without = changed_policy(policy_file, tmp_path / "without.yaml", cookie_stats=None)
    with pytest.raises(PolicyError, match=r"purger policy retire cookie_stats"):
        _apply(database, without)

    env = settings_env(settings)
    retired = purger_cli("policy", "retire", "cookie_stats", "--by", "dpo", "--json", env=env)
    assert retired.returncode == 0, retired.stderr
    again = purger_cli("policy", "retire", "cookie_stats", env=env)
    assert again.returncode != 0 and "already retired" in again.stderr
    assert "Traceback" not in again.stderr
    _apply(database, without)
    (entry,) = audit_kinds(database, "category_retired")
    assert (entry["records"], entry["retired_by"]) == (3, "dpo")

    # A pod still running the old policy: arriving records are not kept.
    late = store(database, policy, "cookie_stats", [record(policy, "cookie_stats", "k3", now)])
    assert (late.inserted, late.expired_on_arrival) == (0, 1)

    report = make_purger(database, without).run_pass()
    assert report.outcome == "success", report.error
    assert report.categories["cookie_stats"].rows_purged == 2
    assert set(rows(database, "cookie_stats", "held")) == {"k0"}
    assert relation_exists(database, "records_cookie_stats")
    release(database, hold.id)
    make_purger(database, without).run_pass()
    for table in ("records_cookie_stats", "held_cookie_stats", "keys_cookie_stats"):
        assert not relation_exists(database, table), table
    assert len(audit_kinds(database, "category_dropped")) == 1
    after = store(database, policy, "cookie_stats", [record(policy, "cookie_stats", "k4", now)])
    assert (after.inserted, after.expired_on_arrival) == (0, 1)
    # The next passes have nothing more to do with it.
    assert "cookie_stats" not in make_purger(database, without).run_pass().categories


def test_policy_gauges_show_the_version_and_the_records_over_retention(
    database: str, settings: Settings, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    now = _now()
    store(
        database,
        policy,
        "cookie_stats",
        [record(policy, "cookie_stats", f"g{i}", now - timedelta(days=100 * i)) for i in range(3)],
    )
    shorter = changed_policy(policy_file, tmp_path / "v2.yaml", cookie_stats={"retention": "P3M"})
    _apply(database, shorter)
    registry = CollectorRegistry()
    metrics = Metrics(registry, list(shorter.categories), ingest=False)
    purger = make_purger(database, shorter)
    purger.metrics = metrics
    scheduler = PurgeScheduler(
        purger, metrics, "0 3 * * *", misfire_grace_seconds=60, overdue_refresh_seconds=60
    )
    scheduler.refresh_policy()
    over = registry.get_sample_value("purger_records_over_retention", {"category": "cookie_stats"})
    assert over == 3
    with psycopg.connect(database) as conn:
        current = policy_versions.current(conn)
    assert current is not None
    assert (
        registry.get_sample_value(
            "purger_policy_version_info",
            {
                "version": str(current["version"]),
                "label": shorter.version,
                "digest": shorter.digest,
            },
        )
        == 1
    )
    report = scheduler.tick()
    assert report is not None and report.outcome == "success", report
    retagged = registry.get_sample_value(
        "purger_records_retagged_total", {"category": "cookie_stats"}
    )
    assert retagged == 3
    scheduler.refresh_policy()
    assert (
        registry.get_sample_value("purger_records_over_retention", {"category": "cookie_stats"})
        == 0
    )
    # The shortened retention made two of them due: this very tick destroyed them.
    assert set(rows(database, "cookie_stats")) == {"g0"}
    scheduler.leadership.release()


def test_the_cli_diffs_applies_shows_and_retags_a_policy(
    database: str, settings: Settings, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    now = _now()
    store(
        database,
        policy,
        "cookie_stats",
        [record(policy, "cookie_stats", f"d{i}", now - timedelta(days=100 * i)) for i in range(4)],
    )
    changed_policy(policy_file, tmp_path / "v2.yaml", cookie_stats={"retention": "P6M"})
    env = {**settings_env(settings), "PURGER_POLICY_FILE": str(tmp_path / "v2.yaml")}

    diff = purger_cli("policy", "diff", "--json", env=env)
    assert diff.returncode == 0, diff.stderr
    planned = json.loads(diff.stdout)
    assert planned["refusals"] == []
    cookie = planned["categories"]["cookie_stats"]
    assert cookie["status"] == "changed"
    assert cookie["records"]["t1"] == {
        "records": 4,
        "expiry_changes": 4,
        "earlier": 4,
        "due_at_once": 2,
    }
    assert planned["categories"]["cdr"]["status"] == "unchanged"

    applied = purger_cli("policy", "apply", "--by", "dpo", "--json", env=env)
    assert applied.returncode == 0, applied.stderr
    shown = json.loads(purger_cli("policy", "show", "--json", env=env).stdout)
    assert shown["applied"]["version"] == json.loads(applied.stdout)["version"]
    assert shown["applied"]["applied_by"] == "dpo"
    assert shown["categories"]["cookie_stats"]["records_to_retag"] == 4
    retag = purger_cli("policy", "retag", "--category", "cookie_stats", "--json", env=env)
    assert retag.returncode == 0, retag.stderr
    assert json.loads(retag.stdout)["cookie_stats"]["retagged"] == 4
    shown = json.loads(purger_cli("policy", "show", "--json", env=env).stdout)
    assert shown["categories"]["cookie_stats"]["records_to_retag"] == 0
    unknown = purger_cli("policy", "retag", "--category", "nope", env=env)
    assert unknown.returncode == 2 and "unknown category 'nope'" in unknown.stderr
