"""Three `purger run` replicas on one database: one pass per schedule tick, one leader."""

from __future__ import annotations

import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from purger.queries import query
from purger.settings import Settings
from tests.integration.purge_support import (
    DAY,
    Replica,
    audit_entries,
    audited_rows,
    midnight,
    purge_env,
    seed_backdated,
    utcnow,
)
from tests.integration.support import purger_cli, wait_until

pytestmark = pytest.mark.integration

TICK = 3  # seconds: PURGER_PURGE_SCHEDULE="*/3 * * * * *"


def _passes(url: str) -> list[dict[str, object]]:
    return [e["content"] for e in audit_entries(url, "purge_pass")]


def _tick_of(content: dict[str, object]) -> int:
    started = datetime.fromisoformat(str(content["started_at"]))
    return int(started.timestamp()) // TICK


def _passed(replica: Replica) -> float:
    return replica.runs("success") + replica.runs("nothing_to_do")


def test_three_replicas_perform_one_pass_per_tick(
    settings: Settings, topics: dict[str, str], tmp_path: Path
) -> None:
    url = settings.conninfo()
    today = midnight(utcnow())
    seeded = seed_backdated(url, "cdr", [today - 3 * DAY, today - 2 * DAY, today - 2 * DAY])
    env = purge_env(settings, purge_schedule=f"*/{TICK} * * * * *", http_port=0)
    replicas = [
        Replica(f"replica{i}", ["run"], env, tmp_path / f"replica{i}.log").start() for i in range(3)
    ]
    try:
        # Every replica has ticked at least once: all three compete from here on.
        for r in replicas:
            wait_until(
                lambda r=r: _passed(r) + r.runs("not_leader") >= 1,
                90,
                f"{r.name} to tick ({r.log()[-2000:]})",
            )
        start = len(_passes(url))
        wait_until(lambda: len(_passes(url)) >= start + 5, 60, "five more ticks")

        passes = _passes(url)
        per_tick = Counter(_tick_of(p) for p in passes)
        assert set(per_tick.values()) == {1}, f"passes per tick: {sorted(per_tick.items())}"
        observed = sorted(per_tick)[-5:]
        assert observed == list(range(observed[0], observed[0] + 5)), "a tick had no pass"
        leaders = [r for r in replicas if _passed(r) > 0]
        assert len(leaders) == 1, [(r.name, _passed(r)) for r in replicas]
        (leader,) = leaders
        followers = [r for r in replicas if r is not leader]
        for r in followers:
            assert r.runs("not_leader") >= 3, r.name
            assert "not the leader" in r.log()
        assert leader.runs("not_leader") == 0
        assert [r.runs("contended") for r in replicas] == [0, 0, 0]
        assert passes[0]["outcome"] == "success"
        assert {p["outcome"] for p in passes[1:]} == {"nothing_to_do"}

        # The leader leaves (SIGTERM, clean exit): one follower takes over.
        assert leader.terminate() == 0, leader.log()[-2000:]
        handover = len(_passes(url))
        wait_until(lambda: len(_passes(url)) >= handover + 2, 60, "a pass after the handover")
        assert len([r for r in followers if _passed(r) > 0]) == 1
        per_tick = Counter(_tick_of(p) for p in _passes(url))
        assert set(per_tick.values()) == {1}, f"passes per tick: {sorted(per_tick.items())}"
    finally:
        codes = {r.name: r.terminate() for r in replicas if r.proc and r.proc.poll() is None}
    assert set(codes.values()) <= {0}, {r.name: r.log()[-2000:] for r in replicas}
    # The expired records were removed once, by the first pass.
    assert audited_rows(url) == len(seeded)
    result = purger_cli("audit", "verify", env=env)
    assert result.returncode == 0, result.stderr


def test_a_replica_paused_mid_pass_runs_the_missed_pass_once(
    settings: Settings, tmp_path: Path
) -> None:
    # SIGSTOP stands for a paused pod (node suspended, frozen container), here
    # while a pass runs: the ticks missed meanwhile must give one catch-up pass
    # right after it, neither none (skipped) nor one per missed tick.
    url = settings.conninfo()
    env = purge_env(settings, purge_schedule=f"*/{TICK} * * * * *", http_port=0)
    replica = Replica("replica", ["schedule"], env, tmp_path / "schedule.log").start()
    assert replica.proc is not None
    blocker = psycopg.connect(url)
    try:
        wait_until(lambda: len(_passes(url)) >= 1, 60, f"a first pass ({replica.log()[-2000:]})")
        # An ingest batch in flight: the next pass waits for it to fix its instant.
        blocker.execute(query("ingest_lock_shared"), {"category": "cdr"})
        wait_until(lambda: _pass_waits(url), 30, "a pass to wait for the ingest lock")
        before = len(_passes(url))
        replica.proc.send_signal(signal.SIGSTOP)
        stopped = utcnow()
        blocker.commit()

        def resume_point() -> bool:
            # Two ticks missed, and mid-way between ticks, so that the catch-up
            # pass cannot be mistaken for a regular one.
            now = utcnow()
            missed = now > stopped + timedelta(seconds=2 * TICK)
            return missed and 1.0 <= now.timestamp() % TICK < 1.5

        wait_until(resume_point, 30, "two missed ticks")
        resumed = utcnow()
        replica.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: len(_passes(url)) >= before + 3, 30, "the catch-up and a regular pass")
    finally:
        blocker.close()
        replica.proc.send_signal(signal.SIGCONT)
        code = replica.terminate()
    assert code == 0, replica.log()[-2000:]
    starts = [datetime.fromisoformat(str(p["started_at"])) for p in _passes(url)[before:]]
    assert starts[0] < stopped, "the first pass after the pause is the one it interrupted"
    next_tick = datetime.fromtimestamp((int(resumed.timestamp()) // TICK + 1) * TICK, UTC)
    catch_up = [s for s in starts[1:] if s < next_tick]
    assert len(catch_up) == 1, (
        f"missed ticks ran {len(catch_up)} times after the pause at {resumed}: {starts}\n"
        + replica.log()[-3000:]
    )


def _pass_waits(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'purger:purge' AND wait_event = 'advisory'"
        ).fetchone()
    return bool(row and row[0])
