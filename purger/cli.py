"""The ``purger`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from purger import __version__, audit, cli_holds, logs
from purger.db import connect
from purger.errors import ConfigError, InvalidMessage, PurgerError
from purger.exits import (
    EXIT_CONTENDED,
    EXIT_FAILURE,
    EXIT_NOTHING_TO_DO,
    EXIT_OK,
    EXIT_TIMED_OUT,
    EXIT_USAGE,
    fail,
)
from purger.http import HealthServer
from purger.liveness import Liveness
from purger.metrics import Metrics
from purger.policy import RetentionPolicy, load_policy
from purger.purge import (
    OUTCOME_CONTENDED,
    OUTCOME_FAILURE,
    OUTCOME_NOTHING,
    OUTCOME_TIMED_OUT,
    Purger,
)
from purger.records import parse_timestamp
from purger.scheduler import PurgeScheduler
from purger.settings import Settings, describe_settings, load_settings
from purger.storage import Storage

log = logging.getLogger("purger")


class Context:
    """What every command needs, loaded once."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings: Settings = load_settings(args.config)
        logs.configure(self.settings.log_format, self.settings.log_level)
        self.policy: RetentionPolicy = load_policy(
            self.settings.policy_file, self.settings.dead_letter_suffix
        )

    def log_effective_config(self) -> None:
        """The one start-up line with the effective settings, secrets masked."""
        log.info(
            "effective settings: %s; policy %s (version %s, digest %s)",
            json.dumps(self.settings.masked(), default=str),
            self.policy.source,
            self.policy.version,
            self.policy.digest,
        )

    def metrics(self, *, ingest: bool = True) -> Metrics:
        """A fresh metrics registry with every series pre-created."""
        return Metrics(
            categories=self.policy.categories,
            topics=self.policy.by_topic(),
            ingest=ingest,
        )

    def purger(self, metrics: Metrics) -> Purger:
        """The purge engine."""
        s = self.settings
        return Purger(
            s.conninfo(),
            self.policy,
            metrics,
            lock_timeout_ms=s.lock_timeout_ms,
            statement_timeout_ms=s.statement_timeout_ms,
            delete_batch_size=s.delete_batch_size,
        )

    def storage(self, role: str = "cli") -> Storage:
        """A storage handle."""
        return Storage(self.settings.conninfo(), self.policy, self.settings.granularity, role)


