"""pg_partman's retention against a purge pass, on copies of one data set, alternating.

The data set is the purge section's (M expired rows over the expired daily
partitions, the live rows after today, the project's indexes) plus today's
partition, filled like the others with expiries spread over the whole day: the
partly expired partition that every real run meets. pg_partman 4 (Debian's
``postgresql-15-partman``, installed by ``scripts/bench/setup.sh``) takes over
the category table as it is: one ``part_config`` row with the table's control
column (``expires_at``), its daily interval and its naming pattern
(``<table>_pYYYYMMDDHH24``, so that it recognises every partition), ``retention``
0 days with ``retention_keep_table=false``, premake 4 (partitions exist ten days
ahead: it creates none). Installing the extension and that row is not timed.

Timed, each on a fresh file-level copy after a CHECKPOINT:

* the purger: one ``Purger.run_pass`` (holds check, audit chain, detach then
  drop, the boundary partition's expired rows deleted, and the VACUUM after it);
* pg_partman: ``CALL partman.run_maintenance_proc()`` (drops whole partitions
  only), then the ``DELETE`` of the expired rows it leaves in today's partition,
  then the ``VACUUM`` of that partition that the purger also runs.

Both remove what is expired at one instant T, today at 18:00 UTC whatever the hour
of the run (the pass is given T; the DELETE compares with T): three quarters of
today's partition is expired, where the clock would make it anything from none
just after midnight to all of it before the next. pg_partman decides by the clock,
which only matters for whole partitions: those before today, for both, unless the
day changes during the section, which is refused.
"""

from __future__ import annotations

import logging
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from benchmarks import dataset
from benchmarks.config import BenchConfig
from benchmarks.passes import checkpoint, timed_pass
from benchmarks.workspace import Workspace
from purger.partitions import parent_table, partition_name

log = logging.getLogger("benchmarks")

PARENT = f"purger.{parent_table(dataset.CATEGORY)}"
TAKE_OVER = """
INSERT INTO partman.part_config (
    parent_table, control, partition_type, partition_interval, premake,
    retention, retention_keep_table, retention_keep_index,
    infinite_time_partitions, datetime_string, jobmon)
VALUES (%(parent)s, 'expires_at', 'native', '1 day', 4,
        '0 days', false, false, true, 'YYYYMMDDHH24', false)
"""
EXPIRED_LEFT = sql.SQL("SELECT count(*) FROM {} WHERE expires_at <= %s")
# The instant both remove what is expired at, as an offset into today.
INSTANT_OF_DAY = timedelta(hours=18)


def prepare(ws: Workspace, config: BenchConfig) -> dict[str, Any]:
    """The ``pm`` data set, with pg_partman installed and in charge of the category table."""
    lay = dataset.layout(config.partman_expired, config.purge_partitions)
    live = dataset.live_chunks(lay, config.purge_live)
    full = dataset.expired_chunks(lay, 1.0, [])
    boundary = [dataset.Chunk(lay.today, "b-", 0, lay.per_day[0])]
    url = ws.create_database("pm")
    dataset.keys_off(url)
    log.info(
        "partman: %s expired + %s rows in today's partition + %s live",
        f"{sum(c.hi - c.lo for c in full):,}",
        f"{lay.per_day[0]:,}",
        f"{sum(c.hi - c.lo for c in live):,}",
    )
    dataset.run_tasks(dataset.partition_tasks(url, live + full + boundary))
    dataset.keys_ready(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA partman")
        conn.execute("CREATE EXTENSION pg_partman SCHEMA partman")
        version = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'"
        ).fetchone()
        conn.execute(TAKE_OVER, {"parent": PARENT})
    return {
        "expired_whole": sum(c.hi - c.lo for c in full),
        "today_rows": lay.per_day[0],
        "live": sum(c.hi - c.lo for c in live),
        "partitions": lay.partitions,
        "pg_partman": str(version[0]) if version else "?",
        "today_partition": partition_name(dataset.CATEGORY, lay.today),
        "instant": (lay.today + INSTANT_OF_DAY).isoformat(),
    }


