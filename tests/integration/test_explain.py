"""``purger explain`` on the real PostgreSQL: a live, a held, a due and a destroyed record."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import yaml
from psycopg import sql

from purger import explain, policy_versions
from purger.partitions import parent_table, partition_name, range_containing
from purger.policy import RetentionPolicy, load_policy
from purger.records import Record
from purger.settings import Settings
from purger.storage import Envelope, Storage
from tests.integration.conftest import Services
from tests.integration.holds_support import DAY, Row, make_purger, place, release, seed
from tests.integration.support import purger_cli, settings_env

pytestmark = pytest.mark.integration

MSISDN = "+31612345678"
NATIONAL = "0612345678"


def _now() -> datetime:
    return datetime.now(UTC)


def _explain(url: str, policy: RetentionPolicy, record_id: str, **kw: Any) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        return explain.explain_record(conn, policy, "cdr", record_id, **kw)


def _cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    done = purger_cli("explain", *args, env=settings_env(settings))
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def _due_row(policy: RetentionPolicy, record_id: str, days_ago: int, **kw: Any) -> Row:
    """A cdr record whose expiry (by the policy: occurred_at + P6M) passed ``days_ago`` days ago."""
    occurred = range_containing(_now() - timedelta(days=183 + days_ago), DAY)[0] + timedelta(
        hours=12
    )
    expiry = policy.category("cdr").expires_at("t1", occurred)
    assert expiry < _now()
    return Row(record_id, expiry, occurred_at=occurred, **kw)


def test_a_live_record_shows_its_expiry_rule_and_policy_version(
    database: str, policy: RetentionPolicy, settings: Settings
) -> None:
    occurred = _now() - timedelta(days=10)
    expiry = policy.category("cdr").expires_at("t1", occurred)
    record = Record("live-1", occurred, "t1", {"msisdn": [MSISDN]}, {"text": "secret payload"})
    with Storage(database, policy) as storage:
        assert storage.store_batch("cdr", [Envelope(record, expiry)]).inserted == 1

    answer = _explain(database, policy, "live-1")

    assert answer["verdict"] == "live"
    assert (answer["stored"], answer["storage"], answer["due"]) == (True, "live", False)
    assert answer["expires_at"] == expiry.isoformat()
    assert answer["table"] == partition_name("cdr", range_containing(expiry, DAY)[0])
    rule = answer["rule"]
    assert (rule["rule_version"], rule["policy_version"], rule["retention"]) == (1, 1, "P6M")
    assert rule["policy_label"] == policy.version
    assert answer["holds"] == [] and answer["reasons"] == []
    assert answer["retag"]["pending"] is False

    code, out, _ = _cli(settings, "--category", "cdr", "--record-id", "live-1", "--json")
    assert code == 0
    assert json.loads(out)["verdict"] == "live"
    code, out, _ = _cli(settings, "--category", "cdr", "--record-id", "live-1")
    assert code == 0
    assert "record live-1 of cdr: LIVE" in out
    assert f"policy version 1 ({policy.version}" in out
    # Neither the subject nor the payload is ever part of an explanation.
    for text in (out, json.dumps(answer)):
        assert "612345678" not in text and "secret payload" not in text


def test_a_held_record_names_its_holds_live_and_in_held_storage(
    database: str, policy: RetentionPolicy, settings: Settings
) -> None:
    seed(database, "cdr", [_due_row(policy, "held-1", 5, subjects={"msisdn": [MSISDN]})])
    hold = place(database, policy, subjects={"msisdn": [NATIONAL]}).hold

    answer = _explain(database, policy, "held-1")
    assert (answer["verdict"], answer["storage"], answer["due"]) == ("held", "live", True)
    assert [h["id"] for h in answer["holds"]] == [hold.id]
    assert answer["holds"][0]["case_ref"] == "CASE-1"
    (reason,) = answer["reasons"]
    assert (reason["reason"], reason["hold_ids"]) == ("held", [hold.id])

    report = make_purger(database, policy).run_pass(categories=["cdr"])
    assert report.outcome == "success", report.error
    answer = _explain(database, policy, "held-1")
    assert (answer["verdict"], answer["storage"], answer["table"]) == ("held", "held", "held_cdr")

    # By subject identifier (as the operator writes it): the record, never the subject.
    code, out, _ = _cli(settings, "--msisdn", NATIONAL, "--json")
    assert code == 0, out
    result = json.loads(out)
    assert result["count"] == 1
    assert [(r["record_id"], r["verdict"]) for r in result["records"]] == [("held-1", "held")]
    assert "612345678" not in out
    code, out, _ = _cli(settings, "--msisdn", NATIONAL, "--category", "cdr")
    assert code == 0 and "record held-1 of cdr: HELD" in out and "612345678" not in out

    # Released: due, and the pass that kept it ran while it was held.
    release(database, hold.id)
    answer = _explain(database, policy, "held-1")
    assert (answer["verdict"], answer["holds"]) == ("due", [])
    (reason,) = answer["reasons"]
    assert reason["reason"] == "not_due_at_last_pass"
    assert reason["last_pass"]["pass_id"] == report.pass_id


def test_a_due_record_says_why_it_is_still_here(
    database: str, policy: RetentionPolicy, settings: Settings
) -> None:
    row = _due_row(policy, "due-1", 3)
    seed(database, "cdr", [row])

    (reason,) = _explain(database, policy, "due-1")["reasons"]
    assert reason["reason"] == "no_pass_yet"

    # A pass ran, but before the record fell due.
    early = make_purger(database, policy).run_pass(now=row.expires_at - timedelta(hours=1))
    answer = _explain(database, policy, "due-1")
    assert (answer["verdict"], answer["due"]) == ("due", True)
    assert answer["due_since"] == row.expires_at.isoformat()
    (reason,) = answer["reasons"]
    assert reason["reason"] == "pass_not_run_since_due"
    assert reason["last_pass"]["pass_id"] == early.pass_id

    # The pass fails for the category: its partition was detached by hand.
    pname = partition_name("cdr", range_containing(row.expires_at, DAY)[0])
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE purger.{} DETACH PARTITION purger.{}").format(
                sql.Identifier(parent_table("cdr")), sql.Identifier(pname)
            )
        )
    failed = make_purger(database, policy).run_pass(categories=["cdr"])
    assert failed.categories["cdr"].outcome == "failure"
    answer = _explain(database, policy, "due-1")
    assert (answer["verdict"], answer["table"]) == ("due", pname)
    (reason,) = answer["reasons"]
    assert reason["reason"] == "pass_failing"
    last = reason["last_pass"]
    assert (last["pass_id"], last["category_outcome"]) == (failed.pass_id, "failure")
    assert pname in last["category_error"]

    code, out, _ = _cli(settings, "--category", "cdr", "--record-id", "due-1")
    assert code == 0
    assert "record due-1 of cdr: DUE" in out and "the purge is failing" in out and pname in out


def test_a_destroyed_record_is_found_in_the_audit_trail_without_identifiers(
    database: str, policy: RetentionPolicy, settings: Settings
) -> None:
    dropped = _due_row(policy, "gone-1", 10, subjects={"msisdn": [MSISDN]})
    seed(database, "cdr", [dropped])
    report = make_purger(database, policy).run_pass(categories=["cdr"])
    assert report.categories["cdr"].partitions_dropped == 1

    answer = _explain(database, policy, "gone-1")
    assert (answer["stored"], answer["verdict"]) == (False, "not_stored")
    (latest,) = answer["latest_destructions"]
    assert (latest["kind"], latest["pass_id"]) == ("partition_dropped", report.pass_id)

    occurred = dropped.occurred.isoformat()
    answer = _explain(database, policy, "gone-1", occurred_at=dropped.occurred, tenant="t1")
    assert answer["verdict"] == "destroyed"
    assert answer["expiries"] == [{"rule_version": 1, "expires_at": dropped.expires_at.isoformat()}]
    (entry,) = answer["destroyed_by"]
    assert (entry["kind"], entry["pass_id"]) == ("partition_dropped", report.pass_id)
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT seq, recorded_at FROM purger.audit_log WHERE kind = 'partition_dropped'"
        ).fetchone()
    assert row is not None
    assert (entry["seq"], entry["recorded_at"]) == (row[0], row[1].astimezone(UTC).isoformat())

    # A batch of deleted rows (the partition that contains the pass's instant): [from, to].
    deleted = _due_row(policy, "gone-2", 20)
    seed(database, "cdr", [deleted])
    second = make_purger(database, policy).run_pass(now=deleted.expires_at + timedelta(minutes=1))
    answer = _explain(database, policy, "gone-2", occurred_at=deleted.occurred, tenant="t1")
    (entry,) = answer["destroyed_by"]
    assert (entry["kind"], entry["pass_id"]) == ("rows_deleted", second.pass_id)

    args = ("--category", "cdr", "--record-id", "gone-1", "--occurred-at", occurred)
    code, out, _ = _cli(settings, *args, "--tenant", "t1")
    assert code == 0
    assert "record gone-1 of cdr: DESTROYED" in out
    assert f"pass {report.pass_id}" in out and "612345678" not in out
    code, out, _ = _cli(settings, *args, "--tenant", "t1", "--json")
    assert json.loads(out)["destroyed_by"][0]["seq"] == row[0]
    # Nothing audited for an expiry no pass reached.
    future = (_now() - timedelta(days=30)).isoformat()
    code, out, _ = _cli(settings, "--category", "cdr", "--record-id", "x", "--occurred-at", future)
    assert code == 0 and "NOT STORED" in out and "expiry lies ahead" in out


def test_a_pending_retag_to_a_shorter_retention_makes_a_record_due(
    database: str, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    occurred = _now() - timedelta(days=40)
    record = Record("old-rules", occurred, "t1", {}, {})
    with Storage(database, policy) as storage:
        storage.store_batch(
            "cdr", [Envelope(record, policy.category("cdr").expires_at("t1", occurred))]
        )
    data = yaml.safe_load(policy_file.read_text())
    data["version"] = "shorter-cdr"
    data["categories"]["cdr"]["retention"] = "P1M"
    shorter = tmp_path / "shorter.yaml"
    shorter.write_text(yaml.safe_dump(data, sort_keys=False))
    with psycopg.connect(database, autocommit=True) as conn:
        policy_versions.apply(conn, load_policy(shorter), applied_by="tester")

    answer = _explain(database, policy, "old-rules")

    assert (answer["verdict"], answer["due"], answer["due_since"]) == ("due", True, None)
    assert answer["rule"]["rule_version"] == 1
    retag = answer["retag"]
    assert (retag["pending"], retag["current_rule_version"]) == (True, 2)
    assert retag["due_under_current_rules"] is True
    (reason,) = answer["reasons"]
    assert reason["reason"] == "retag_pending"


def test_mistakes_are_one_line_and_exit_2(database: str, settings: Settings) -> None:
    code, _, err = _cli(settings, "--category", "nope", "--record-id", "x")
    assert code == 2 and "unknown category 'nope'" in err
    code, _, err = _cli(settings, "--record-id", "x")
    assert code == 2 and "--record-id needs --category" in err
    code, _, err = _cli(
        settings, "--category", "cdr", "--record-id", "x", "--occurred-at", "yesterday"
    )
    assert code == 2 and "--occurred-at" in err
    code, _, err = _cli(
        settings,
        "--category",
        "call_recordings",
        "--record-id",
        "x",
        "--occurred-at",
        "2026-01-01T00:00:00Z",
    )
    assert code == 2 and "--tenant" in err
    code, _, err = _cli(settings, "--msisdn", "not a number")
    assert code == 2 and "not a number" not in err


@pytest.fixture
def runtime_url(services: Services, database: str, policy: RetentionPolicy) -> Iterator[str]:
    """A login role that is only a member of purger_runtime (what pods connect as)."""
    role = f"purger_rt_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'rt'").format(sql.Identifier(role)))
    try:
        with Storage(database, policy) as owner:
            owner.migrate(partitions_ahead=0, runtime_user=role)
        parts = urlsplit(database)
        yield urlunsplit(parts._replace(netloc=f"{role}:rt@{parts.hostname}:{parts.port}"))
    finally:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(services.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_the_runtime_role_may_explain(
    database: str, runtime_url: str, policy: RetentionPolicy
) -> None:
    row = _due_row(policy, "rt-1", 4, subjects={"msisdn": [MSISDN]})
    seed(database, "cdr", [row])
    place(database, policy, subjects={"msisdn": [MSISDN]})
    assert _explain(runtime_url, policy, "rt-1")["verdict"] == "held"
    gone = _explain(runtime_url, policy, "nothing", occurred_at=row.occurred, tenant="t1")
    assert gone["verdict"] == "not_stored"
    with psycopg.connect(runtime_url, autocommit=True) as conn:
        result = explain.explain_subject(conn, policy, [f"msisdn:{MSISDN}"])
    assert [r["record_id"] for r in result["records"]] == ["rt-1"]
