"""Copies of destroyed data on the real PostgreSQL: dead tuples, the password, CSV exports.

Issue 12, parts 4 and 6: a row deleted by a pass leaves the partition's pages (VACUUM,
audited); a database password with URL-breaking characters connects and is never echoed;
``subject export --format csv`` neutralises formula prefixes and writes a 0600 file.
"""

from __future__ import annotations

import csv
import io
import json
import stat
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from purger import audit
from purger.db import connect
from purger.errors import PurgerError
from purger.partitions import partition_name
from purger.policy import RetentionPolicy
from purger.purge_report import OUTCOME_CONTENDED, OUTCOME_SUCCESS
from purger.settings import Settings
from tests.integration.holds_support import Row, seed
from tests.integration.purge_support import (
    DAY,
    audit_entries,
    make_purger,
    midnight,
    seed_backdated,
    stored,
    utcnow,
)
from tests.integration.support import purger_cli, settings_env

pytestmark = pytest.mark.integration

# Every character that breaks a password pasted into a URL, and quoting for key=value.
AWKWARD_PASSWORD = "p%40ss/w@rd:x#y?z&a=b 'q' \\%"


# -- part 4: the deleted rows leave the partition's pages ---------------------------------
def _partly_expired(url: str, expired: int, live: int) -> tuple[str, datetime, list[str]]:
    """A future day's partition with ``expired`` rows at or before T and ``live`` after it.

    Returns the partition, T (passed to the pass as its instant) and the expired ids.
    Autovacuum is off on the partition: only the pass's own VACUUM can clean it.
    """
    day = midnight(utcnow()) + 2 * DAY
    t = day + timedelta(hours=12)
    gone = seed_backdated(url, "cdr", [day + timedelta(seconds=i + 1) for i in range(expired)])
    seed_backdated(url, "cdr", [t + timedelta(seconds=i + 1) for i in range(live)])
    pname = partition_name("cdr", day)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        conn.execute(
            sql.SQL("ALTER TABLE purger.{} SET (autovacuum_enabled = false)").format(
                sql.Identifier(pname)
            )
        )
    return pname, t, gone


def _tuples(url: str, partition: str) -> tuple[int, int, int]:
    """The partition's live tuples, dead tuples and dead line pointers.

    A read of a full page prunes its dead tuples down to dead line pointers (LP_DEAD),
    whose index entries still point at them: only VACUUM (index cleanup included) sets
    them unused, so dead tuples plus dead line pointers count what VACUUM has not removed.
    """
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT tuple_count, dead_tuple_count FROM pgstattuple(%(rel)s::regclass)",
            {"rel": f"purger.{partition}"},
        ).fetchone()
        lp = conn.execute(
            "SELECT count(*) FILTER (WHERE i.lp_flags = 3) "
            "FROM generate_series(0, pg_relation_size(%(rel)s::regclass) / "
            "current_setting('block_size')::int - 1) AS b, "
            "heap_page_items(get_raw_page(%(rel)s::text, b::int)) AS i",
            {"rel": f"purger.{partition}"},
        ).fetchone()
    assert row is not None and lp is not None
    return int(row[0]), int(row[1]), int(lp[0])


