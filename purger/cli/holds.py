"""The ``purger hold ...`` and ``purger subject export`` commands.

Registered by ``purger.cli`` through ``register(sub)``. Exit codes: 0 done, 1 the
request was refused (unknown or already released hold) or failed, 2 a mistake
in the request (scope, identifier, time); every mistake is one line on stderr.
Identifiers appear in the command's output only, never in logs or errors. A
``--case-ref`` or ``--reason`` that looks like personal data (phone number, e-mail
or IP address) is refused with exit 2, naming the flag and never the value: the
audit trail keeps them forever.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TextIO

from purger import hold_registry, hold_scope, restriction, subject_export
from purger.cli.context import SELECTOR_FLAGS, Context, private_file
from purger.db import connect
from purger.errors import InvalidMessage
from purger.exits import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, fail
from purger.records import parse_timestamp
from purger.request_rules import InvalidRequest

_CSV_FIELDS = (
    "category",
    "record_id",
    "storage",
    "tenant",
    "occurred_at",
    "expires_at",
    "ingested_at",
    "holds",
    "subjects",
    "payload",
    "source_topic",
    "source_partition",
    "source_offset",
)


def _json(value: Any, out: TextIO = sys.stdout) -> None:
    out.write(json.dumps(value, indent=2, default=str, ensure_ascii=False) + "\n")


@contextmanager
def _usage_errors() -> Iterator[None]:
    # A mistake in the request: one line and exit 2, never a traceback.
    try:
        yield
    except hold_scope.InvalidHold as exc:
        fail(str(exc), EXIT_USAGE)


def _timestamp(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value, flag)
    except InvalidMessage as exc:
        raise hold_scope.InvalidHold(exc.detail) from None


def _conn(ctx: Context) -> Any:
    return connect(ctx.settings.conninfo(), autocommit=True, application="holds")


def _scope_summary(hold: hold_registry.Hold) -> str:
    scope = hold.scope
    parts = []
    if scope.all_records:
        parts.append("all records")
    parts.extend(f"{n} {kind}" for kind, n in sorted(hold.selector_counts().items()))
    if scope.tenant is not None:
        parts.append(f"tenant {scope.tenant}")
    if scope.occurred_from or scope.occurred_to:
        start = scope.occurred_from.isoformat() if scope.occurred_from else "..."
        end = scope.occurred_to.isoformat() if scope.occurred_to else "..."
        parts.append(f"occurred {start} .. {end}")
    cats = ", ".join(scope.categories) if scope.categories else "all categories"
    return f"{'; '.join(parts)} in {cats}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items()) or "none"


# -- commands ------------------------------------------------------------------------------
def cmd_hold_place(ctx: Context) -> int:
    """Place a hold; print its id and what it preserves."""
    args = ctx.args
    with _usage_errors():
        scope = hold_scope.build_scope(
            ctx.policy,
            categories=args.category or (),
            subjects={kind: getattr(args, kind) or [] for kind in hold_scope.SELECTORS},
            tenant=args.tenant,
            occurred_from=_timestamp(args.occurred_from, "--occurred-from"),
            occurred_to=_timestamp(args.occurred_to, "--occurred-to"),
            all_records=args.all_records,
            default_country_code=ctx.settings.default_country_code,
        )
        with _conn(ctx) as conn:
            placement = hold_registry.place(
                conn,
                ctx.policy,
                scope,
                case_ref=args.case_ref,
                reason=args.reason,
                placed_by=args.by,
            )
    if args.json:
        _json(placement.as_dict())
    else:
        hold = placement.hold
        print(f"hold {hold.id} placed for case {hold.case_ref}: {_scope_summary(hold)}")
        print(f"  preserves now: {_counts(placement.preserved)}")
    lost = {n: c for n, c in placement.destroyed_while_placing.items() if c}
    if lost:
        print(
            f"purger: warning: a purge pass destroyed matching records while the hold was "
            f"being placed: {_counts(lost)}",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_hold_release(ctx: Context) -> int:
    """Release a hold."""
    args = ctx.args
    with _usage_errors(), _conn(ctx) as conn:
        hold = hold_registry.release(conn, args.id, released_by=args.by, reason=args.reason)
    if args.json:
        _json(hold.as_dict())
    else:
        print(
            f"hold {hold.id} (case {hold.case_ref}) released; its records go at the next pass "
            "unless another active hold covers them"
        )
    return EXIT_OK


def cmd_hold_list(ctx: Context) -> int:
    """List holds, oldest first."""
    args = ctx.args
    with _conn(ctx) as conn:
        found = hold_registry.list_holds(conn, active_only=args.active)
    if args.json:
        _json([h.as_dict() for h in found])
        return EXIT_OK
    print(f"{'id':>6}  {'state':<8} {'placed at':<25} {'case':<20} scope")
    for h in found:
        state = "active" if h.active else "released"
        print(
            f"{h.id:>6}  {state:<8} {h.placed_at.isoformat():<25} {h.case_ref:<20} "
            f"{_scope_summary(h)}"
        )
    return EXIT_OK


def cmd_hold_show(ctx: Context) -> int:
    """One hold: its scope and how many records it preserves now, per category."""
    args = ctx.args
    with _conn(ctx) as conn:
        hold = hold_registry.get(conn, args.id)
        preserved = hold_registry.held_now(conn, ctx.policy, hold)
        check = hold_registry.verify_scope(conn, hold)
    if args.json:
        _json({**hold.as_dict(), "preserved": preserved, "audited_scope": check.value})
        return EXIT_OK
    print(f"hold {hold.id}: {'active' if hold.active else 'released'}")
    print(f"  case:      {hold.case_ref}")
    print(f"  reason:    {hold.reason}")
    print(f"  placed:    {hold.placed_at.isoformat()} by {hold.placed_by}")
    if not hold.active:
        assert hold.released_at is not None
        print(f"  released:  {hold.released_at.isoformat()} by {hold.released_by}")
        print(f"  because:   {hold.release_reason}")
    print(f"  scope:     {_scope_summary(hold)}")
    for key in hold.scope.subject_keys or ():
        print(f"    {key}")
    print(f"  preserves: {_counts(preserved)}")
    print(f"  audit:     {_SCOPE_CHECKS[check]}")
    return EXIT_OK


_SCOPE_CHECKS = {
    hold_registry.ScopeCheck.MATCHES: "the stored scope matches its audited HMAC",
    hold_registry.ScopeCheck.DIFFERS: "the stored scope DIFFERS from its audited HMAC",
    hold_registry.ScopeCheck.RELEASED: (
        "released: its key is destroyed, the audited HMAC can no longer be linked to the scope"
    ),
    hold_registry.ScopeCheck.NO_KEY: (
        "placed before migration 0005: audited with an unkeyed digest, no key to check"
    ),
    hold_registry.ScopeCheck.NOT_AUDITED: "no audited HMAC of the scope was found",
}


def cmd_hold_verify_scope(ctx: Context) -> int:
    """Exit 0 when an active hold's stored scope matches the HMAC its placing audited."""
    args = ctx.args
    with _conn(ctx) as conn:
        check = hold_registry.verify_scope(conn, hold_registry.get(conn, args.id))
    if args.json:
        _json({"id": args.id, "audited_scope": check.value})
    else:
        print(f"hold {args.id}: {_SCOPE_CHECKS[check]}")
    return EXIT_OK if check is hold_registry.ScopeCheck.MATCHES else EXIT_FAILURE


