"""Commands of the purge engine and its read model: purge, stats."""

from __future__ import annotations

import sys
from typing import Any

from purger.cli.context import Context, add_command, print_json
from purger.exits import (
    EXIT_CONTENDED,
    EXIT_FAILURE,
    EXIT_NOTHING_TO_DO,
    EXIT_OK,
    EXIT_TIMED_OUT,
)
from purger.purge_report import (
    OUTCOME_CONTENDED,
    OUTCOME_FAILURE,
    OUTCOME_NOTHING,
    OUTCOME_TIMED_OUT,
)
from purger.stats import Stats


def cmd_purge(ctx: Context) -> int:
    args = ctx.args
    metrics = ctx.metrics(ingest=False)
    purger = ctx.purger(metrics)
    report = purger.run_pass(categories=args.category or None, dry_run=args.dry_run)
    forgotten = purger.forget_keys(report)
    if args.json:
        print_json({**report.as_dict(), "keys_forgotten": forgotten})
    else:
        verb = "would remove" if args.dry_run else "removed"
        print(f"pass {report.pass_id} at {report.instant.isoformat()}: {report.outcome}")
        for name, cat in report.categories.items():
            print(
                f"  {name:<16} {cat.outcome:<13} {verb} {cat.rows_purged} records, "
                f"{cat.partitions_dropped} partitions"
                + (f", {cat.contended} contended" if cat.contended else "")
            )
        if report.error:
            print(f"  error: {report.error}", file=sys.stderr)
    return {
        OUTCOME_FAILURE: EXIT_FAILURE,
        OUTCOME_TIMED_OUT: EXIT_TIMED_OUT,
        OUTCOME_CONTENDED: EXIT_CONTENDED,
        OUTCOME_NOTHING: EXIT_NOTHING_TO_DO,
    }.get(report.outcome, EXIT_OK)


def cmd_stats(ctx: Context) -> int:
    metrics = ctx.metrics(ingest=False)
    result = Stats(ctx.settings.conninfo(), ctx.policy, metrics).show()
    if ctx.args.json:
        print_json(result)
    else:
        print(f"{'category':<16} {'records':>9} {'partitions':>10} {'overdue':>8}  expiry range")
        for name, s in result["categories"].items():
            print(
                f"{name:<16} {s['records']:>9} {s['partitions']:>10} {s['overdue']:>8}  "
                f"{s['oldest_expiry'] or '-'} .. {s['newest_expiry'] or '-'}"
            )
        lp = result["last_pass"]
        print(f"last pass: {lp['outcome']} at {lp['finished_at']}" if lp else "last pass: never")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``purge`` and ``stats`` to the ``purger`` command's subparsers."""
    p = add_command(sub, "purge", cmd_purge, "run one purge pass now")
    p.add_argument("--dry-run", action="store_true", help="report, change nothing")
    p.add_argument("--category", action="append", help="only this category (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = add_command(
        sub, "stats", cmd_stats, "records, partitions, expiry range and overdue per category"
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
