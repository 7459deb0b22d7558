"""Purge passes on the real PostgreSQL: crashes, concurrency, dry runs, exit codes."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from purger import audit
from purger.partitions import partition_name
from purger.policy import RetentionPolicy
from purger.purge import PASS_LOCK
from purger.purge_report import OUTCOME_SUCCESS
from purger.queries import query
from purger.settings import Settings
from purger.storage import Storage
from tests.integration.purge_support import (
    DAY,
    Replica,
    audit_entries,
    audited_rows,
    blocking_session,
    detach_pending,
    envelope,
    make_purger,
    make_stats,
    midnight,
    purge_env,
    registry,
    seed_backdated,
    stored,
    utcnow,
)
from tests.integration.support import purger_cli, wait_until

pytestmark = pytest.mark.integration


def _past_days(days: range, per_day: int, hour: int = 12) -> list[datetime]:
    """``per_day`` expiries in each of the whole days ``days`` ago (wholly expired partitions)."""
    today = midnight(utcnow())
    return [
        today - d * DAY + timedelta(hours=hour, seconds=i) for d in days for i in range(per_day)
    ]


def _boundary_expired(count: int) -> list[datetime]:
    """Expiries earlier today: rows of the partition that contains now (empty just past 0:00)."""
    now = utcnow()
    today = midnight(now)
    if now - today < timedelta(minutes=1):
        return []
    return [today + timedelta(microseconds=i) for i in range(count)]


def _store_live(url: str, policy: RetentionPolicy, category: str, count: int) -> list[str]:
    """Records that expire long after the test, stored the production way."""
    items = [envelope(utcnow() + timedelta(days=2, minutes=i)) for i in range(count)]
    with Storage(url, policy, DAY, application="test") as storage:
        assert storage.store({category: items})[category].inserted == count
    return [i.record.record_id for i in items]


def _purge_backends(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, wait_event_type, wait_event, state FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'purger:purge'"
        ).fetchall()


def _verify_cli(env: dict[str, str]) -> None:
    result = purger_cli("audit", "verify", env=env)
    assert result.returncode == 0, result.stderr
    assert "audit chain intact" in result.stdout


# -- 3. a leader killed in the middle of a pass ------------------------------------------
@pytest.mark.parametrize("blocked_at", ["detach", "delete"])
def test_a_pass_killed_mid_way_is_completed_by_the_next_without_double_counting(
    settings: Settings, policy: RetentionPolicy, tmp_path: Path, blocked_at: str
) -> None:
    url = settings.conninfo()
    expired: dict[str, list[str]] = {
        "cdr": seed_backdated(url, "cdr", _past_days(range(3, 5), 3)),
        "interception": seed_backdated(url, "interception", _past_days(range(3, 6), 4)),
    }
    # Just past midnight, today's partition holds nothing expired yet: both
    # variants then block at the detach.
    boundary = _boundary_expired(7)
    at_detach = blocked_at == "detach" or not boundary
    expired["cdr"] += seed_backdated(url, "cdr", boundary)
    live = {c: _store_live(url, policy, c, 3) for c in ("cdr", "interception")}
    total = sum(len(v) for v in expired.values())
    first_interception = registry(url, "interception")[0][0]
    today_cdr = partition_name("cdr", midnight(utcnow()))

    # The killed pass may wait as long as it likes; a dead client ends its backend.
    env = purge_env(settings, lock_timeout_ms=600000, delete_batch_size=2)
    env["PGOPTIONS"] = "-c client_connection_check_interval=100"
    with blocking_session(url) as blocker:
        if at_detach:
            # A reader of the parent: DETACH ... CONCURRENTLY marks the partition
            # 'detach pending', commits, then waits for this transaction to end.
            blocker.execute("SELECT count(*) FROM purger.records_interception")

            def stuck() -> bool:
                waiting = [b for b in _purge_backends(url) if b[1] == "Lock"]
                return bool(waiting) and detach_pending(url, first_interception) is True

        else:
            # A row lock on the 5th expired row: two batches of 2 commit, the third waits.
            blocker.execute(
                sql.SQL("SELECT 1 FROM purger.{} WHERE record_id = %s FOR UPDATE").format(
                    sql.Identifier(today_cdr)
                ),
                (expired["cdr"][-len(boundary) + 4],),
            )

            def stuck() -> bool:
                waiting = [b for b in _purge_backends(url) if b[1] == "Lock"]
                return bool(waiting) and bool(audit_entries(url, "rows_deleted"))

        leader = Replica("leader", ["purge", "--json"], env, tmp_path / "leader.log").start()
        try:
            wait_until(stuck, 60, f"the pass to block at the {blocked_at}")
        finally:
            leader.kill()
        wait_until(lambda: not _purge_backends(url), 60, "the killed leader's backend to end")
        done_before = audited_rows(url)
        assert 0 < done_before < total, "the kill must land mid-pass"
        assert not audit_entries(url, "purge_pass"), "a killed pass recorded an outcome"
        if at_detach:
            assert detach_pending(url, first_interception) is True
            assert {p[0]: p[4] for p in registry(url, "interception")}[
                first_interception
            ] == "detaching"

    result = purger_cli("purge", "--json", env=purge_env(settings, delete_batch_size=2))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outcome"] == OUTCOME_SUCCESS
    if at_detach:
        # The interrupted detach was finished and the partition dropped, rows counted.
        (action,) = [
            a
            for a in report["categories"]["interception"]["actions"]
            if a["partition"] == first_interception
        ]
        assert (action["action"], action["status"], action["rows"]) == ("drop", "done", 4)
        assert detach_pending(url, first_interception) is None
    for category, ids in expired.items():
        left = stored(url, category)
        assert not set(ids) & set(left), f"{category}: expired records survived"
        assert set(left) == set(live[category])
    # Without double counting: what the trail says was removed is what was expired.
    assert audited_rows(url) == total
    assert report["rows_purged"] == total - done_before
    dropped = [e["content"]["partition"] for e in audit_entries(url, "partition_dropped")]
    assert len(dropped) == len(set(dropped)), "a partition was audited twice"
    assert not [p for p in registry(url, "interception") if p[2] <= utcnow()]
    _verify_cli(purge_env(settings))


# -- 4. ingestion while a pass drops partitions --------------------------------------------
def test_ingestion_continues_while_a_pass_drops_partitions(
    settings: Settings, policy: RetentionPolicy, record_property: Any
) -> None:
    url = settings.conninfo()
    seeded = seed_backdated(url, "cdr", _past_days(range(1, 81), 2))
    partitions = len(registry(url, "cdr"))
    stalls: list[float] = []
    written: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    pass_window: list[float] = []

    def writer() -> None:
        with Storage(url, policy, DAY, application="writer") as storage:
            n = 0
            while not stop.is_set():
                n += 1
                ahead = [timedelta(days=1 + i % 3, minutes=n) for i in range(20)]
                items = [envelope(utcnow() + a) for a in ahead]
                started = time.perf_counter()
                try:
                    result = storage.store({"cdr": items})["cdr"]
                except BaseException as exc:
                    errors.append(exc)
                    return
                stalls.append(time.perf_counter() - started)
                if result.inserted != len(items):
                    errors.append(AssertionError(f"batch {n} stored {result.inserted}/20"))
                    return
                written.extend(i.record.record_id for i in items)

    thread = threading.Thread(target=writer, name="writer")
    thread.start()
    try:
        wait_until(lambda: len(stalls) >= 5 or errors, 60, "the writer to get going")
        purger = make_purger(settings, policy)
        pass_window.append(time.perf_counter())
        report = purger.run_pass(categories=["cdr"])
        pass_window.append(time.perf_counter())
        batches_before = len(stalls)
        wait_until(lambda: len(stalls) >= batches_before + 5 or errors, 60, "more batches")
    finally:
        stop.set()
        thread.join(60)
    assert not errors, f"insert failed during the pass: {errors[0]!r}"
    assert report.outcome == OUTCOME_SUCCESS, report.error
    assert report.categories["cdr"].partitions_dropped >= 80
    assert report.categories["cdr"].rows_purged == len(seeded)
    left = stored(url, "cdr")
    assert not set(seeded) & set(left)
    assert set(written) == set(left), "a record written during the pass is missing"
    worst = max(stalls)
    record_property("worst_insert_stall_seconds", round(worst, 4))
    record_property("partitions_dropped", report.categories["cdr"].partitions_dropped)
    record_property("pass_seconds", round(pass_window[1] - pass_window[0], 3))
    record_property("batches", len(stalls))
    print(
        f"\n{partitions} partitions, pass {pass_window[1] - pass_window[0]:.2f}s, "
        f"{len(stalls)} batches of 20, worst insert stall {worst * 1000:.1f} ms"
    )
    assert worst < 60, "an insert waited for a whole pass"


# -- the invariant for records that arrive while passes run (database clock) ---------------
def test_records_arriving_while_passes_run_obey_the_invariant(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    stored_at: dict[str, datetime] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        # One record per batch, so that BatchResult says whether it was stored.
        with Storage(url, policy, DAY, application="writer") as storage:
            n = 0
            while not stop.is_set():
                n += 1
                ahead = timedelta(milliseconds=(n * 37) % 400) if n % 5 else timedelta(minutes=5)
                item = envelope(utcnow() + ahead)
                try:
                    if storage.store({"cdr": [item]})["cdr"].inserted:
                        stored_at[item.record.record_id] = item.expires_at
                except BaseException as exc:
                    errors.append(exc)
                    return

    purger = make_purger(settings, policy)
    thread = threading.Thread(target=writer, name="writer")
    thread.start()
    reports = []
    try:
        for _ in range(6):
            want = len(stored_at) + 10
            wait_until(lambda want=want: len(stored_at) >= want or errors, 60, "stored records")
            reports.append(purger.run_pass(categories=["cdr"]))
    finally:
        stop.set()
        thread.join(60)
    assert not errors, repr(errors[0])
    assert all(r.outcome in ("success", "nothing_to_do") for r in reports), reports
    t = reports[-1].instant
    left = stored(url, "cdr")
    overdue = sorted(r for r, e in stored_at.items() if e <= t and r in left)
    assert not overdue, f"records expired at the last pass's T {t} survived: {overdue}"
    missing = sorted(r for r, e in stored_at.items() if e > t and r not in left)
    assert not missing, f"records live at T {t} were removed: {missing}"
    assert sum(r.rows_purged for r in reports) == sum(1 for e in stored_at.values() if e <= t)


class _PausingStorage(Storage):
    """Storage that stops inside its batch transaction, after reading the clock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.paused = threading.Event()
        self.resume = threading.Event()

    def _insert(
        self, conn: Any, category: str, items: Any, now_db: datetime, rule_version: int
    ) -> Any:
        self.paused.set()
        assert self.resume.wait(120), "never resumed"
        return super()._insert(conn, category, items, now_db, rule_version)


