"""Commands of the Kafka topics' retention: check, apply, create."""

from __future__ import annotations

import sys
from typing import Any

from purger.cli.context import Context, add_command, log, print_json
from purger.exits import EXIT_FAILURE, EXIT_OK
from purger.ingest import IngestPlugin, load_plugin
from purger.topic_retention import DEAD_LETTER, SOURCE, TopicCheck, check_topics


def _check(ctx: Context, plugin: IngestPlugin) -> list[TopicCheck]:
    return check_topics(ctx.policy, lambda topics: plugin.describe_topics(ctx.settings, topics))


def _print_checks(checks: list[TopicCheck]) -> None:
    print(
        f"{'topic':<40} {'kind':<11} {'allowed ms':>12} {'retention.ms':>14} "
        f"{'cleanup':<15} {'excess s':>10}  verdict"
    )
    for c in checks:
        cfg = c.config
        verdict = "missing" if cfg is None else ("FINDING" if c.finding else "ok")
        print(
            f"{c.target.topic:<40} {c.target.kind:<11} {c.target.allowed_ms:>12} "
            f"{(cfg.retention_ms if cfg else '-')!s:>14} "
            f"{(cfg.cleanup_policy if cfg else '-')!s:<15} {c.excess_seconds:>10.0f}  {verdict}"
        )
        for problem in c.problems:
            print(f"    {problem}")


def cmd_topics_check(ctx: Context) -> int:
    checks = _check(ctx, load_plugin())
    findings = [c for c in checks if c.finding]
    if ctx.args.json:
        print_json({"findings": len(findings), "topics": [c.as_dict() for c in checks]})
    else:
        _print_checks(checks)
        print(f"{len(findings)} topic(s) may keep records longer than the policy allows")
    return EXIT_FAILURE if findings else EXIT_OK


def _selected(ctx: Context, check: TopicCheck) -> bool:
    args = ctx.args
    if args.topic and check.target.topic not in args.topic:
        return False
    return not (args.kind and check.target.kind != args.kind)


def cmd_topics_apply(ctx: Context) -> int:
    args = ctx.args
    plugin = load_plugin()
    before = [c for c in _check(ctx, plugin) if _selected(ctx, c)]
    changes = {c.target.topic: c.changes for c in before if c.changes}
    errors: dict[str, str | None] = {}
    if changes and not args.dry_run:
        errors = plugin.alter_topics(ctx.settings, changes)
        for topic, configs in changes.items():
            if errors.get(topic) is None:
                log.warning("topic %s reconfigured: %s", topic, configs)
    after = [c for c in _check(ctx, plugin) if _selected(ctx, c)] if not args.dry_run else before
    remaining = [c for c in after if c.finding]
    failed = {t: e for t, e in errors.items() if e is not None}
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "changes": changes,
                "errors": failed,
                "remaining_findings": len(remaining),
                "topics": [c.as_dict() for c in after],
            }
        )
    else:
        for topic, configs in changes.items():
            done = "would set" if args.dry_run else ("FAILED" if topic in failed else "set")
            settings = ", ".join(f"{k}={v}" for k, v in configs.items())
            print(f"{topic}: {done} {settings}{f' ({failed[topic]})' if topic in failed else ''}")
        if not changes:
            print("nothing to change")
        for topic, error in failed.items():
            print(f"purger: {topic}: {error}", file=sys.stderr)
    if args.dry_run:
        return EXIT_OK
    return EXIT_FAILURE if remaining or failed else EXIT_OK


def cmd_topics_create(ctx: Context) -> int:
    created = load_plugin().ensure_topics(ctx.settings, ctx.policy, ctx.args.partitions)
    if ctx.args.json:
        print_json({"created": created})
    else:
        print(f"topics created: {', '.join(created) if created else 'none (all exist)'}")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``topics check|apply|create`` to the ``purger`` command's subparsers."""
    topics_p = sub.add_parser(
        "topics", help="the retention of the source and dead-letter topics against the policy"
    )
    topics_sub = topics_p.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    p = add_command(
        topics_sub,
        "check",
        cmd_topics_check,
        "read retention.ms, retention.bytes, cleanup.policy of every source and dead-letter "
        "topic and report those that may keep a record longer than the policy allows "
        "(exit 1 when any does)",
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    p = add_command(
        topics_sub,
        "apply",
        cmd_topics_apply,
        "set retention.ms to the allowed span and cleanup.policy=delete on the topics that "
        "break the policy (only the configs at fault; needs AlterConfigs on the topics)",
    )
    p.add_argument(
        "--topic", action="append", help="only this topic (repeatable); default: every topic"
    )
    p.add_argument(
        "--kind", choices=(SOURCE, DEAD_LETTER), help="only source or dead-letter topics"
    )
    p.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p = add_command(
        topics_sub,
        "create",
        cmd_topics_create,
        "create the missing source and dead-letter topics with the policy's retention "
        "(dead-letter topics with dead_letter_replication_factor replicas)",
    )
    p.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    p.add_argument("--json", action="store_true", help="print as JSON")
