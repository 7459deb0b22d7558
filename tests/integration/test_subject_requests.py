"""Data-subject requests on the real PostgreSQL: erasure, restriction, access, the register."""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from purger import audit
from purger.metrics import Metrics
from purger.partitions import partition_name
from purger.policy import RetentionPolicy
from purger.settings import Settings
from purger.stats import Stats
from tests.integration.holds_support import (
    DAY,
    Row,
    audit_kinds,
    make_purger,
    place,
    release,
    seed,
    where_stored,
)
from tests.integration.purge_support import midnight
from tests.integration.requests_support import (
    EMAIL,
    KEYS,
    MSISDN,
    SUBJECT,
    erase,
    future,
    identifiers_left,
    now,
    open_request,
)
from tests.integration.support import purger_cli, settings_env

pytestmark = pytest.mark.integration

OTHER = {"msisdn": ["+31687654321"]}


def _chain_ok(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        result = audit.verify(conn)
    assert result.ok, result.problem


def _registry_counts_exact(url: str) -> None:
    """The partition registry's counts are what the partitions hold (what passes report)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT partition_name, row_count FROM purger.partitions "
            "WHERE to_regclass(format('purger.%I', partition_name)) IS NOT NULL"
        ).fetchall()
        for name, count in rows:
            actual = conn.execute(f'SELECT count(*) FROM purger."{name}"').fetchone()
            assert actual == (count,), name


def _seed_everywhere(url: str) -> None:
    for category in ("cdr", "call_recordings", "interception", "cookie_stats"):
        seed(
            url,
            category,
            [
                Row(f"{category}-1", future(20), subjects=SUBJECT),
                Row(f"{category}-2", future(40), subjects={**SUBJECT, "email": [EMAIL]}),
                Row(f"{category}-other", future(20), subjects=OTHER),
            ],
        )


def test_erasure_across_all_four_categories_keeps_interception_and_reports_why(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    env = settings_env(settings)
    _seed_everywhere(url)
    opened = purger_cli(
        "request", "open", "--type", "erasure", "--msisdn", "06 12 34 56 78",
        "--received", now().date().isoformat(), "--ref", "DSR-1", "--by", "dpo", "--json",
        env=env,
    )  # fmt: skip
    assert opened.returncode == 0, opened.stderr
    request_id = json.loads(opened.stdout)["id"]

    dry = purger_cli("request", "erase", str(request_id), "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert {n: c["erased"] for n, c in plan["categories"].items()} == {
        "cdr": 2,
        "call_recordings": 2,
        "interception": 0,
        "cookie_stats": 2,
    }
    kept = plan["categories"]["interception"]
    assert kept["kept_legal_obligation"] == 2
    assert "legal obligation" in kept["reasons"][0] and "17(3)(b)" in kept["reasons"][0]
    assert len(where_stored(url, "cdr")) == 3, "a dry run destroys nothing"
    text = purger_cli("request", "erase", str(request_id), "--dry-run", env=env)
    assert "would erase" in text.stdout and "17(3)(b)" in text.stdout

    done = purger_cli("request", "erase", str(request_id), "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["erased"] == 6 and report["kept"] == 2
    for category in ("cdr", "call_recordings", "cookie_stats"):
        assert where_stored(url, category) == {f"{category}-other": "live"}
    assert set(where_stored(url, "interception")) == {
        "interception-1",
        "interception-2",
        "interception-other",
    }
    (entry,) = audit_kinds(url, "subject_erased")
    assert entry["request_id"] == request_id and entry["deferred"] is False
    assert entry["categories"]["interception"]["kept_legal_obligation"] == 2
    assert entry["categories"]["cdr"]["erased"] == 2
    vacuumed = [
        e for e in audit_kinds(url, "partition_vacuumed") if e["pass_id"] == entry["pass_id"]
    ]
    assert sum(e["rows_deleted"] for e in vacuumed) == 6
    # Only the open request (and the statutory records) still know the subject.
    assert identifiers_left(url, [MSISDN, "612345678", EMAIL]) == ["subject_requests"]
    _registry_counts_exact(url)

    # The interception records stay: closing documents them as the exception.
    closed = purger_cli(
        "request", "close", str(request_id), "--reason", "erased except statutory records",
        "--by", "dpo", "--json", env=env,
    )  # fmt: skip
    assert closed.returncode == 0, closed.stderr
    assert json.loads(closed.stdout)["exceptions"] == {
        "interception": {"reason": "legal_obligation", "records": 2}
    }
    (entry,) = audit_kinds(url, "subject_request_closed")
    assert entry["exceptions"]["interception"]["records"] == 2 and entry["in_time"] is True
    assert identifiers_left(url, [MSISDN, "612345678", EMAIL]) == []
    _chain_ok(url)


def test_erasure_of_a_held_subject_waits_for_the_release_then_a_pass_completes_it(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    env = settings_env(settings)
    day = midnight(now() - timedelta(days=3))
    seed(
        url,
        "cdr",
        [
            Row("expired", day + timedelta(hours=2), subjects=SUBJECT),
            Row("live", future(30), subjects=SUBJECT),
            Row("other", future(30), subjects=OTHER),
        ],
    )
    hold = place(url, policy, subjects={"msisdn": [MSISDN]}, categories=["cdr"]).hold
    purger = make_purger(url, policy)
    assert purger.run_pass(categories=["cdr"]).outcome == "success"
    assert where_stored(url, "cdr") == {"expired": "held", "live": "live", "other": "live"}
    request = open_request(url, "erasure")

    report = erase(url, policy, request.id)

    cdr = report.categories["cdr"]
    assert (cdr.erased, cdr.kept_legal_hold, cdr.hold_ids) == (0, 2, [hold.id])
    assert any("legal hold" in r for r in cdr.reasons())
    assert where_stored(url, "cdr") == {"expired": "held", "live": "live", "other": "live"}
    # The request stays open while its records are held.
    refused = purger_cli(
        "request", "close", str(request.id), "--reason", "done", "--by", "dpo", env=env
    )
    assert refused.returncode == 1 and "--with-exceptions" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    # A pass while the hold is active erases nothing of the subject.
    purger.run_pass(categories=["cdr"])
    assert where_stored(url, "cdr") == {"expired": "held", "live": "live", "other": "live"}

    release(url, hold.id)
    after = purger.run_pass(categories=["cdr"])

    assert after.outcome in ("success", "nothing_to_do"), after.error
    assert where_stored(url, "cdr") == {"other": "live"}
    deferred = [e for e in audit_kinds(url, "subject_erased") if e["deferred"]]
    assert [e["pass_id"] for e in deferred] == [after.pass_id]
    assert deferred[0]["categories"]["cdr"]["erased"] == 1  # the expired one went as held purge
    closed = purger_cli(
        "request", "close", str(request.id), "--reason", "erased", "--by", "dpo", "--json", env=env
    )
    assert closed.returncode == 0, closed.stderr
    assert json.loads(closed.stdout)["exceptions"] == {}
    _registry_counts_exact(url)
    _chain_ok(url)


def test_restriction_blocks_export_audited_and_keeps_nothing_past_expiry(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    env = settings_env(settings)
    day = midnight(now() - timedelta(days=3))
    seed(
        url,
        "cdr",
        [
            Row("expired", day + timedelta(hours=1), subjects=SUBJECT),
            Row("live", future(30), subjects={**SUBJECT, "email": [EMAIL]}),
        ],
    )
    seed(url, "cookie_stats", [Row("other", future(30), subjects=OTHER)])
    restricted = open_request(url, "restriction", ref="DSR-R")

    # Looked up by another identifier of the subject: still restricted.
    refused = purger_cli("subject", "export", "--email", EMAIL.upper(), env=env)
    assert refused.returncode == 1, refused.stdout
    assert refused.stdout == "" and "restricted" in refused.stderr
    assert refused.stderr.count("\n") == 1 and EMAIL not in refused.stderr.lower()
    assert "612345678" not in refused.stderr
    allowed = purger_cli(
        "subject", "export", "--msisdn", MSISDN, "--purpose", "legal-claims", env=env
    )
    assert allowed.returncode == 0, allowed.stderr
    assert {r["record_id"] for r in json.loads(allowed.stdout)["records"]} == {"expired", "live"}
    bad = purger_cli("subject", "export", "--msisdn", MSISDN, "--purpose", "marketing", env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    unrelated = purger_cli("subject", "export", "--msisdn", OTHER["msisdn"][0], env=env)
    assert unrelated.returncode == 0, unrelated.stderr
    reads = audit_kinds(url, "restricted_read")
    assert [(e["outcome"], e["purpose"], e["request_ids"]) for e in reads] == [
        ("refused", None, [restricted.id]),
        ("allowed", "legal_claims", [restricted.id]),
    ]
    # The records looked up (by e-mail: the one that carries it) that the restriction covers.
    assert reads[0]["records"] == {"cdr": 1} and reads[0]["surface"] == "subject export"
    # An access request of the same subject is refused the same way.
    access = open_request(url, "access", ref="DSR-A")
    answer = purger_cli("request", "export", str(access.id), "--by", "dpo", env=env)
    assert answer.returncode == 1 and "restricted" in answer.stderr

    # Restriction keeps nothing: the expired record goes at the next pass.
    report = make_purger(url, policy).run_pass(categories=["cdr"])
    assert report.outcome == "success", report.error
    assert where_stored(url, "cdr") == {"live": "live"}
    with psycopg.connect(url) as conn:
        names = {r[0] for r in conn.execute("SELECT partition_name FROM purger.partitions")}
    assert partition_name("cdr", day) not in names
    # Lifting it (closing the request) lets the export through again.
    closed = purger_cli(
        "request", "close", str(restricted.id), "--reason", "accuracy confirmed", "--by", "dpo",
        env=env,
    )  # fmt: skip
    assert closed.returncode == 0, closed.stderr
    assert purger_cli("subject", "export", "--msisdn", MSISDN, env=env).returncode == 0
    _chain_ok(url)


def test_an_access_request_hands_over_json_and_csv_with_purposes_and_destruction_dates(
    settings: Settings, policy: RetentionPolicy, tmp_path: Path
) -> None:
    url = settings.conninfo()
    env = settings_env(settings)
    _seed_everywhere(url)
    hold = place(url, policy, "CASE-7", subjects={"email": [EMAIL]}, categories=["cdr"]).hold
    request = open_request(url, "access", keys=[*KEYS, f"email:{EMAIL}"])

    as_json = purger_cli("request", "export", str(request.id), "--by", "dpo", env=env)
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["count"] == 8
    assert body["categories"]["interception"]["legal_basis"].startswith("legal obligation")
    assert body["categories"]["call_recordings"]["tenant_retention"] == {"callcenter-noord": "P1Y"}
    records = {r["record_id"]: r for r in body["records"]}
    assert records["cdr-1"]["planned_destruction"] == records["cdr-1"]["expires_at"]
    assert records["cdr-1"]["retention"] == "P6M" and records["cdr-1"]["purpose"]
    assert (
        records["cdr-2"]["holds"] == [hold.id] and records["cdr-2"]["planned_destruction"] is None
    )
    out = tmp_path / "answer.csv"
    as_csv = purger_cli(
        "request", "export", str(request.id), "--by", "dpo", "--format", "csv",
        "--output", str(out), env=env,
    )  # fmt: skip
    assert as_csv.returncode == 0, as_csv.stderr
    assert os.stat(out).st_mode & 0o777 == 0o600
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 8 and {r["legal_basis"] for r in rows} >= {"performance of the contract"}
    exports = audit_kinds(url, "subject_exported")
    assert [(e["format"], sum(e["records"].values())) for e in exports] == [("json", 8), ("csv", 8)]
    wrong = purger_cli(
        "request", "export", str(open_request(url, "erasure").id), "--by", "x", env=env
    )
    assert wrong.returncode == 1 and "erasure request" in wrong.stderr


def test_an_overdue_request_fires_its_metric_and_extensions_follow_art_12_3(
    database: str, policy: RetentionPolicy
) -> None:
    today = now().date()
    late = open_request(database, "erasure", received=today - timedelta(days=40), ref="LATE")
    fresh = open_request(database, "access", received=today - timedelta(days=3), ref="FRESH")
    open_request(database, "access", received=today, ref="NEW")
    metrics = Metrics(CollectorRegistry(), list(policy.categories), ingest=False)

    def sample(name: str, kind: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"type": kind})

    Stats(database, policy, metrics).overdue()

    assert sample("purger_subject_requests_overdue", "erasure") == 1
    assert sample("purger_subject_requests_open", "erasure") == 1
    assert sample("purger_subject_requests_open", "access") == 2
    assert sample("purger_subject_requests_overdue", "access") == 0
    assert sample("purger_subject_requests_overdue", "restriction") == 0

    with psycopg.connect(database, autocommit=True) as conn:
        from purger import subject_requests  # noqa: PLC0415 - keeps the test's imports short

        with pytest.raises(subject_requests.InvalidRequest, match="first month"):
            subject_requests.extend(conn, late.id, reason="complex", extended_by="dpo")
        extended = subject_requests.extend(
            conn, fresh.id, reason="complex request", extended_by="dpo"
        )
        assert extended.deadline == subject_requests.extended_due_on(fresh.received_on)
        with pytest.raises(subject_requests.InvalidRequest, match="already"):
            subject_requests.extend(conn, fresh.id, reason="again", extended_by="dpo")
        subject_requests.close(conn, late.id, reason="answered late", closed_by="dpo")
    Stats(database, policy, metrics).overdue()
    assert sample("purger_subject_requests_overdue", "erasure") == 0
    (closed,) = audit_kinds(database, "subject_request_closed")
    assert closed["in_time"] is False
    assert [e["request_id"] for e in audit_kinds(database, "subject_request_extended")] == [
        fresh.id
    ]


def test_a_closed_request_keeps_no_identifier_in_any_table_or_audit_entry(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    env = settings_env(settings)
    seed(url, "cdr", [Row("live", future(30), subjects={**SUBJECT, "email": [EMAIL]})])
    ids = []
    for kind in ("erasure", "restriction", "access"):
        opened = purger_cli(
            "request", "open", "--type", kind, "--msisdn", MSISDN, "--email", EMAIL,
            "--received", now().date().isoformat(), "--ref", f"DSR-{kind}", "--by", "dpo",
            "--json", env=env,
        )  # fmt: skip
        assert opened.returncode == 0, opened.stderr
        ids.append(json.loads(opened.stdout)["id"])
    assert purger_cli("request", "export", str(ids[2]), "--by", "dpo",
                      "--purpose", "consent", env=env).returncode == 0  # fmt: skip
    assert purger_cli("request", "erase", str(ids[0]), env=env).returncode == 0
    needles = [MSISDN, "612345678", EMAIL]
    assert identifiers_left(url, needles) == ["subject_requests"], "open requests know them"

    for request_id in ids:
        closed = purger_cli(
            "request", "close", str(request_id), "--reason", "answered", "--by", "dpo", env=env
        )
        assert closed.returncode == 0, closed.stderr

    assert identifiers_left(url, needles) == []
    shown = purger_cli("request", "show", str(ids[0]), "--json", env=env)
    body = json.loads(shown.stdout)
    assert body["subject_keys"] is None and body["selectors"] == {"email": 1, "msisdn": 1}
    listed = purger_cli("request", "list", env=env)
    assert listed.returncode == 0 and MSISDN not in listed.stdout
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in (
            "UPDATE purger.subject_requests SET subject_keys = ARRAY['msisdn:+31612345678'] "
            "WHERE id = %(id)s",
            "DELETE FROM purger.subject_requests WHERE id = %(id)s",
            "TRUNCATE purger.subject_requests",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement, {"id": ids[0]} if "%(id)s" in statement else None)
    again = purger_cli("request", "erase", str(ids[0]), env=env)
    assert again.returncode == 1 and "closed" in again.stderr
    _chain_ok(url)


def test_the_cli_refuses_mistakes_in_one_line_without_echoing_identifiers(
    settings: Settings,
) -> None:
    env = settings_env(settings)
    base = ["request", "open", "--type", "erasure", "--by", "dpo"]
    tomorrow = (now() + 2 * DAY).date().isoformat()
    today = now().date().isoformat()
    for args in (
        ["--msisdn", "not-a-phone-0612", "--received", today, "--ref", "R"],
        ["--received", today, "--ref", "R"],
        ["--msisdn", MSISDN, "--received", "yesterday", "--ref", "R"],
        ["--msisdn", MSISDN, "--received", tomorrow, "--ref", "R"],
        ["--msisdn", MSISDN, "--received", today, "--ref", "about 0612345678"],
    ):
        bad = purger_cli(*base, *args, env=env)
        assert bad.returncode == 2, (args, bad.stderr)
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
        assert "not-a-phone" not in bad.stderr and "612345678" not in bad.stderr
    for args in (
        ["show", "999999"],
        ["erase", "999999"],
        ["close", "999999", "--reason", "x", "--by", "y"],
    ):
        missing = purger_cli("request", *args, env=env)
        assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
