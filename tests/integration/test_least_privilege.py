"""Least privilege (migration 0006) and the audit heads anchored outside PostgreSQL.

A login role that is only a member of ``purger_runtime`` ingests, purges and places
holds, and cannot touch the audit trail's triggers or rewrite its entries. The owner
can (it owns the tables); ``audit verify --anchors`` catches that rewrite.
"""

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
from kafka import KafkaAdminClient
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.types.json import Jsonb

from consumers.service import PLUGIN
from purger import audit, hold_registry, hold_scope
from purger.policy import RetentionPolicy
from purger.purge import PASS_LOCK
from purger.purge_report import COMPLETED
from purger.queries import query
from purger.storage import Storage
from tests.integration.conftest import Services, SettingsFactory
from tests.integration.policy_support import changed_policy, record
from tests.integration.purge_support import (
    DAY,
    envelope,
    make_purger,
    midnight,
    purge_env,
    seed_backdated,
)
from tests.integration.support import free_port, purger_cli, settings_env

pytestmark = pytest.mark.integration

PASSWORD = "runtime-secret"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def runtime_url(services: Services, database: str, policy: RetentionPolicy) -> Iterator[str]:
    """A login role of its own, made a member of purger_runtime by the migrator."""
    role = f"purger_rt_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(services.database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(PASSWORD)
            )
        )
    try:
        # What the migrate hook Job does with PURGER_DATABASE_RUNTIME_USER.
        with Storage(database, policy) as owner:
            owner.migrate(partitions_ahead=0, runtime_user=role)
        parts = urlsplit(database)
        yield urlunsplit(parts._replace(netloc=f"{role}:{PASSWORD}@{parts.hostname}:{parts.port}"))
    finally:
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(services.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _owner(url: str, table: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass(%s)",
            (f"purger.{table}",),
        ).fetchone()
    assert row is not None, table
    return str(row[0])


def test_the_runtime_role_ingests_purges_and_holds(
    runtime_url: str, database: str, make_settings: SettingsFactory, policy: RetentionPolicy
) -> None:
    now = _utcnow()
    # Ingest through Storage: the far expiry needs a partition nobody created yet.
    with Storage(runtime_url, policy) as storage:
        result = storage.store_batch("cdr", [envelope(now + 400 * DAY)])
    assert result.inserted == 1
    with psycopg.connect(runtime_url) as conn:
        assert conn.execute("SELECT current_user").fetchone() != ("purger",)
        created = conn.execute(
            "SELECT partition_name FROM purger.partitions "
            "WHERE category = 'cdr' AND range_start > %s",
            (now + 300 * DAY,),
        ).fetchall()
    assert len(created) == 1
    assert _owner(database, created[0][0]) == "purger_runtime"
    assert _owner(database, "records_cdr") == "purger_runtime"
    assert _owner(database, "audit_log") != "purger_runtime"

    # Holds: placed and released with the runtime role's credentials.
    with psycopg.connect(runtime_url, autocommit=True) as conn:
        placed = hold_registry.place(
            conn,
            policy,
            hold_scope.build_scope(policy, tenant="nobody"),
            case_ref="CASE-LP",
            reason="court order",
            placed_by="tester",
        )
        hold_registry.release(conn, placed.hold.id, released_by="tester", reason="closed")

    # A pass: one whole partition dropped, the expired rows of today's deleted, vacuumed.
    seed_backdated(runtime_url, "cdr", [midnight(now) - 5 * DAY, now - timedelta(minutes=5)])
    settings = make_settings(database_url=runtime_url)
    report = make_purger(settings, policy).run_pass(categories=["cdr"])
    assert report.outcome in COMPLETED, report.as_dict()
    cdr = report.categories["cdr"]
    assert (cdr.partitions_dropped, cdr.rows_purged) == (1, 2), cdr.as_dict()
    with psycopg.connect(runtime_url, autocommit=True) as conn:
        assert audit.verify(conn).ok


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE purger.audit_log DISABLE TRIGGER ALL",
        "ALTER TABLE purger.audit_log DISABLE TRIGGER audit_log_append_only",
        "DROP TRIGGER audit_log_append_only ON purger.audit_log",
        "ALTER TABLE purger.audit_head DISABLE TRIGGER audit_head_guard",
        "ALTER TABLE purger.legal_holds DISABLE TRIGGER legal_holds_guard",
        "UPDATE purger.audit_log SET content = '{}' WHERE seq = 1",
        "DELETE FROM purger.audit_log WHERE seq = 1",
        "TRUNCATE purger.audit_log",
        "UPDATE purger.audit_head SET seq = 1",
        "DELETE FROM purger.audit_head",
        "DROP TABLE purger.audit_log",
        "CREATE OR REPLACE FUNCTION purger.audit_log_refuse_change() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    ],
)
def test_the_runtime_role_cannot_touch_the_audit_trail(
    runtime_url: str, make_settings: SettingsFactory, policy: RetentionPolicy, statement: str
) -> None:
    seed_backdated(runtime_url, "cdr", [midnight(_utcnow()) - 5 * DAY])
    make_purger(make_settings(database_url=runtime_url), policy).run_pass(categories=["cdr"])
    with psycopg.connect(runtime_url) as conn:
        with pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute(statement.encode())
        conn.rollback()
        assert audit.verify(conn).ok