def test_a_batch_that_read_its_clock_before_t_commits_before_the_pass_deletes(
    settings: Settings, policy: RetentionPolicy
) -> None:
    # The race the ingest locks close: a batch reads the clock (the record is
    # live), a pass starts once the record has expired, the batch commits. The
    # pass must wait for the batch and delete the record, not miss it.
    url = settings.conninfo()
    item = envelope(utcnow() + timedelta(seconds=1))
    storage = _PausingStorage(url, policy, DAY, application="writer")
    results: list[Any] = []
    writer = threading.Thread(target=lambda: results.append(storage.store({"cdr": [item]})))
    writer.start()
    reports: list[Any] = []
    try:
        wait_until(storage.paused.is_set, 60, "the batch to read its clock")
        wait_until(lambda: utcnow() > item.expires_at, 10, "the record to expire")
        purge = threading.Thread(
            target=lambda: reports.append(make_purger(settings, policy).run_pass())
        )
        purge.start()

        def pass_waits_or_ended() -> bool:
            waiting = [b for b in _purge_backends(url) if b[2] == "advisory"]
            return bool(waiting) or not purge.is_alive()

        wait_until(pass_waits_or_ended, 60, "the pass to wait for the batch or end")
    finally:
        storage.resume.set()
        writer.join(60)
    purge.join(60)
    storage.close()
    assert results and results[0]["cdr"].inserted == 1, "the record was live when read"
    (report,) = reports
    assert report.instant >= item.expires_at
    assert item.record.record_id not in stored(url, "cdr"), "an expired record survived"
    assert report.categories["cdr"].rows_purged == 1


