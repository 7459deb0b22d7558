"""Section 2, purge: one pass against DELETE + VACUUM, and at M/10 against M.

The data sets (see ``benchmarks.dataset``), built once; variants are file-level
copies (CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY):

* ``base``: the not-yet-expired rows, copied into ``m10`` and ``m``;
* ``m10``: plus M/10 expired rows over the expired partitions;
* ``m``: plus M expired rows over the same partitions (a tenth of them in ``m10``);
* ``flat``: the same rows as ``m`` in one unpartitioned table with the same indexes;
* ``load`` (section 3): a copy of ``m10``; ``h<count>`` (section 4): copies of ``m``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from benchmarks import dataset
from benchmarks.config import BenchConfig
from benchmarks.dataset import Task
from benchmarks.passes import checkpoint, delete_and_vacuum, timed_pass
from benchmarks.workspace import Workspace

log = logging.getLogger("benchmarks")


@dataclass
class Prepared:
    """The data sets built for sections 2-4."""

    expired: int
    expired_m10: int
    live: int
    partitions: int
    hold_clones: dict[int, str] = field(default_factory=dict)  # held count -> database label
    held_rows: dict[str, int] = field(default_factory=dict)
    load_label: str | None = None
    flat_rows: int = 0


def prepare(
    ws: Workspace, config: BenchConfig, *, purge: bool, load: bool, holds: list[int]
) -> Prepared:
    """Build the data sets (nothing here is timed)."""
    lay = dataset.layout(config.purge_expired, config.purge_partitions)
    hold_sizes = [h for h in holds if h > 0]
    live = dataset.live_chunks(lay, config.purge_live)
    tenth = dataset.expired_chunks(lay, 0.1, [])
    full = dataset.expired_chunks(lay, 1.0, hold_sizes)
    prepared = Prepared(
        expired=sum(c.hi - c.lo for c in full),
        expired_m10=sum(c.hi - c.lo for c in tenth),
        live=sum(c.hi - c.lo for c in live),
        partitions=lay.partitions,
    )
    log.info("purge: %s live rows", f"{prepared.live:,}")
    url_base = ws.create_database("base")
    dataset.keys_off(url_base)
    dataset.run_tasks(dataset.partition_tasks(url_base, live))
    url_m10 = ws.clone_database("base", "m10")
    tasks: list[Task] = []
    if purge:
        url_m = ws.clone_database("base", "m")
        url_flat = ws.create_database("flat")
        dataset.create_flat(url_flat)
        log.info("purge: unpartitioned twin, %s rows", f"{prepared.live + prepared.expired:,}")
        dataset.run_tasks(dataset.flat_insert_tasks(url_flat, live + full))
        # The twin's GIN build is the longest single task: it goes first, and the
        # partitions of m and m10 fill the other session meanwhile.
        tasks += dataset.flat_index_tasks(url_flat)
        tasks += dataset.partition_tasks(url_m, full)
    ws.drop_database("base")
    tasks += dataset.partition_tasks(url_m10, tenth)
    log.info(
        "purge: expired partitions, %s rows (M) and %s rows (M/10), and the twin's indexes",
        f"{prepared.expired:,}",
        f"{prepared.expired_m10:,}",
    )
    dataset.run_tasks(tasks)
    dataset.keys_ready(url_m10)
    if purge:
        dataset.keys_ready(url_m)
    if load:
        ws.clone_database("m10", "load")
        prepared.load_label = "load"
    if purge:
        prepared.held_rows = dataset.held_counts(url_m)
        for count in hold_sizes:
            prepared.hold_clones[count] = f"h{count}"
            ws.clone_database("m", f"h{count}")
        prepared.flat_rows = dataset.count(url_flat, dataset.FLAT)
    else:
        ws.drop_database("m10")
    return prepared


def run(ws: Workspace, config: BenchConfig, prepared: Prepared) -> dict[str, Any]:
    """Time the pass at M/10 and at M, and DELETE + VACUUM at M."""
    url_m10 = config.database_url(ws.db_name("m10"))
    url_m = config.database_url(ws.db_name("m"))
    url_flat = config.database_url(ws.db_name("flat"))
    log.info("purge: pass at M/10")
    checkpoint(url_m10)
    small = timed_pass(url_m10, ws.policy)
    ws.drop_database("m10")
    log.info("purge: pass at M")
    checkpoint(url_m)
    large = timed_pass(url_m, ws.policy)
    ws.drop_database("m")
    log.info("purge: DELETE + VACUUM at M")
    checkpoint(url_flat)
    naive = delete_and_vacuum(url_flat)
    ws.drop_database("flat")
    for result in (small, large):
        result.pop("started")
        result.pop("ended")
    return {
        "expired": prepared.expired,
        "expired_m10": prepared.expired_m10,
        "live": prepared.live,
        "partitions": prepared.partitions,
        "flat_rows": prepared.flat_rows,
        "pass_m10": small,
        "pass_m": large,
        "delete_vacuum_m": naive,
        "ratios": {
            "delete_vacuum_vs_pass": round(naive["seconds"] / large["seconds"], 1)
            if large["seconds"]
            else None,
            "pass_m_vs_pass_m10": round(large["seconds"] / small["seconds"], 3)
            if small["seconds"]
            else None,
        },
    }