@pytest.fixture
def anchor_topic(services: Services, run_id: str) -> Iterator[str]:
    """The anchor topic of this test, deleted afterwards."""
    topic = f"t{run_id}.audit-anchors"
    yield topic
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    try:
        if topic in admin.list_topics():
            admin.delete_topics([topic])
    finally:
        admin.close()


def _rewrite_from(url: str, seq: int) -> None:
    """What the owner can do: change entry ``seq`` and rehash the chain and its head."""
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE purger.audit_log DISABLE TRIGGER audit_log_append_only")
        conn.execute("ALTER TABLE purger.audit_head DISABLE TRIGGER audit_head_guard")
        prev = conn.execute(
            "SELECT prev_hash FROM purger.audit_log WHERE seq = %s", (seq,)
        ).fetchone()[0]  # type: ignore[index]
        rows = conn.execute(
            "SELECT seq, kind, recorded_at, content FROM purger.audit_log WHERE seq >= %s "
            "ORDER BY seq",
            (seq,),
        ).fetchall()
        for row_seq, kind, recorded_at, content in rows:
            changed: dict[str, Any] = {**content, "rows": 0} if row_seq == seq else content
            digest = audit.entry_hash(prev, kind, recorded_at, changed)
            conn.execute(
                "UPDATE purger.audit_log SET content = %s, prev_hash = %s, hash = %s "
                "WHERE seq = %s",
                (Jsonb(changed), prev, digest, row_seq),
            )
            prev = digest
        conn.execute("UPDATE purger.audit_head SET hash = %s", (prev,))
        conn.execute("ALTER TABLE purger.audit_log ENABLE TRIGGER audit_log_append_only")
        conn.execute("ALTER TABLE purger.audit_head ENABLE TRIGGER audit_head_guard")
        conn.commit()