def _vacuum_count(url: str, partition: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT vacuum_count FROM pg_stat_user_tables "
            "WHERE schemaname = 'purger' AND relname = %s",
            (partition,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_pass_vacuums_the_partition_it_deleted_rows_from_and_audits_it(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    pname, t, gone = _partly_expired(url, expired=600, live=150)
    purger = make_purger(settings, policy, delete_batch_size=250)

    dry = purger.run_pass(categories=["cdr"], now=t, dry_run=True)
    assert dry.categories["cdr"].rows_purged == 600
    assert _vacuum_count(url, pname) == 0, "a dry run vacuumed"

    report = purger.run_pass(categories=["cdr"], now=t)
    cdr = report.categories["cdr"]
    assert report.outcome == OUTCOME_SUCCESS, report.error
    assert cdr.rows_purged == 600 and cdr.error is None
    assert _tuples(url, pname) == (150, 0, 0), "deleted tuples are still on the partition's pages"
    assert not set(gone) & set(stored(url, "cdr"))
    assert _vacuum_count(url, pname) == 1

    entries = [e for e in audit_entries(url) if e["content"].get("pass_id") == report.pass_id]
    kinds = [e["kind"] for e in entries]
    assert kinds == ["rows_deleted"] * 3 + ["partition_vacuumed", "purge_pass"]
    assert entries[3]["content"] == {
        "pass_id": report.pass_id,
        "category": "cdr",
        "partition": pname,
        "rows_deleted": 600,
    }
    with psycopg.connect(url, autocommit=True) as conn:
        assert audit.verify(conn).ok

    # A pass that deletes nothing vacuums nothing.
    again = purger.run_pass(categories=["cdr"], now=t)
    assert again.categories["cdr"].rows_purged == 0
    assert audit_entries(url, "partition_vacuumed") == entries[3:4]


def test_a_vacuum_that_cannot_run_is_reported_and_keeps_the_deletes(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    pname, t, gone = _partly_expired(url, expired=300, live=50)
    purger = make_purger(settings, policy, lock_timeout_ms=300)
    with psycopg.connect(url) as blocker:
        # SHARE UPDATE EXCLUSIVE: the row deletes pass, VACUUM waits for it.
        blocker.execute(
            sql.SQL("LOCK TABLE purger.{} IN SHARE UPDATE EXCLUSIVE MODE").format(
                sql.Identifier(pname)
            )
        )
        report = purger.run_pass(categories=["cdr"], now=t)
        blocker.rollback()
    cdr = report.categories["cdr"]
    assert cdr.outcome == OUTCOME_CONTENDED and report.outcome == OUTCOME_CONTENDED
    assert cdr.error is not None and f"vacuum partition {pname}" in cdr.error
    assert cdr.rows_purged == 300 and cdr.contended == 1
    assert not set(gone) & set(stored(url, "cdr")), "a failed vacuum undid the deletes"
    assert sum(e["content"]["rows"] for e in audit_entries(url, "rows_deleted")) == 300
    assert audit_entries(url, "partition_vacuumed") == []
    # What the vacuum is for: without it the deleted tuples are still on the pages.
    live, dead, dead_pointers = _tuples(url, pname)
    assert live == 50 and dead + dead_pointers == 300


# -- part 6: a password with %, / and @ connects and is never echoed ------------------------
@pytest.fixture
def awkward_role(database: str) -> Iterator[tuple[str, str]]:
    """A login role whose password has every URL-breaking character; (url, password).

    The URL names the role but no password. The role is a member of the test's owner
    role, so that it can use the purger's tables.
    """
    role = f"purger_pw_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(database)
    owner = parts.username or "purger"
    url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(AWKWARD_PASSWORD)
            )
        )
        admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(role)))
    try:
        yield url, AWKWARD_PASSWORD
    finally:
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_a_password_with_url_characters_connects(
    awkward_role: tuple[str, str], settings: Settings
) -> None:
    url, password = awkward_role
    role = urlsplit(url).username
    chosen = Settings(database_url=url, database_password=password)
    with connect(chosen.conninfo(), application="test") as conn:
        row = conn.execute("SELECT current_user, count(*) FROM purger.audit_log").fetchone()
    assert row is not None and row[0] == role

    # The whole way, as an operator runs it: a URL without password plus the password.
    env = {
        **settings_env(settings),
        "PURGER_DATABASE_URL": url,
        "PURGER_DATABASE_PASSWORD": password,
    }
    listed = purger_cli("hold", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_a_wrong_password_is_refused_without_echoing_it(
    awkward_role: tuple[str, str], settings: Settings
) -> None:
    url, password = awkward_role
    wrong = password + "-not/it@%"
    chosen = Settings(database_url=url, database_password=wrong)
    with pytest.raises(PurgerError) as caught:
        connect(chosen.conninfo(), application="test")
    said = [str(caught.value), str(caught.value.__cause__)]
    assert "password authentication failed" in said[0]
    for text in said:
        assert wrong not in text and password not in text
        assert "not/it" not in text and "p%40ss" not in text

    env = {**settings_env(settings), "PURGER_DATABASE_URL": url, "PURGER_DATABASE_PASSWORD": wrong}
    refused = purger_cli("hold", "list", "--json", env=env)
    assert refused.returncode != 0
    for text in (refused.stdout, refused.stderr):
        assert wrong not in text and "not/it" not in text and "p%40ss" not in text


# -- part 6: subject export --format csv --------------------------------------------------
FORMULAS = ('=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_csv_export_neutralises_formulas_and_is_written_0600(
    settings: Settings, tmp_path: Path
) -> None:
    url = settings.conninfo()
    expires = utcnow() + timedelta(days=30)
    email = {"email": ["victim@example.nl"]}
    rows = [
        Row(text, expires + timedelta(seconds=i), subjects=email) for i, text in enumerate(FORMULAS)
    ]
    rows.append(Row("plain", expires, tenant="@tenant", subjects=email))
    seed(url, "cookie_stats", rows)
    env = settings_env(settings)

    fresh = tmp_path / "fresh.csv"
    existing = tmp_path / "existing.csv"
    existing.write_text("old content that is longer than nothing\n" * 1000)
    existing.chmod(0o644)
    for target in (fresh, existing):
        done = purger_cli(
            "subject", "export", "--email", "victim@example.nl", "--format", "csv",
            "--output", str(target), env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert _mode(target) == 0o600, oct(_mode(target))

    for target in (fresh, existing):
        parsed = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
        by_id = {r["record_id"]: r for r in parsed}
        assert set(by_id) == {"'" + r.record_id for r in rows[:-1]} | {"plain"}
        assert by_id["plain"]["tenant"] == "'@tenant"
        for r in parsed:
            for value in r.values():
                assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value

    # JSON is unchanged (values as stored), and its file is 0600 too.
    as_json = tmp_path / "export.json"
    done = purger_cli(
        "subject", "export", "--email", "victim@example.nl", "--output", str(as_json), env=env
    )
    assert done.returncode == 0, done.stderr
    assert _mode(as_json) == 0o600
    records: list[dict[str, Any]] = json.loads(as_json.read_text())["records"]
    assert {r["record_id"] for r in records} == {r.record_id for r in rows}
    assert {r["tenant"] for r in records} == {"t1", "@tenant"}