def _expired_left(url: str, instant: datetime) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            EXPIRED_LEFT.format(sql.Identifier("purger", parent_table(dataset.CATEGORY))),
            (instant,),
        ).fetchone()
    return int(row[0]) if row else 0


def _same_day(instant: datetime) -> None:
    # pg_partman goes by the clock: past midnight it would drop today's partition too.
    if datetime.now(UTC) >= instant - INSTANT_OF_DAY + timedelta(days=1):
        raise RuntimeError("the day changed during the partman section: run it again")


def partman_pass(url: str, today: str, instant: datetime) -> dict[str, Any]:
    """pg_partman's maintenance, the boundary DELETE and its VACUUM, each timed."""
    parent = sql.Identifier("purger", parent_table(dataset.CATEGORY))
    with psycopg.connect(url, autocommit=True, application_name="bench:partman") as conn:
        started = time.perf_counter()
        conn.execute("CALL partman.run_maintenance_proc(p_analyze := false)")
        maintained = time.perf_counter()
        left = _expired_left(url, instant)
        counted = time.perf_counter()
        deleted = conn.execute(
            sql.SQL("DELETE FROM {} WHERE expires_at <= %s").format(parent), (instant,)
        ).rowcount
        deleted_at = time.perf_counter()
        conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier("purger", today)))
        vacuumed = time.perf_counter()
    return {
        "maintenance_seconds": round(maintained - started, 3),
        "expired_left_by_partman": left,
        "delete_seconds": round(deleted_at - counted, 3),
        "rows_deleted": deleted,
        "vacuum_seconds": round(vacuumed - deleted_at, 3),
        "partman_and_delete_seconds": round(maintained - started + deleted_at - counted, 3),
        "seconds": round(maintained - started + vacuumed - counted, 3),
    }


def run(ws: Workspace, config: BenchConfig, prepared: dict[str, Any]) -> dict[str, Any]:
    """Alternate a purge pass and pg_partman on fresh copies, ``compare_rounds`` times each."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    instant = datetime.fromisoformat(prepared["instant"])
    for round_ in range(config.compare_rounds):
        log.info("partman: round %s, purger pass", round_ + 1)
        url = ws.clone_database("pm", "pm_ours")
        checkpoint(url)
        _same_day(instant)
        result = timed_pass(url, ws.policy, now=instant)
        result.pop("started")
        result.pop("ended")
        result["expired_left"] = _expired_left(url, instant)
        ours.append(result)
        ws.drop_database("pm_ours")
        log.info("partman: round %s, pg_partman", round_ + 1)
        url = ws.clone_database("pm", "pm_partman")
        checkpoint(url)
        _same_day(instant)
        outcome = partman_pass(url, prepared["today_partition"], instant)
        _same_day(instant)
        outcome["expired_left"] = _expired_left(url, instant)
        theirs.append(outcome)
        ws.drop_database("pm_partman")
    ws.drop_database("pm")

    def stats(values: list[float]) -> dict[str, float]:
        return {"min": min(values), "median": round(statistics.median(values), 3)}

    ours_s = stats([r["seconds"] for r in ours])
    phases = (
        {name: stats([r["phases"][name] for r in ours]) for name in ours[0]["phases"]}
        if ours
        else {}
    )
    drop_delete = stats([r["partman_and_delete_seconds"] for r in theirs])
    with_vacuum = stats([r["seconds"] for r in theirs])
    return {
        **prepared,
        "purger": ours,
        "partman": theirs,
        "purger_seconds": ours_s,
        "purger_phases": phases,
        "partman_drop_seconds": stats([r["maintenance_seconds"] for r in theirs]),
        "partman_and_delete_seconds": drop_delete,
        "partman_delete_vacuum_seconds": with_vacuum,
        "ratios": {
            # Above 1: the purger's pass takes longer (medians).
            "purger_vs_partman_and_delete": round(ours_s["median"] / drop_delete["median"], 3)
            if drop_delete["median"]
            else None,
            "purger_vs_partman_delete_vacuum": round(ours_s["median"] / with_vacuum["median"], 3)
            if with_vacuum["median"]
            else None,
        },
    }