# -- 6. a dry run and the real run that follows it ---------------------------------------------
def test_dry_run_and_real_run_report_the_same_counts(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    seed_backdated(url, "cdr", _past_days(range(2, 5), 3))
    seed_backdated(url, "interception", _past_days(range(7, 8), 5) + _boundary_expired(4))
    _store_live(url, policy, "cdr", 4)
    _store_live(url, policy, "call_recordings", 2)
    env = purge_env(settings, delete_batch_size=3)
    before = {c: stored(url, c) for c in policy.categories}

    dry = purger_cli("purge", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    assert {c: stored(url, c) for c in policy.categories} == before, "a dry run changed data"
    written = [e for e in audit_entries(url) if e["kind"] != "policy_applied"]
    assert not written, "a dry run wrote to the audit trail"
    real = purger_cli("purge", "--json", env=env)
    assert real.returncode == 0, real.stderr

    def counts(report: dict[str, Any]) -> dict[str, Any]:
        return {
            name: (
                c["partitions_dropped"],
                c["rows_purged"],
                sorted((a["partition"], a["action"], a["rows"]) for a in c["actions"]),
            )
            for name, c in report["categories"].items()
        }

    dry_report, real_report = json.loads(dry.stdout), json.loads(real.stdout)
    assert dry_report["dry_run"] is True
    assert real_report["dry_run"] is False
    assert counts(dry_report) == counts(real_report)
    boundary = len(_boundary_expired(4))
    assert counts(real_report)["cdr"][:2] == (3, 9)
    assert counts(real_report)["interception"][:2] == (1, 5 + boundary)
    assert counts(real_report)["call_recordings"][:2] == (0, 0)
    assert real_report["rows_purged"] == audited_rows(url) == 14 + boundary
    # Each action's wall time, as `make bench` adds it up (a dry run times nothing).
    actions = [a for c in real_report["categories"].values() for a in c["actions"]]
    for a in actions:
        if a["action"] == "drop":
            assert 0 < a["detach_seconds"] <= a["seconds"], a
            assert a["vacuum_seconds"] == 0, a
        else:
            assert a["seconds"] > 0 and a["vacuum_seconds"] > 0, a
    assert {a["action"] for a in actions} == {"drop", "delete_rows"}
    dry_actions = [a for c in dry_report["categories"].values() for a in c["actions"]]
    assert all(a["seconds"] == a["detach_seconds"] == 0 for a in dry_actions)


# -- 7. stats and the exit codes of `purger purge` ------------------------------------------
def test_stats_show_overdue_and_the_last_pass_and_purge_exit_codes_tell_outcomes_apart(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    env = purge_env(settings, lock_timeout_ms=300)
    seed_backdated(url, "cdr", _past_days(range(2, 4), 3))
    seed_backdated(url, "cookie_stats", _past_days(range(5, 6), 2) + _boundary_expired(3))
    _store_live(url, policy, "cdr", 2)

    def stats() -> dict[str, Any]:
        result = purger_cli("stats", "--json", env=env)
        assert result.returncode == 0, result.stderr
        parsed: dict[str, Any] = json.loads(result.stdout)
        return parsed

    def purge() -> tuple[int, dict[str, Any]]:
        result = purger_cli("purge", "--json", env=env)
        return result.returncode, json.loads(result.stdout)

    s = stats()
    overdue = {n: c["overdue"] for n, c in s["categories"].items()}
    assert overdue == {
        "cdr": 6,
        "call_recordings": 0,
        "interception": 0,
        "cookie_stats": 2 + len(_boundary_expired(3)),
    }
    assert s["last_pass"] is None

    code, report = purge()
    assert (code, report["outcome"]) == (0, "success")
    s = stats()
    assert {c["overdue"] for c in s["categories"].values()} == {0}
    assert s["categories"]["cdr"]["records"] == 2
    assert s["last_pass"]["pass_id"] == report["pass_id"]
    assert s["last_pass"]["outcome"] == "success"

    code, report = purge()
    assert (code, report["outcome"]) == (3, "nothing_to_do")
    assert audit_entries(url, "purge_pass")[-1]["content"]["outcome"] == "nothing_to_do"

    # Another pass holds the pass lock: contended, and nothing recorded as a pass.
    with psycopg.connect(url, autocommit=True) as holder:
        assert holder.execute(query("try_lock"), {"key": PASS_LOCK}).fetchone() == (True,)
        code, report = purge()
        assert (code, report["outcome"]) == (4, "contended")
    assert audit_entries(url, "purge_pass")[-1]["content"]["outcome"] == "nothing_to_do"

    # A partition that cannot be locked in time: contended, never reported as done.
    victim_ids = seed_backdated(url, "cdr", _past_days(range(9, 10), 4))
    victim = partition_name("cdr", midnight(utcnow()) - 9 * DAY)
    with blocking_session(url) as blocker:
        blocker.execute(
            sql.SQL("LOCK TABLE purger.{} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(victim))
        )
        code, report = purge()
    assert (code, report["outcome"]) == (4, "contended")
    cdr = report["categories"]["cdr"]
    assert (cdr["contended"], cdr["partitions_dropped"], cdr["rows_purged"]) == (1, 0, 0)
    assert [a["status"] for a in cdr["actions"] if a["partition"] == victim] == ["contended"]
    assert set(victim_ids) <= set(stored(url, "cdr"))
    dropped = {e["content"]["partition"] for e in audit_entries(url, "partition_dropped")}
    assert victim not in dropped
    s = stats()
    assert s["categories"]["cdr"]["overdue"] == 4
    assert s["last_pass"]["outcome"] == "contended"

    # Retried on the next pass.
    code, report = purge()
    assert (code, report["outcome"]) == (0, "success")
    assert report["categories"]["cdr"]["rows_purged"] == 4
    assert not set(victim_ids) & set(stored(url, "cdr"))
    assert make_stats(settings, policy).overdue()["cdr"] == 0
    with psycopg.connect(url, autocommit=True) as conn:
        assert audit.verify(conn).ok


# -- only the purger's own tables -------------------------------------------------------------
def test_a_partition_detached_by_hand_is_never_dropped(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    seed_backdated(url, "cdr", _past_days(range(3, 5), 2))
    kept, other = sorted(r[0] for r in registry(url, "cdr") if r[3])
    # An operator keeps one expired partition aside, outside the purger's parent table.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE purger.{} DETACH PARTITION purger.{}").format(
                sql.Identifier("records_cdr"), sql.Identifier(kept)
            )
        )

    report = make_purger(settings, policy).run_pass(categories=["cdr"])

    assert report.outcome == "failure"
    assert report.error is not None and kept in report.error and "not a partition" in report.error
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT count(*) FROM purger.{}").format(sql.Identifier(kept))
        ).fetchone()
    assert rows == (2,), "the purger touched a table that is no longer its partition"
    assert kept in {r[0] for r in registry(url, "cdr")}
    # The check comes before any drop: the category's later partition waits, untouched.
    assert other in {r[0] for r in registry(url, "cdr")}
    assert not audit_entries(url, "partition_dropped")


def test_purge_sessions_bound_their_lock_waits_and_watch_their_client(
    settings: Settings, policy: RetentionPolicy
) -> None:
    purger = make_purger(settings, policy, lock_timeout_ms=1234, statement_timeout_ms=56789)
    with purger._connect("probe") as conn:
        shown = {
            name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            for name in ("lock_timeout", "statement_timeout", "client_connection_check_interval")
        }
    assert shown == {
        "lock_timeout": ("1234ms",),
        "statement_timeout": ("56789ms",),
        "client_connection_check_interval": ("5s",),
    }


# -- 8. the partition containing T is purged beside the drops ----------------------------------
def test_the_boundary_partition_is_purged_while_a_drop_waits(
    settings: Settings, policy: RetentionPolicy
) -> None:
    url = settings.conninfo()
    today = midnight(utcnow())
    t = today + timedelta(hours=12)
    expired_whole = seed_backdated(url, "cdr", _past_days(range(2, 5), 3))
    boundary = seed_backdated(url, "cdr", [today + timedelta(hours=1, seconds=i) for i in range(7)])
    oldest = partition_name("cdr", today - 4 * DAY)
    purger = make_purger(settings, policy, lock_timeout_ms=120000, delete_batch_size=2)
    outcome: list[Any] = []
    with blocking_session(url) as blocker:
        # A reader of the oldest partition: its drop waits for this transaction.
        blocker.execute(sql.SQL("SELECT count(*) FROM purger.{}").format(sql.Identifier(oldest)))
        side = threading.Thread(
            target=lambda: outcome.append(purger.run_pass(categories=["cdr"], now=t))
        )
        side.start()
        try:
            wait_until(
                lambda: not set(boundary) & set(stored(url, "cdr")),
                60,
                "the boundary partition's expired rows to go while the drop waits",
            )
            assert side.is_alive(), "the pass ended: nothing waited"
            assert set(expired_whole) & set(stored(url, "cdr")), "the blocked drop went through"
        finally:
            blocker.rollback()
            side.join(120)
    (report,) = outcome
    assert report.outcome == OUTCOME_SUCCESS, report.error
    assert report.categories["cdr"].rows_purged == len(expired_whole) + len(boundary)
    assert not stored(url, "cdr")
    with psycopg.connect(url, autocommit=True) as conn:
        assert audit.verify(conn).ok
