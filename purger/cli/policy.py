"""Policy lifecycle commands: policy show, diff, apply, retire, retag."""

from __future__ import annotations

from typing import Any

from purger import policy_versions, retirement
from purger.cli.context import Context, add_command, print_json
from purger.db import connect
from purger.exits import EXIT_OK
from purger.retag import Retagger
from purger.storage import Storage


def cmd_show(ctx: Context) -> int:
    with connect(ctx.settings.conninfo(), application="cli") as conn:
        current = policy_versions.current(conn)
        applied = policy_versions.applied_categories(conn)
        retagger = Retagger(conn, Storage(ctx.settings.conninfo(), ctx.policy).partitions)
        categories: dict[str, Any] = {}
        for name, known in applied.items():
            categories[name] = {
                "rule_version": known.rule_version,
                "rules": known.rules,
                "retired_at": known.retired_at,
                "dropped_at": known.dropped_at,
                "records_to_retag": 0
                if known.dropped_at
                else retagger.stale(name, known.rule_version),
            }
    result = {
        "applied": current,
        "file": {"label": ctx.policy.version, "digest": ctx.policy.digest},
        "categories": categories,
    }
    if ctx.args.json:
        print_json(result)
        return EXIT_OK
    a: dict[str, Any] | None = current
    print(
        f"applied: version {a['version']} ({a['label']}, digest {a['digest']}) "
        f"by {a['applied_by']} at {a['applied_at']}"
        if a
        else "applied: none"
    )
    print(f"file:    {ctx.policy.version} (digest {ctx.policy.digest})")
    for name, c in categories.items():
        state = "dropped" if c["dropped_at"] else "retired" if c["retired_at"] else "active"
        rules = c["rules"] or {}
        print(
            f"  {name:<16} {state:<8} rule v{c['rule_version']}  retention "
            f"{rules.get('retention', '-')}  to re-tag: {c['records_to_retag']}"
        )
    return EXIT_OK


def cmd_diff(ctx: Context) -> int:
    with connect(ctx.settings.conninfo(), application="cli") as conn:
        plan = policy_versions.plan(
            conn, ctx.policy, allow_bound_change=ctx.args.allow_bound_change
        )
        counts = policy_versions.diff(conn, ctx.policy)
    result = plan.as_dict()
    for name, tenants in counts.items():
        result["categories"][name]["records"] = {
            t.tenant: {
                "records": t.records,
                "expiry_changes": t.changed,
                "earlier": t.earlier,
                "due_at_once": t.due_now,
            }
            for t in tenants
        }
    if ctx.args.json:
        print_json(result)
        return EXIT_OK
    print(f"policy {plan.label} (digest {plan.digest}) against applied {plan.current_digest}")
    for name, c in result["categories"].items():
        print(f"  {name:<16} {c['status']}" + (" (bounds change)" if c["bounds_changed"] else ""))
        if c["status"] == "changed":
            print(f"    from {c['from']}\n    to   {c['to']}")
        for tenant, n in c.get("records", {}).items():
            print(
                f"    tenant {tenant}: {n['expiry_changes']} of {n['records']} records change "
                f"expiry, {n['earlier']} earlier, {n['due_at_once']} due at once"
            )
    for refusal in plan.refusals:
        print(f"  refused: {refusal}")
    return EXIT_OK


def cmd_apply(ctx: Context) -> int:
    with ctx.storage("policy-apply") as storage:
        storage.migrate(
            ctx.settings.partitions_ahead,
            runtime_user=ctx.settings.database_runtime_user,
            applied_by=ctx.actor(ctx.args.by),
            allow_bound_change=ctx.args.allow_bound_change,
        )
        with connect(ctx.settings.conninfo(), application="cli") as conn:
            result = policy_versions.current(conn) or {}
    if ctx.args.json:
        print_json(result)
    else:
        print(
            f"applied policy version {result.get('version')} ({result.get('label')}); "
            "changed categories are re-tagged by the scheduler (or `purger policy retag`)"
        )
    return EXIT_OK


def cmd_retire(ctx: Context) -> int:
    with connect(ctx.settings.conninfo(), application="cli") as conn:
        result = retirement.retire(conn, ctx.args.category, retired_by=ctx.actor(ctx.args.by))
    if ctx.args.json:
        print_json(result)
    else:
        print(
            f"category {result['category']} retired: its {result['records']} records are "
            f"destroyed at the next pass ({result['held']} held ones kept while held), then "
            "its tables are dropped"
        )
    return EXIT_OK


def cmd_retag(ctx: Context) -> int:
    names = ctx.args.category or sorted(ctx.policy.categories)
    for name in names:
        ctx.policy.category(name)
    reports = {}
    with connect(ctx.settings.conninfo(), application="retag") as conn:
        retagger = Retagger(
            conn,
            Storage(ctx.settings.conninfo(), ctx.policy, ctx.settings.granularity).partitions,
        )
        for name in names:
            report = retagger.run(name, budget_seconds=ctx.args.budget_seconds)
            reports[name] = vars(report)
    if ctx.args.json:
        print_json(reports)
    else:
        for name, r in reports.items():
            state = "done" if r["finished"] else f"{r['remaining']} left"
            print(f"  {name:<16} re-tagged {r['retagged']} (moved {r['moved']}), {state}")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``policy ...`` to the ``purger`` command's subparsers."""
    p = add_command(sub, "policy", lambda ctx: EXIT_OK, "the applied retention policy")
    group = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    s = add_command(group, "show", cmd_show, "the applied policy, rule versions, re-tag backlog")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s = add_command(
        group, "diff", cmd_diff, "what applying the policy file would change, per tenant"
    )
    s.add_argument("--allow-bound-change", action="store_true", help="judge as apply would")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s = add_command(group, "apply", cmd_apply, "apply the policy file (as `purger migrate`)")
    s.add_argument(
        "--allow-bound-change",
        action="store_true",
        help="allow changing minimum_retention/maximum_retention (audited)",
    )
    s.add_argument("--by", help="who applies it (audit trail); default: the OS user")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s = add_command(
        group, "retire", cmd_retire, "retire a category: all its records destroyed next pass"
    )
    s.add_argument("category", help="the category to retire")
    s.add_argument("--by", help="who retires it (audit trail); default: the OS user")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s = add_command(group, "retag", cmd_retag, "re-tag stored records to the current rules now")
    s.add_argument("--category", action="append", help="only this category (repeatable)")
    s.add_argument(
        "--budget-seconds", type=float, default=None, help="stop after this long (resumable)"
    )
    s.add_argument("--json", action="store_true", help="print as JSON")
