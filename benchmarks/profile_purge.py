"""Where a purge pass spends its time, against pg_partman: ``Purger.run_pass`` under cProfile.

``python -m benchmarks.profile_purge [M]`` builds the partman section's data set (M expired
rows, default 1,000,000, over BENCH_PURGE_PARTITIONS daily partitions, today's partition
partly expired, BENCH_PURGE_LIVE live rows), copies it, and runs one pass under cProfile.
Prints the cumulative time of the project's functions and of psycopg's waits (where the
pass waits for PostgreSQL), and the statements per partition. Not part of ``make bench``.
"""

from __future__ import annotations

import cProfile
import dataclasses
import io
import pstats
import sys
import time

from benchmarks import partman
from benchmarks.config import load_config
from benchmarks.passes import checkpoint
from benchmarks.workspace import Workspace
from purger.metrics import Metrics
from purger.purge import Purger


def main() -> int:
    """Build, copy, profile one pass, print."""
    expired = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    config = dataclasses.replace(load_config(), partman_expired=expired)
    ws = Workspace(config)
    try:
        partman.prepare(ws, config)
        url = ws.clone_database("pm", "pm_profile")
        checkpoint(url)
        metrics = Metrics(
            categories=ws.policy.categories, topics=ws.policy.by_topic(), ingest=False
        )
        purger = Purger(url, ws.policy, metrics)
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        report = purger.run_pass()
        profile.disable()
        seconds = time.perf_counter() - started
        print(f"pass: {seconds:.3f} s, outcome {report.outcome}, {report.rows_purged} rows")
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).sort_stats("cumulative")
        stats.print_stats(r"purger/|psycopg/(connection|cursor)\.py.*(wait|execute|commit)", 45)
        print(out.getvalue())
    finally:
        ws.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
