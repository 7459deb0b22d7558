"""Purge passes isolate categories: what stops one category never keeps the others' records.

On the real PostgreSQL: a partition detached by hand (failure), a lock another session holds
(contended), a lock on the legal holds or on held storage (contended, not failure), a statement
that runs past statement_timeout (timed_out), a connection killed mid-pass (the rest not run),
and a scheduler leader whose passes keep failing (leadership moves).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from purger import audit
from purger.partitions import partition_name
from purger.policy import RetentionPolicy
from purger.purge import Purger
from purger.purge_report import PassReport
from purger.scheduler import PurgeScheduler
from purger.settings import Settings
from tests.integration.purge_support import (
    DAY,
    audit_entries,
    blocking_session,
    make_purger,
    midnight,
    purge_env,
    registry,
    seed_backdated,
    stored,
    utcnow,
)
from tests.integration.support import purger_cli, wait_until

pytestmark = pytest.mark.integration

CATEGORIES = ("cdr", "call_recordings", "interception", "cookie_stats")


def _day(days_ago: int) -> datetime:
    return midnight(utcnow()) - days_ago * DAY


def _expired(days_ago: int, count: int) -> list[datetime]:
    """``count`` expiries in the whole day ``days_ago`` days back (a wholly expired partition)."""
    return [_day(days_ago) + timedelta(hours=12, seconds=i) for i in range(count)]


def _seed_all(url: str) -> dict[str, set[str]]:
    """Two wholly expired partitions (4 and 9 days ago) in every category; record ids."""
    return {c: set(seed_backdated(url, c, _expired(4, 3) + _expired(9, 2))) for c in CATEGORIES}


def _partition(category: str, days_ago: int) -> str:
    return partition_name(category, _day(days_ago))


def _partitions(url: str, category: str) -> set[str]:
    return {r[0] for r in registry(url, category)}


def _sample(purger: Purger, name: str, **labels: str) -> float:
    value = purger.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _category_outcomes(purger: Purger, category: str) -> dict[str, float]:
    return {
        outcome: _sample(
            purger, "purger_purge_category_outcomes_total", category=category, outcome=outcome
        )
        for outcome in ("success", "nothing_to_do", "contended", "timed_out", "failure")
    }


def _cli_purge(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = purger_cli("purge", "--json", *args, env=env)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def _last_pass(url: str) -> dict[str, Any]:
    content: dict[str, Any] = audit_entries(url, "purge_pass")[-1]["content"]
    return content


def _dropped(url: str) -> set[str]:
    return {e["content"]["partition"] for e in audit_entries(url, "partition_dropped")}


def _lock(conn: psycopg.Connection[Any], table: str, mode: str) -> None:
    conn.execute(
        sql.SQL("LOCK TABLE purger.{} IN {} MODE").format(sql.Identifier(table), sql.SQL(mode))
    )


def _detach_by_hand(url: str, category: str, partition: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE purger.{} DETACH PARTITION purger.{}").format(
                sql.Identifier(f"records_{category}"), sql.Identifier(partition)
            )
        )


@contextmanager
def _slow_unregister(url: str, category: str, seconds: float) -> Iterator[None]:
    """Every unregistering of a ``category`` partition (in the drop's transaction) is slow."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION purger.test_slow() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep({}); RETURN OLD; END $$"
            ).format(sql.Literal(seconds))
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER test_slow BEFORE DELETE ON purger.partitions FOR EACH ROW "
                "WHEN (OLD.category = {}) EXECUTE FUNCTION purger.test_slow()"
            ).format(sql.Literal(category))
        )
    try:
        yield
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER IF EXISTS test_slow ON purger.partitions")
            conn.execute("DROP FUNCTION IF EXISTS purger.test_slow()")