def test_anchors_catch_a_chain_the_owner_rewrote(
    database: str, make_settings: SettingsFactory, policy: RetentionPolicy, anchor_topic: str
) -> None:
    settings = make_settings(audit_anchor_topic=anchor_topic)
    purger = make_purger(settings, policy, anchor=lambda h: PLUGIN.publish_anchor(settings, h))
    now = _utcnow()
    anchored = []
    for days in (9, 5):
        seed_backdated(database, "cdr", [midnight(now) - days * DAY])
        report = purger.run_pass(categories=["cdr"])
        assert report.outcome in COMPLETED and report.anchor is not None, report.as_dict()
        assert report.anchor_error is None
        anchored.append(report.anchor["seq"])
    assert [a["seq"] for a in PLUGIN.read_anchors(settings)] == anchored

    env = purge_env(settings, audit_anchor_topic=anchor_topic)
    ok = purger_cli("audit", "verify", "--anchors", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "2 anchored heads match" in ok.stdout

    # The first drop of the second pass: after the first anchor, before the second.
    with psycopg.connect(database) as conn:
        dropped = conn.execute(
            "SELECT seq FROM purger.audit_log WHERE kind = 'partition_dropped' AND seq > %s "
            "ORDER BY seq LIMIT 1",
            (anchored[0],),
        ).fetchone()
    assert dropped is not None and dropped[0] < anchored[1]
    _rewrite_from(database, dropped[0])

    plain = purger_cli("audit", "verify", env=env)
    assert plain.returncode == 0, plain.stderr  # the rewrite is consistent
    caught = purger_cli("audit", "verify", "--anchors", "--json", env=env)
    assert caught.returncode == 1, caught.stdout + caught.stderr
    assert f'"first_bad_seq": {anchored[1]}' in caught.stdout
    assert f"entry {anchored[1]} differs" in caught.stdout


def test_a_failed_anchor_is_reported_and_deletes_stand(
    database: str, make_settings: SettingsFactory, policy: RetentionPolicy
) -> None:
    def broken(head: dict[str, Any]) -> None:
        raise OSError("broker away")

    seed_backdated(database, "cdr", [midnight(_utcnow()) - 5 * DAY])
    report = make_purger(make_settings(), policy, anchor=broken).run_pass(categories=["cdr"])
    assert report.outcome in COMPLETED
    assert report.categories["cdr"].partitions_dropped == 1
    assert report.anchor is None
    assert report.anchor_error is not None and "not anchored" in report.anchor_error


def test_the_anchor_is_published_after_the_pass_lock_is_released(
    database: str, make_settings: SettingsFactory, policy: RetentionPolicy
) -> None:
    # A broker that is away may hold up the publish; it must never hold up the next pass.
    settings = make_settings()
    free_while_publishing: list[bool] = []

    def anchor(_head: dict[str, Any]) -> None:
        with psycopg.connect(database, autocommit=True) as other:
            row = other.execute(query("try_lock"), {"key": PASS_LOCK}).fetchone()
            free_while_publishing.append(bool(row and row[0]))

    report = make_purger(settings, policy, anchor=anchor).run_pass()

    assert report.outcome in COMPLETED, report.as_dict()
    assert free_while_publishing == [True]


def test_verify_anchors_without_a_broker_says_so(
    database: str, make_settings: SettingsFactory, policy: RetentionPolicy
) -> None:
    settings = make_settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    env = {**settings_env(settings), "PURGER_DATABASE_URL": database}

    result = purger_cli("audit", "verify", "--anchors", env=env)

    assert result.returncode == 1, result.stderr
    assert "reading audit anchors" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_runtime_role_retags_retires_explains_and_answers_requests(
    runtime_url: str,
    database: str,
    make_settings: SettingsFactory,
    policy: RetentionPolicy,
    policy_file: Path,
    tmp_path: Path,
) -> None:
    # The operator commands run through `kubectl exec` with the runtime role's credentials.
    now = _utcnow()
    items = [
        record(policy, "cookie_stats", f"lp{i}", now - timedelta(days=250 + i)) for i in range(3)
    ]
    items.append(record(policy, "cdr", "lp-cdr", now - timedelta(days=3), msisdn="+31655555555"))
    with Storage(runtime_url, policy) as storage:
        storage.store({"cookie_stats": items[:3], "cdr": items[3:]})
    # A shortened retention, applied by the owner (the migrate hook).
    shorter = changed_policy(policy_file, tmp_path / "v2.yaml", cookie_stats={"retention": "P6M"})
    with Storage(database, shorter) as owner:
        owner.migrate(partitions_ahead=0, runtime_user=None, applied_by="hook")
    env = settings_env(make_settings(database_url=runtime_url, policy_file=tmp_path / "v2.yaml"))

    def cli(*args: str) -> Any:
        result = purger_cli(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        return json.loads(result.stdout) if "--json" in args else result.stdout

    assert cli("policy", "retag", "--json")["cookie_stats"]["retagged"] == 3
    assert cli("policy", "show", "--json")["categories"]["cookie_stats"]["records_to_retag"] == 0
    explained = cli("explain", "--category", "cdr", "--record-id", "lp-cdr", "--json")
    assert "lp-cdr" in json.dumps(explained)
    opened = cli(
        "request", "open", "--type", "erasure", "--msisdn", "+31655555555",
        "--received", now.date().isoformat(), "--ref", "DSR-LP", "--by", "dpo", "--json",
    )  # fmt: skip
    request_id = str(opened["id"])
    cli("request", "erase", request_id, "--json")
    cli("request", "close", request_id, "--reason", "done", "--by", "dpo", "--json")
    assert cli("policy", "retire", "cookie_stats", "--by", "dpo", "--json")["records"] == 3
    with psycopg.connect(runtime_url) as conn:
        left = conn.execute("SELECT count(*) FROM purger.records_cdr").fetchone()
        assert audit.verify(conn).ok
    assert left == (0,)
