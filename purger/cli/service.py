"""Commands of the long-running service: migrate, run, schedule, consume."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from typing import Any

from purger.cli.context import Context, add_command, log, print_json, stop_on_signals
from purger.errors import ConfigError
from purger.exits import EXIT_FAILURE, EXIT_OK
from purger.http import HealthServer
from purger.ingest import load_plugin
from purger.liveness import Liveness
from purger.metrics import Metrics
from purger.scheduler import PurgeScheduler
from purger.topic_retention import check_topics


def cmd_migrate(ctx: Context) -> int:
    with ctx.storage("migrate") as storage:
        applied = storage.migrate(
            ctx.settings.partitions_ahead,
            runtime_user=ctx.settings.database_runtime_user,
            applied_by=ctx.actor(ctx.args.by),
            allow_bound_change=ctx.args.allow_bound_change,
        )
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    print(f"category tables ready: {', '.join(ctx.policy.categories)}")
    return EXIT_OK


def _serve(ctx: Context, metrics: Metrics, *, kafka: bool, liveness: Liveness | None = None) -> Any:
    plugin = load_plugin() if kafka else None
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
    plugin = load_plugin()
    multiproc = plugin.metrics_directory() if args.workers > 1 else None
    metrics = ctx.metrics(ingest=multiproc is None)
    if multiproc is not None:
        multiproc.collector_into(metrics.registry)
    scheduler = None
    with stop_on_signals() as stop, contextlib.ExitStack() as stack:
        if multiproc is not None:
            stack.callback(multiproc.close)
        liveness = Liveness(ctx.settings.liveness_timeout_seconds)
        # The scheduler first: its gauges are set before /metrics is first served.
        if not args.no_scheduler:
            scheduler = _scheduler(ctx, metrics)
            scheduler.start()
            stack.callback(scheduler.shutdown)
        server = _serve(ctx, metrics, kafka=True, liveness=liveness)
        stack.callback(server.stop)
        summary = plugin.consume(
            ctx.settings, ctx.policy, metrics, stop, workers=args.workers, liveness=liveness
        )
        log.info("consumers stopped", extra={"count": summary["messages"]})
        if summary["errors"]:
            for error in summary["errors"]:
                log.error("worker failed: %s", error)
            return EXIT_FAILURE
    return EXIT_OK


def _topic_check(ctx: Context, metrics: Metrics) -> Callable[[], None] | None:
    """The periodic check of the topics' retention, when the Kafka side is installed."""
    try:
        plugin = load_plugin()
    except ConfigError:
        return None

    def check() -> None:
        checks = check_topics(
            ctx.policy, lambda topics: plugin.describe_topics(ctx.settings, topics), metrics
        )
        for c in checks:
            if c.finding:
                log.warning(
                    "topic %s may keep records longer than the policy allows: %s",
                    c.target.topic,
                    "; ".join(c.problems),
                )

    return check


def _scheduler(ctx: Context, metrics: Metrics) -> Any:
    return PurgeScheduler(
        ctx.purger(metrics),
        metrics,
        ctx.settings.purge_schedule,
        misfire_grace_seconds=ctx.settings.purge_misfire_grace_seconds,
        overdue_refresh_seconds=ctx.settings.overdue_refresh_seconds,
        leader_max_failures=ctx.settings.purge_leader_max_failures,
        leader_cooldown_ticks=ctx.settings.purge_leader_cooldown_ticks,
        topic_check=_topic_check(ctx, metrics),
        topic_check_interval_seconds=ctx.settings.topic_check_interval_seconds,
        granularity=ctx.settings.granularity,
        retag_budget_seconds=ctx.settings.retag_budget_seconds,
        partitions_ahead=ctx.settings.partitions_ahead,
    )


def cmd_schedule(ctx: Context) -> int:
    ctx.log_effective_config()
    metrics = ctx.metrics(ingest=False)
    with stop_on_signals() as stop, contextlib.ExitStack() as stack:
        # The scheduler first: its gauges are set before /metrics is first served.
        scheduler = _scheduler(ctx, metrics)
        scheduler.start()
        stack.callback(scheduler.shutdown)
        server = _serve(ctx, metrics, kafka=False)
        stack.callback(server.stop)
        stop.wait()
    return EXIT_OK


def cmd_consume(ctx: Context) -> int:
    args = ctx.args
    ctx.log_effective_config()
    plugin = load_plugin()
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
        print_json(summary)
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


def register(sub: Any) -> None:
    """Add the service commands to the ``purger`` command's subparsers."""
    p = add_command(
        sub,
        "migrate",
        cmd_migrate,
        "apply schema migrations and the policy (a new version when it changed), create tables",
    )
    p.add_argument(
        "--allow-bound-change",
        action="store_true",
        help="allow the policy to change minimum_retention/maximum_retention (audited)",
    )
    p.add_argument("--by", help="who applies the policy (audit trail); default: the OS user")
    p = add_command(
        sub, "run", cmd_run, "the service: consumers, purge scheduler and HTTP endpoints"
    )
    p.add_argument("--workers", type=int, default=1, help="consumer processes (default 1)")
    p.add_argument("--no-scheduler", action="store_true", help="consumers and HTTP only")
    add_command(sub, "schedule", cmd_schedule, "the purge scheduler and HTTP endpoints only")
    p = add_command(sub, "consume", cmd_consume, "consume the category topics into PostgreSQL")
    p.add_argument("--workers", type=int, default=1, help="consumer processes (default 1)")
    p.add_argument("--until-idle", action="store_true", help="exit once caught up")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