def _assert_purged(
    url: str, report: dict[str, Any], seeded: dict[str, set[str]], *names: str
) -> None:
    for name in names:
        cat = report["categories"][name]
        assert (cat["outcome"], cat["error"]) == ("success", None), name
        assert (cat["partitions_dropped"], cat["rows_purged"]) == (2, 5), name
        assert not seeded[name] & set(stored(url, name)), name
        assert {_partition(name, 4), _partition(name, 9)} <= _dropped(url), name


def _verify_chain(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert audit.verify(conn).ok


# -- (a) a failure in one category ---------------------------------------------------------
def test_a_failing_category_is_reported_and_the_others_are_still_purged(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    seeded = _seed_all(url)
    # An operator keeps cdr's older expired partition aside: the purger must not drop it.
    kept = _partition("cdr", 9)
    _detach_by_hand(url, "cdr", kept)
    purger = make_purger(settings, policy)

    report = purger.run_pass().as_dict()

    assert report["outcome"] == "failure"
    cdr = report["categories"]["cdr"]
    assert cdr["outcome"] == "failure"
    assert kept in cdr["error"] and "not a partition" in cdr["error"]
    assert kept in report["error"]
    assert seeded["cdr"] <= set(stored(url, "cdr")) | _rows_of(url, kept)
    assert kept in _partitions(url, "cdr")
    _assert_purged(url, report, seeded, "call_recordings", "interception", "cookie_stats")

    # Metrics: the category's failure, the others' success, the pass a failure.
    assert _category_outcomes(purger, "cdr") == {
        "success": 0,
        "nothing_to_do": 0,
        "contended": 0,
        "timed_out": 0,
        "failure": 1,
    }
    for name in ("call_recordings", "interception", "cookie_stats"):
        assert _category_outcomes(purger, name)["success"] == 1, name
    assert _sample(purger, "purger_purge_runs_total", outcome="failure") == 1
    assert _sample(purger, "purger_last_purge_success_timestamp_seconds") == 0

    # The audit trail records each category's outcome and the failure's reason.
    entry = _last_pass(url)
    assert entry["pass_id"] == report["pass_id"]
    assert entry["outcome"] == "failure"
    assert entry["categories"]["cdr"]["outcome"] == "failure"
    assert kept in entry["categories"]["cdr"]["error"]
    assert {n: c["outcome"] for n, c in entry["categories"].items() if n != "cdr"} == {
        "call_recordings": "success",
        "interception": "success",
        "cookie_stats": "success",
    }

    # The command line: exit 1, and the JSON names the failing category.
    code, again = _cli_purge(purge_env(settings))
    assert code == 1, again
    assert again["outcome"] == "failure"
    assert again["categories"]["cdr"]["outcome"] == "failure"
    assert kept in again["categories"]["cdr"]["error"]
    assert {again["categories"][n]["outcome"] for n in CATEGORIES[1:]} == {"nothing_to_do"}
    assert len(_rows_of(url, kept)) == 2, "the purger touched a table that is not its partition"
    _verify_chain(url)


def _rows_of(url: str, table: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT record_id FROM purger.{}").format(sql.Identifier(table))
        ).fetchall()
    return {str(r[0]) for r in rows}


# -- (b) a partition locked by another session ------------------------------------------------
def test_a_partition_locked_by_another_session_makes_its_category_contended_only(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    seeded = _seed_all(url)
    victim = _partition("interception", 9)
    env = purge_env(settings, lock_timeout_ms=300)

    with blocking_session(url) as blocker:
        # A report reading the partition in a long transaction.
        _lock(blocker, victim, "ACCESS SHARE")
        code, report = _cli_purge(env)

    assert (code, report["outcome"]) == (4, "contended"), json.dumps(report, indent=1)
    interception = report["categories"]["interception"]
    assert interception["outcome"] == "contended"
    # Its detach waits for the session; the category's next partition waits for that detach
    # (a table has one pending detach at a time).
    assert interception["contended"] == 2
    assert victim in interception["error"] and "55P03" in interception["error"]
    assert "waits for the pending detach of " + victim in interception["error"]
    assert [(a["partition"], a["status"]) for a in interception["actions"]] == [
        (victim, "contended"),
        (_partition("interception", 4), "contended"),
    ]
    assert victim not in _dropped(url)
    assert victim in _partitions(url, "interception")
    _assert_purged(url, report, seeded, "cdr", "call_recordings", "cookie_stats")
    entry = _last_pass(url)
    assert entry["outcome"] == "contended"
    assert entry["categories"]["interception"]["outcome"] == "contended"

    # Once the session is gone the next pass finishes the interrupted detach.
    code, report = _cli_purge(env)
    assert (code, report["outcome"]) == (0, "success"), report
    assert report["categories"]["interception"]["partitions_dropped"] == 2
    assert not seeded["interception"] & set(stored(url, "interception"))
    _verify_chain(url)


# -- (c) a lock timeout inside the legal-hold helpers ------------------------------------------
@pytest.mark.parametrize("held", ["hold_being_placed", "held_storage_locked"])
def test_a_lock_timeout_inside_the_hold_helpers_is_contention_not_failure(
    settings: Settings, policy: RetentionPolicy, held: str
) -> None:
    url = settings.conninfo()
    seeded = _seed_all(url)
    env = purge_env(settings, lock_timeout_ms=300)

    with blocking_session(url) as blocker:
        if held == "hold_being_placed":
            # What placing or releasing a hold holds until it commits: every destroying
            # transaction (held_storage.lock_for_destruction) waits for it, in every category.
            _lock(blocker, "legal_holds", "ROW EXCLUSIVE")
        else:
            # Held storage of one category locked (an index being built on it): the purge
            # of its released held records (held_storage.purge_released) waits for it.
            _lock(blocker, "held_cdr", "SHARE")
        code, report = _cli_purge(env)

    assert (code, report["outcome"]) == (4, "contended"), json.dumps(report, indent=1)
    if held == "hold_being_placed":
        for name in CATEGORIES:
            cat = report["categories"][name]
            assert cat["outcome"] == "contended", name
            assert "legal-hold" in cat["error"] and "55P03" in cat["error"], cat["error"]
            assert seeded[name] <= set(stored(url, name)) | _detached_rows(url, name), name
        assert not _dropped(url)
    else:
        cdr = report["categories"]["cdr"]
        assert cdr["outcome"] == "contended"
        assert "held records of cdr" in cdr["error"] and "55P03" in cdr["error"], cdr["error"]
        # Its partitions went; only the held records' purge waits for a later pass.
        assert cdr["partitions_dropped"] == 2
        _assert_purged(url, report, seeded, "call_recordings", "interception", "cookie_stats")

    code, report = _cli_purge(env)
    assert code in (0, 3), report
    assert {report["categories"][n]["outcome"] for n in CATEGORIES} <= {"success", "nothing_to_do"}
    for name in CATEGORIES:
        assert not seeded[name] & set(stored(url, name)), name
        assert not _detached_rows(url, name), name
    _verify_chain(url)


def _detached_rows(url: str, category: str) -> set[str]:
    """Rows of the category's registered partitions that are no longer attached (mid-drop)."""
    rows: set[str] = set()
    for name, *_rest, state in registry(url, category):
        if state == "detached":
            rows |= _rows_of(url, name)
    return rows


# -- (d) a statement timeout -------------------------------------------------------------------
def test_a_statement_timeout_is_timed_out_not_contended_nor_failure(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    seeded = _seed_all(url)
    purger = make_purger(settings, policy, lock_timeout_ms=300, statement_timeout_ms=1000)

    with _slow_unregister(url, "call_recordings", 5):
        report = purger.run_pass().as_dict()

    assert report["outcome"] == "timed_out", report
    slow = report["categories"]["call_recordings"]
    assert slow["outcome"] == "timed_out"
    assert "57014" in slow["error"] and _partition("call_recordings", 9) in slow["error"]
    # The drop rolled back with its transaction, and the category stopped at its first
    # timeout: the next partition was not tried.
    assert [(a["partition"], a["status"]) for a in slow["actions"]] == [
        (_partition("call_recordings", 9), "timed_out")
    ]
    assert seeded["call_recordings"] <= set(stored(url, "call_recordings")) | _detached_rows(
        url, "call_recordings"
    )
    assert not {p for p in _dropped(url) if p.startswith("records_call_recordings")}
    _assert_purged(url, report, seeded, "cdr", "interception", "cookie_stats")
    assert _category_outcomes(purger, "call_recordings")["timed_out"] == 1
    assert _category_outcomes(purger, "call_recordings")["contended"] == 0
    assert _sample(purger, "purger_purge_runs_total", outcome="timed_out") == 1
    assert _last_pass(url)["categories"]["call_recordings"]["outcome"] == "timed_out"

    # The command line says so with its own exit code.
    env = purge_env(settings, lock_timeout_ms=300, statement_timeout_ms=1000)
    with _slow_unregister(url, "call_recordings", 5):
        code, report = _cli_purge(env)
    assert (code, report["outcome"]) == (5, "timed_out"), report

    code, report = _cli_purge(env)
    assert (code, report["outcome"]) == (0, "success"), report
    assert not seeded["call_recordings"] & set(stored(url, "call_recordings"))
    _verify_chain(url)


def test_the_pass_outcome_is_the_worst_of_its_categories(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    seeded = _seed_all(url)
    _detach_by_hand(url, "cdr", _partition("cdr", 9))
    env = purge_env(settings, lock_timeout_ms=300, statement_timeout_ms=1000)
    others = ["--category", "call_recordings", "--category", "interception"]

    with blocking_session(url) as blocker, _slow_unregister(url, "interception", 5):
        _lock(blocker, _partition("call_recordings", 9), "ACCESS EXCLUSIVE")
        code, report = _cli_purge(env)
        outcomes = {n: c["outcome"] for n, c in report["categories"].items()}
        assert outcomes == {
            "cdr": "failure",
            "call_recordings": "contended",
            "interception": "timed_out",
            "cookie_stats": "success",
        }
        assert (code, report["outcome"]) == (1, "failure")

        code, report = _cli_purge(env, *others)
        assert (code, report["outcome"]) == (5, "timed_out")

    with blocking_session(url) as blocker:
        _lock(blocker, _partition("call_recordings", 9), "ACCESS EXCLUSIVE")
        code, report = _cli_purge(env, *others)
        assert (code, report["outcome"]) == (4, "contended")

    code, report = _cli_purge(env, *others)
    assert (code, report["outcome"]) == (0, "success")
    for name in ("call_recordings", "interception", "cookie_stats"):
        assert not seeded[name] & set(stored(url, name)), name
    _verify_chain(url)


# -- a broken connection ends the pass --------------------------------------------------------
def test_a_connection_lost_mid_pass_fails_it_and_leaves_the_rest_for_the_next(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    seeded = _seed_all(url)
    purger = make_purger(settings, policy)
    result: list[PassReport] = []

    with _slow_unregister(url, "interception", 60):
        runner = threading.Thread(target=lambda: result.append(purger.run_pass()))
        runner.start()
        try:
            pid = wait_until(
                lambda: _sleeping_purge_backend(url), 30, "the pass to reach the slow step"
            )
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        finally:
            runner.join(60)
    assert not runner.is_alive()

    (report,) = result
    outcomes = {n: c.outcome for n, c in report.categories.items()}
    assert outcomes == {
        "cdr": "success",
        "call_recordings": "success",
        "interception": "failure",
        "cookie_stats": "failure",
    }
    assert report.outcome == "failure"
    assert report.error is not None and "connection to PostgreSQL was lost" in report.error
    assert "not run: cookie_stats" in report.error
    assert (report.categories["cookie_stats"].error or "").startswith("not run:")
    assert seeded["cookie_stats"] <= set(stored(url, "cookie_stats"))
    # Recorded in the audit trail although the pass's own connection was gone.
    entry = _last_pass(url)
    assert entry["pass_id"] == report.pass_id and entry["outcome"] == "failure"

    after = purger.run_pass()
    assert after.outcome == "success", after.as_dict()
    for name in CATEGORIES:
        assert not seeded[name] & set(stored(url, name)), name
    _verify_chain(url)


def _sleeping_purge_backend(url: str) -> int | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'purger:purge' AND wait_event = 'PgSleep'"
        ).fetchone()
    return int(row[0]) if row else None


# -- (e) leadership moves away from a leader whose passes keep failing -------------------------
def _scheduler(purger: Purger) -> PurgeScheduler:
    return PurgeScheduler(
        purger,
        purger.metrics,
        "0 * * * *",
        misfire_grace_seconds=60,
        overdue_refresh_seconds=3600,
        leader_max_failures=3,
        leader_cooldown_ticks=2,
    )


def _leads(scheduler: PurgeScheduler) -> float:
    return _sample(scheduler.purger, "purger_scheduler_leader")


def test_leadership_moves_when_the_leaders_passes_keep_failing(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    seeded = _seed_all(url)
    # The failing replica's policy names a category whose table does not exist: each of its
    # passes ends in failure (its other categories are purged all the same).
    ghost = dataclasses.replace(policy.categories["cdr"], name="ghost")
    broken_policy = dataclasses.replace(policy, categories={"ghost": ghost, **policy.categories})
    failing = _scheduler(make_purger(settings, broken_policy))
    healthy = _scheduler(make_purger(settings, policy))
    try:
        first = failing.tick()
        assert first is not None and first.outcome == "failure"
        assert first.categories["ghost"].outcome == "failure"
        assert {first.categories[n].outcome for n in CATEGORIES} == {"success"}
        assert not any(seeded[n] & set(stored(url, n)) for n in CATEGORIES)
        assert _leads(failing) == 1

        for attempt in (2, 3):
            assert healthy.tick() is None, "a second leader"
            assert _leads(healthy) == 0
            report = failing.tick()
            assert report is not None and report.outcome == "failure", attempt
        # Three failures in a row: the failing leader stepped down ...
        assert not failing.leadership.is_leader
        assert _leads(failing) == 0

        # ... and the healthy replica's next tick takes over.
        taken = healthy.tick()
        assert taken is not None and taken.outcome == "nothing_to_do", taken
        assert _leads(healthy) == 1
        # The one that stepped down sits out its cool-down, then finds the lock taken.
        for _ in range(2):
            assert failing.tick() is None
            assert healthy.tick() is not None
        assert failing.tick() is None
        assert not failing.leadership.is_leader
        assert _sample(failing.purger, "purger_purge_runs_total", outcome="not_leader") == 3
        assert _sample(failing.purger, "purger_purge_runs_total", outcome="failure") == 3
        assert _sample(healthy.purger, "purger_purge_runs_total", outcome="failure") == 0

        # Alone (the healthy replica gone), the failing one leads again after a cool-down.
        healthy.leadership.release()
        for _ in range(2):
            assert failing.tick() is not None
        assert failing.tick() is not None  # the third failure in a row: steps down again
        assert not failing.leadership.is_leader
        assert failing.tick() is None and failing.tick() is None
        again = failing.tick()
        assert again is not None and failing.leadership.is_leader
        assert _leads(failing) == 1
    finally:
        failing.leadership.release()
        healthy.leadership.release()
    assert {e["content"]["outcome"] for e in audit_entries(url, "purge_pass")} == {
        "failure",
        "nothing_to_do",
    }
    _verify_chain(url)
