"""The ``purger explain`` command: why is this record still here (or what destroyed it)?

Registered by ``purger.cli`` through ``register(sub)``. Exit codes: 0 answered
(whatever the answer: live, held, due, destroyed, not stored), 1 the database
failed, 2 a mistake in the question (unknown category, identifier, timestamp);
every mistake is one line on stderr. The answer names record ids, tenants,
instants, rule versions and hold ids; never a subject identifier or a payload,
so explaining a restricted subject's records (Art. 18) reads no record contents.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from purger import explain, hold_scope, subject_export
from purger.cli.context import SELECTOR_FLAGS, Context, add_command, print_json
from purger.db import connect
from purger.errors import InvalidMessage
from purger.exits import EXIT_OK, EXIT_USAGE, fail
from purger.records import parse_timestamp


def _timestamp(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value, flag)
    except InvalidMessage as exc:
        fail(exc.detail, EXIT_USAGE)


def cmd_explain(ctx: Context) -> int:
    """Explain one record by id, or every stored record of one subject."""
    args = ctx.args
    chosen = [(kind, getattr(args, kind)) for kind in hold_scope.SELECTORS if getattr(args, kind)]
    if args.record_id is not None and not args.category:
        fail("--record-id needs --category", EXIT_USAGE)
    if chosen and (args.occurred_at or args.tenant):
        fail("--occurred-at and --tenant only go with --record-id", EXIT_USAGE)
    if args.tenant is not None and args.occurred_at is None:
        fail("--tenant goes with --occurred-at (the expiry of a missing record)", EXIT_USAGE)
    if args.limit < 1:
        fail("--limit must be at least 1", EXIT_USAGE)
    occurred_at = _timestamp(args.occurred_at, "--occurred-at")
    try:
        with connect(ctx.settings.conninfo(), autocommit=True, application="explain") as conn:
            if args.record_id is not None:
                result = explain.explain_record(
                    conn,
                    ctx.policy,
                    args.category,
                    args.record_id,
                    occurred_at=occurred_at,
                    tenant=args.tenant,
                )
            else:
                kind, raw = chosen[0]
                keys = subject_export.subject_keys_for(kind, raw, ctx.settings.default_country_code)
                result = explain.explain_subject(
                    conn,
                    ctx.policy,
                    keys,
                    categories=[args.category] if args.category else None,
                    limit=args.limit,
                )
    except (explain.InvalidExplain, hold_scope.InvalidHold) as exc:
        fail(str(exc), EXIT_USAGE)
    if args.json:
        print_json(result)
    elif args.record_id is not None:
        _print_record(result)
    else:
        _print_subject(result)
    return EXIT_OK


# -- text output ---------------------------------------------------------------------------
def _print_subject(result: dict[str, Any]) -> None:
    more = " (more exist: raise --limit)" if result["truncated"] else ""
    print(
        f"{result['count']} stored record(s) of the subject in "
        f"{', '.join(result['categories'])}{more}"
    )
    for record in result["records"]:
        print()
        _print_record(record)


def _rule_text(rule: dict[str, Any]) -> str:
    if rule.get("policy_version") is None:
        text = f"rule version {rule['rule_version']}"
        return f"{text} ({rule['note']})" if rule.get("note") else text
    return (
        f"rule version {rule['rule_version']}: retention {rule['retention']}, from policy "
        f"version {rule['policy_version']} ({rule['policy_label']}, applied "
        f"{rule['applied_at']})"
    )


def _print_record(r: dict[str, Any]) -> None:
    head = f"record {r['record_id']} of {r['category']}"
    if not r["stored"]:
        _print_missing(head, r)
        return
    print(f"{head}: {r['verdict'].upper()} (stored in {r['storage']} storage, {r['table']})")
    print(f"  tenant:      {r['tenant']}")
    print(f"  occurred at: {r['occurred_at']}")
    print(f"  expires at:  {r['expires_at']}")
    print(f"  rule:        {_rule_text(r['rule'])}")
    if r.get("retired_at"):
        print(f"  retired:     the category was retired at {r['retired_at']}")
    holds = ", ".join(f"{h['id']} (case {h['case_ref']})" for h in r["holds"]) or "none"
    print(f"  holds:       {holds}")
    retag = r.get("retag")
    if retag and retag["pending"]:
        then = retag["expires_at_under_current_rules"] if retag["changes_expiry"] else "unchanged"
        version = retag["current_rule_version"]
        print(f"  re-tag:      pending to rule version {version} (expiry {then})")
    due = f"yes, since {r['due_since']}" if r["due_since"] else ("yes" if r["due"] else "no")
    print(f"  due:         {due} (now {r['now']})")
    for reason in r["reasons"]:
        print(f"  why:         {reason['text']}")


def _print_missing(head: str, r: dict[str, Any]) -> None:
    print(f"{head}: {r['verdict'].upper().replace('_', ' ')}")
    print(f"  {r['text']}")
    if r.get("category_dropped_at"):
        print(f"  the category's tables were dropped at {r['category_dropped_at']}")
    for e in r.get("expiries", []):
        print(f"  expiry by rule version {e['rule_version']}: {e['expires_at']}")
    for e in r.get("destroyed_by", r.get("latest_destructions", [])):
        where = f" {e['partition']}" if e.get("partition") else ""
        print(
            f"  audit #{e['seq']} {e['kind']}{where} at {e['recorded_at']}, pass {e['pass_id']}: "
            f"{e['rows']} rows expiring {e['expiry_from']} .. {e['expiry_to']}"
        )


# -- parser -------------------------------------------------------------------------------
def register(sub: Any) -> None:
    """Add ``explain`` to the ``purger`` command's subparsers."""
    p = add_command(
        sub,
        "explain",
        cmd_explain,
        "why a record is still stored (expiry, rule, holds, due, why not purged), or what "
        "destroyed records of its expiry (from the audit trail)",
    )
    p.add_argument("--category", help="the record's category (required with --record-id)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--record-id", help="the record's id within its category")
    for kind, flag in SELECTOR_FLAGS.items():
        which.add_argument(
            flag,
            dest=kind,
            metavar="X",
            help=f"every stored record of the subject with this {kind}",
        )
    p.add_argument(
        "--occurred-at",
        metavar="RFC3339",
        help="for a record that is not stored: its occurred_at, to find the audit entry that "
        "destroyed records of the expiry it would have",
    )
    p.add_argument("--tenant", help="with --occurred-at: the record's tenant (overrides)")
    p.add_argument(
        "--limit", type=int, default=100, help="by subject: at most this many records (100)"
    )
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