def cmd_subject_export(ctx: Context) -> int:
    """Every stored record of one subject, with its expiry and covering holds."""
    args = ctx.args
    chosen = [(kind, getattr(args, kind)) for kind in hold_scope.SELECTORS if getattr(args, kind)]
    kind, raw = chosen[0]
    with _usage_errors():
        keys = subject_export.subject_keys_for(kind, raw, ctx.settings.default_country_code)
    try:
        # Restricted records (Art. 18) are refused, audited, before anything is written.
        with _conn(ctx) as conn:
            restriction.check_subject(
                conn, ctx.policy, keys, surface="subject export", purpose=args.purpose
            )
    except InvalidRequest as exc:
        fail(str(exc), EXIT_USAGE)
    out: TextIO = private_file(args.output) if args.output else sys.stdout
    try:
        with _conn(ctx) as conn:
            records = list(subject_export.export_subject(conn, ctx.policy, keys))
        if args.format == "csv":
            writer = csv.DictWriter(out, fieldnames=_CSV_FIELDS)
            writer.writeheader()
            for r in records:
                writer.writerow(subject_export.csv_row(r))
        else:
            _json({"subject": keys[0], "count": len(records), "records": records}, out)
    finally:
        if out is not sys.stdout:
            out.close()
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------
def register(sub: Any) -> None:
    """Add ``hold`` and ``subject`` to the ``purger`` command's subparsers."""
    hold_p = sub.add_parser(
        "hold",
        help="legal holds: place, release, list, show",
        description="Legal holds keep the records in their scope past expiry until released.",
    )
    hold_sub = hold_p.add_subparsers(dest="hold_command", required=True, metavar="ACTION")

    p = hold_sub.add_parser(
        "place",
        help="place a hold",
        description=(
            "Place a legal hold. Its scope is every given part at once (categories, "
            "subjects, tenant, occurred_at window); a record matches the subject part when "
            "it carries any of the given identifiers. Identifiers are normalised as on "
            "ingestion. Give a subject selector or --tenant, or --all-records explicitly."
        ),
    )
    p.add_argument(
        "--case-ref",
        required=True,
        help="case reference (required; free text kept forever in the audit trail: no "
        "personal data, a phone number, e-mail or IP address is refused)",
    )
    p.add_argument(
        "--reason",
        required=True,
        help="why the records must be kept (required; free text, no personal data)",
    )
    p.add_argument("--by", required=True, help="who places the hold")
    p.add_argument(
        "--category", action="append", help="only this category (repeatable; default all)"
    )
    for kind, flag in SELECTOR_FLAGS.items():
        p.add_argument(flag, dest=kind, action="append", metavar="X", help=f"{kind} (repeatable)")
    p.add_argument("--tenant", help="only records of this tenant")
    p.add_argument("--occurred-from", metavar="RFC3339", help="only records occurred at or after")
    p.add_argument("--occurred-to", metavar="RFC3339", help="only records occurred at or before")
    p.add_argument(
        "--all-records",
        action="store_true",
        help="hold every record of the scope (no subject selector and no tenant)",
    )
    p.add_argument("--json", action="store_true", help="print the hold as JSON")
    p.set_defaults(func=cmd_hold_place)

    p = hold_sub.add_parser("release", help="release a hold (never reactivated)")
    p.add_argument("id", type=int, help="hold id")
    p.add_argument("--by", required=True, help="who releases the hold")
    p.add_argument(
        "--reason", required=True, help="why it is released (free text, no personal data)"
    )
    p.add_argument("--json", action="store_true", help="print the hold as JSON")
    p.set_defaults(func=cmd_hold_release)

    p = hold_sub.add_parser("list", help="list holds, oldest first")
    p.add_argument("--active", action="store_true", help="only active holds")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_hold_list)

    p = hold_sub.add_parser("show", help="a hold's scope and the records it preserves now")
    p.add_argument("id", type=int, help="hold id")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_hold_show)

    p = hold_sub.add_parser(
        "verify-scope",
        help="check an active hold's stored scope against its audited HMAC",
        description=(
            "Exit 0 when the active hold's stored scope matches the HMAC (under the "
            "hold's own key) that its hold_placed audit entry recorded, 1 otherwise "
            "(differs, released so the key is destroyed, or placed before the keys existed)."
        ),
    )
    p.add_argument("id", type=int, help="hold id")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_hold_verify_scope)

    subject_p = sub.add_parser("subject", help="what is stored about one subject")
    subject_sub = subject_p.add_subparsers(dest="subject_command", required=True, metavar="ACTION")
    p = subject_sub.add_parser(
        "export",
        help="every stored record of a subject, with expiry and covering holds",
        description=(
            "Every stored record (live and held) that carries the identifier, across "
            "categories, with its expiry and the ids of the active holds that cover it. "
            "The output contains personal data: write it where the request allows."
        ),
    )
    selector = p.add_mutually_exclusive_group(required=True)
    for kind, flag in SELECTOR_FLAGS.items():
        selector.add_argument(flag, dest=kind, metavar="X", help=f"the subject's {kind}")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="default json")
    p.add_argument(
        "--json", dest="format", action="store_const", const="json", help="same as --format json"
    )
    p.add_argument("--output", help="write to this file instead of stdout")
    p.add_argument(
        "--purpose",
        help="for records under restriction (Art. 18): a purpose Art. 18(2) allows "
        "(consent, legal-claims, protection-of-rights, public-interest); audited",
    )
    p.set_defaults(func=cmd_subject_export)