def ingest_plugin() -> ModuleType:
    """The Kafka side, found through the ``purger.ingest`` entry point.

    The core never imports ``consumers``; the installed distribution registers it.
    """
    for ep in entry_points(group="purger.ingest"):
        if ep.name == "kafka":
            module: ModuleType = ep.load()
            return module
    raise ConfigError("the Kafka consumers are not installed (entry point purger.ingest:kafka)")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """A stop flag set by SIGTERM and SIGINT (the current batch finishes first)."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_json(value: Any, out: TextIO = sys.stdout) -> None:
    out.write(json.dumps(value, indent=2, default=str) + "\n")


# -- commands ------------------------------------------------------------------------
def cmd_migrate(ctx: Context) -> int:
    with ctx.storage("migrate") as storage:
        applied = storage.migrate(ctx.settings.partitions_ahead)
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    print(f"category tables ready: {', '.join(ctx.policy.categories)}")
    return EXIT_OK


def _serve(ctx: Context, metrics: Metrics, *, kafka: bool, liveness: Liveness | None = None) -> Any:
    plugin = ingest_plugin() if kafka else None
    storage = ctx.storage("readiness")
    checks: dict[str, Callable[[], None]] = {"postgresql": storage.ping}
    if plugin is not None:
        checks["kafka"] = plugin.kafka_check(ctx.settings)
    server = HealthServer(
        ctx.settings.http_host, ctx.settings.http_port, metrics.registry, checks, liveness
    )
    server.start()
    log.info("serving /metrics, /healthz, /readyz on port %s", server.port)
    return server


def cmd_run(ctx: Context) -> int:
    args = ctx.args
    ctx.log_effective_config()
    plugin = ingest_plugin()
    multiproc = plugin.MultiprocessMetrics() if args.workers > 1 else None
    metrics = ctx.metrics(ingest=multiproc is None)
    if multiproc is not None:
        multiproc.collector_into(metrics.registry)
    scheduler = None
    with stop_on_signals() as stop, contextlib.ExitStack() as stack:
        if multiproc is not None:
            stack.callback(multiproc.close)
        liveness = Liveness(ctx.settings.liveness_timeout_seconds)
        server = _serve(ctx, metrics, kafka=True, liveness=liveness)
        stack.callback(server.stop)
        if not args.no_scheduler:
            scheduler = _scheduler(ctx, metrics)
            scheduler.start()
            stack.callback(scheduler.shutdown)
        summary = plugin.consume(
            ctx.settings, ctx.policy, metrics, stop, workers=args.workers, liveness=liveness
        )
        log.info("consumers stopped", extra={"count": summary["messages"]})
        if summary["errors"]:
            for error in summary["errors"]:
                log.error("worker failed: %s", error)
            return EXIT_FAILURE
    return EXIT_OK


def _scheduler(ctx: Context, metrics: Metrics) -> Any:
    return PurgeScheduler(
        ctx.purger(metrics),
        metrics,
        ctx.settings.purge_schedule,
        misfire_grace_seconds=ctx.settings.purge_misfire_grace_seconds,
        overdue_refresh_seconds=ctx.settings.overdue_refresh_seconds,
        leader_max_failures=ctx.settings.purge_leader_max_failures,
        leader_cooldown_ticks=ctx.settings.purge_leader_cooldown_ticks,
    )


def cmd_schedule(ctx: Context) -> int:
    ctx.log_effective_config()
    metrics = ctx.metrics(ingest=False)
    with stop_on_signals() as stop, contextlib.ExitStack() as stack:
        server = _serve(ctx, metrics, kafka=False)
        stack.callback(server.stop)
        scheduler = _scheduler(ctx, metrics)
        scheduler.start()
        stack.callback(scheduler.shutdown)
        stop.wait()
    return EXIT_OK


def cmd_consume(ctx: Context) -> int:
    args = ctx.args
    ctx.log_effective_config()
    plugin = ingest_plugin()
    metrics = ctx.metrics()
    with stop_on_signals() as stop:
        summary = plugin.consume(
            ctx.settings,
            ctx.policy,
            metrics,
            stop,
            workers=args.workers,
            until_idle=args.until_idle,
        )
    if args.json:
        _print_json(summary)
    else:
        print(
            f"{'category':<16} {'stored':>8} {'duplicate':>9} {'expired':>8} {'held':>6} "
            f"{'dead-letter':>11}"
        )
        for name, c in summary["categories"].items():
            print(
                f"{name:<16} {c['stored']:>8} {c['duplicates']:>9} "
                f"{c['expired_on_arrival']:>8} {c.get('held', 0):>6} {c['dead_lettered']:>11}"
            )
    for error in summary["errors"]:
        print(f"purger: worker failed: {error}", file=sys.stderr)
    return EXIT_FAILURE if summary["errors"] else EXIT_OK


def cmd_purge(ctx: Context) -> int:
    args = ctx.args
    metrics = ctx.metrics(ingest=False)
    purger = ctx.purger(metrics)
    report = purger.run_pass(categories=args.category or None, dry_run=args.dry_run)
    if args.json:
        _print_json(report.as_dict())
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
    with ctx.storage("stats") as storage:
        stats = storage.stats()
    overdue = ctx.purger(metrics).overdue()
    with connect(ctx.settings.conninfo(), autocommit=True, role="stats") as conn:
        last = audit.last_of_kind(conn, "purge_pass")
    for name, n in overdue.items():
        stats[name]["overdue"] = n
    result = {
        "categories": stats,
        "last_pass": (
            {
                "pass_id": last.content.get("pass_id"),
                "outcome": last.content.get("outcome"),
                "started_at": last.content.get("started_at"),
                "finished_at": last.content.get("finished_at"),
            }
            if last
            else None
        ),
    }
    if ctx.args.json:
        _print_json(result)
    else:
        print(f"{'category':<16} {'records':>9} {'partitions':>10} {'overdue':>8}  expiry range")
        for name, s in stats.items():
            print(
                f"{name:<16} {s['records']:>9} {s['partitions']:>10} {s['overdue']:>8}  "
                f"{s['oldest_expiry'] or '-'} .. {s['newest_expiry'] or '-'}"
            )
        lp = result["last_pass"]
        print(f"last pass: {lp['outcome']} at {lp['finished_at']}" if lp else "last pass: never")
    return EXIT_OK


def cmd_audit_verify(ctx: Context) -> int:
    with connect(ctx.settings.conninfo(), autocommit=True, role="audit") as conn:
        result = audit.verify(conn)
    if ctx.args.json:
        _print_json(result.as_dict())
    elif result.ok:
        print(f"audit chain intact: {result.entries} entries, head {result.head_hash}")
    else:
        print(f"audit chain BROKEN: {result.problem}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILURE


def cmd_audit_export(ctx: Context) -> int:
    try:
        since = parse_timestamp(ctx.args.since, "--since") if ctx.args.since else None
    except InvalidMessage as exc:
        raise ConfigError(f"{exc.detail} (for example 2026-01-31T00:00:00Z)") from None
    with contextlib.ExitStack() as stack:
        out: TextIO = (
            stack.enter_context(open(ctx.args.output, "w", encoding="utf-8"))
            if ctx.args.output
            else sys.stdout
        )
        conn = stack.enter_context(connect(ctx.settings.conninfo(), autocommit=True, role="audit"))
        for line in audit.export(conn, since):
            out.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its --help lists every PURGER_* setting)."""
    parser = argparse.ArgumentParser(
        prog="purger",
        description="Event-driven retention purger for telecom records.",
        epilog=describe_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"purger {__version__}")
    parser.add_argument(
        "--config", type=Path, help="YAML settings file (also PURGER_CONFIG); env vars win"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[Context], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=describe_settings(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    add("migrate", cmd_migrate, "apply schema migrations and create category tables")
    p = add("run", cmd_run, "the service: consumers, purge scheduler and HTTP endpoints")
    p.add_argument("--workers", type=int, default=1, help="consumer processes (default 1)")
    p.add_argument("--no-scheduler", action="store_true", help="consumers and HTTP only")
    add("schedule", cmd_schedule, "the purge scheduler and HTTP endpoints only")
    p = add("consume", cmd_consume, "consume the category topics into PostgreSQL")
    p.add_argument("--workers", type=int, default=1, help="consumer processes (default 1)")
    p.add_argument("--until-idle", action="store_true", help="exit once caught up")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p = add("purge", cmd_purge, "run one purge pass now")
    p.add_argument("--dry-run", action="store_true", help="report, change nothing")
    p.add_argument("--category", action="append", help="only this category (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p = add("stats", cmd_stats, "records, partitions, expiry range and overdue per category")
    p.add_argument("--json", action="store_true", help="print as JSON")

    audit_p = sub.add_parser("audit", help="the audit trail: verify or export")
    audit_sub = audit_p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    p = audit_sub.add_parser("verify", help="recompute the hash chain")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_audit_verify)
    p = audit_sub.add_parser("export", help="JSON Lines, ending with the chain head")
    p.add_argument("--since", help="only entries recorded at or after this RFC 3339 time")
    p.add_argument("--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_audit_export)
    cli_holds.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``purger`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ctx = Context(args)
        code: int = args.func(ctx)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except PurgerError as exc:
        fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
