"""The ``purger request ...`` commands: data-subject requests from receipt to closing.

``open`` registers a request with its deadline, ``extend`` extends it once
(Art. 12(3)), ``erase`` carries out an erasure (``--dry-run``: what would go and
what would stay, and why), ``export`` answers an access request, ``close``
closes any request, which then forgets its subject. Exit codes: 0 done, 1
refused or failed (unknown or closed request, restricted records, records still
held), 2 a mistake in the request; every error is one line on stderr and names
no identifier. Identifiers appear in the output of ``open``, ``show`` and
``export`` only, never in logs, errors or the audit trail.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Any, TextIO

from psycopg import sql

from purger import access_report, erasure, request_rules, restriction, subject_requests
from purger.cli.context import SELECTOR_FLAGS, Context, print_json, private_file
from purger.db import connect
from purger.exits import EXIT_OK, EXIT_USAGE, fail
from purger.hold_scope import SELECTORS
from purger.request_rules import InvalidRequest
from purger.subject_requests import SubjectRequest


@contextmanager
def _usage_errors() -> Iterator[None]:
    # A mistake in the request: one line and exit 2, never a traceback.
    try:
        yield
    except InvalidRequest as exc:
        fail(str(exc), EXIT_USAGE)


@contextmanager
def _conn(ctx: Context) -> Iterator[Any]:
    with connect(ctx.settings.conninfo(), autocommit=True, application="requests") as conn:
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(
                sql.Literal(f"{ctx.settings.lock_timeout_ms}ms")
            )
        )
        yield conn


def _received(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest("--received must be a date, YYYY-MM-DD") from None


def _summary(request: SubjectRequest, today: date) -> str:
    state = "open" if request.open else "closed"
    if request.overdue(today):
        state = "OVERDUE"
    who = ", ".join(f"{n} {k}" for k, n in sorted(request.selectors().items()))
    return (
        f"{request.id:>6}  {request.type:<11} {state:<8} {request.received_on.isoformat():<11} "
        f"{request.deadline.isoformat():<11} {request.ref:<20} {who}"
    )


# -- commands ------------------------------------------------------------------------------
def cmd_request_open(ctx: Context) -> int:
    """Register a request; print its id and deadline."""
    args = ctx.args
    with _usage_errors():
        keys = request_rules.subject_keys(
            {kind: getattr(args, kind) or [] for kind in SELECTORS},
            ctx.settings.default_country_code,
        )
        received = _received(args.received)
        with _conn(ctx) as conn:
            request = subject_requests.open_request(
                conn,
                request_type=args.type,
                keys=keys,
                received=received,
                ref=args.ref,
                opened_by=args.by,
            )
            today = subject_requests.db_today(conn)
    if args.json:
        print_json(request.as_dict(today))
    else:
        print(
            f"subject request {request.id} ({request.type}) opened; "
            f"answer by {request.deadline.isoformat()}"
        )
    return EXIT_OK


def cmd_request_list(ctx: Context) -> int:
    """The requests, oldest first."""
    args = ctx.args
    with _conn(ctx) as conn:
        found = subject_requests.list_requests(conn, open_only=args.open)
        today = subject_requests.db_today(conn)
    if args.json:
        print_json([r.as_dict(today) for r in found])
        return EXIT_OK
    print(f"{'id':>6}  {'type':<11} {'state':<8} {'received':<11} {'deadline':<11} ref")
    for r in found:
        print(_summary(r, today))
    return EXIT_OK


def cmd_request_show(ctx: Context) -> int:
    """One request; for an open erasure, what an erasure would do now."""
    args = ctx.args
    with _conn(ctx) as conn:
        request = subject_requests.get(conn, args.id)
        today = subject_requests.db_today(conn)
        body = request.as_dict(today)
        if request.open and request.type == "restriction":
            _, restricted = restriction.restricted_records(conn, ctx.policy, request.keys)
            body["restricted_records"] = restricted
        if request.open and request.type == "erasure":
            body["erasure"] = erasure.erase(conn, ctx.policy, request.id, dry_run=True).as_dict()
    if args.json:
        print_json(body)
        return EXIT_OK
    for key, value in body.items():
        if value is not None and key not in ("erasure",):
            print(f"  {key + ':':<18} {value}")
    if "erasure" in body:
        _print_erasure(body["erasure"])
    return EXIT_OK


def cmd_request_extend(ctx: Context) -> int:
    """Extend the deadline by two months, with the reason."""
    args = ctx.args
    with _usage_errors(), _conn(ctx) as conn:
        request = subject_requests.extend(conn, args.id, reason=args.reason, extended_by=args.by)
        today = subject_requests.db_today(conn)
    if args.json:
        print_json(request.as_dict(today))
    else:
        print(f"subject request {request.id}: deadline extended to {request.deadline.isoformat()}")
    return EXIT_OK


def _print_erasure(report: dict[str, Any]) -> None:
    verb = "would erase" if report["dry_run"] else "erased"
    print(f"request {report['request_id']}: {verb} {report['erased']}, kept {report['kept']}")
    for name, c in report["categories"].items():
        print(f"  {name:<16} {verb} {c['erased']:>6}   legal basis: {c['legal_basis']}")
        for reason in c["reasons"]:
            print(f"  {'':<16} {reason}")


def cmd_request_erase(ctx: Context) -> int:
    """Carry out (or plan) an erasure request."""
    args = ctx.args
    with _conn(ctx) as conn:
        report = erasure.erase(conn, ctx.policy, args.id, dry_run=args.dry_run)
    if args.json:
        print_json(report.as_dict())
    else:
        _print_erasure(report.as_dict())
    for problem in report.vacuum_problems:
        print(f"purger: warning: {problem}", file=sys.stderr)
    return EXIT_OK


def cmd_request_export(ctx: Context) -> int:
    """Answer an access request: the subject's records and why they are kept."""
    args = ctx.args
    with _usage_errors(), _conn(ctx) as conn:
        found = access_report.answer(
            conn,
            ctx.policy,
            args.id,
            exported_by=args.by,
            output_format=args.format,
            purpose=args.purpose,
        )
    out: TextIO = private_file(args.output) if args.output else sys.stdout
    try:
        if args.format == "csv":
            writer = csv.DictWriter(out, fieldnames=access_report.CSV_FIELDS)
            writer.writeheader()
            writer.writerows(found.csv_rows())
        else:
            print_json(found.as_dict(), out)
    finally:
        if out is not sys.stdout:
            out.close()
    return EXIT_OK


def cmd_request_close(ctx: Context) -> int:
    """Close a request; it forgets its subject. An erasure documents its exceptions."""
    args = ctx.args
    with _usage_errors(), _conn(ctx) as conn:
        request, documented = subject_requests.close(
            conn,
            args.id,
            reason=args.reason,
            closed_by=args.by,
            exceptions=erasure.exceptions_at_close(conn, ctx.policy, accept=args.with_exceptions),
        )
        today = subject_requests.db_today(conn)
    if args.json:
        print_json({**request.as_dict(today), "exceptions": documented})
        return EXIT_OK
    print(f"subject request {request.id} closed; its identifiers are forgotten")
    for name, entry in documented.items():
        print(f"  exception {name}: {entry}")
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------
def _json_flag(p: Any) -> None:
    p.add_argument("--json", action="store_true", help="print as JSON")


def register(sub: Any) -> None:
    """Add ``request`` to the ``purger`` command's subparsers."""
    req = sub.add_parser(
        "request",
        help="data-subject requests: erasure, restriction, access (GDPR Art. 15-18)",
        description=(
            "Data-subject requests, each answered within one month of receipt (Art. 12(3))."
        ),
    )
    req_sub = req.add_subparsers(dest="request_command", required=True, metavar="ACTION")

    p = req_sub.add_parser(
        "open",
        help="register a request and its deadline",
        description=(
            "Register a request. An erasure is carried out by `request erase`; a restriction "
            "takes effect now and lasts until the request is closed; an access request is "
            "answered by `request export`. Identifiers are normalised as on ingestion."
        ),
    )
    p.add_argument("--type", required=True, choices=request_rules.REQUEST_TYPES)
    for kind, flag in SELECTOR_FLAGS.items():
        p.add_argument(flag, dest=kind, action="append", metavar="X", help=f"{kind} (repeatable)")
    p.add_argument("--received", required=True, metavar="YYYY-MM-DD", help="date of receipt")
    p.add_argument(
        "--ref", required=True, help="request reference (free text kept forever: no personal data)"
    )
    p.add_argument("--by", required=True, help="who registers it")
    _json_flag(p)
    p.set_defaults(func=cmd_request_open)

    p = req_sub.add_parser("list", help="list requests, oldest first")
    p.add_argument("--open", action="store_true", help="only open requests")
    _json_flag(p)
    p.set_defaults(func=cmd_request_list)

    p = req_sub.add_parser("show", help="one request (an open erasure: what it would do now)")
    p.add_argument("id", type=int, help="request id")
    _json_flag(p)
    p.set_defaults(func=cmd_request_show)

    p = req_sub.add_parser("extend", help="extend the deadline by two months (once)")
    p.add_argument("id", type=int, help="request id")
    p.add_argument("--reason", required=True, help="why (free text, no personal data)")
    p.add_argument("--by", required=True, help="who extends it")
    _json_flag(p)
    p.set_defaults(func=cmd_request_extend)

    p = req_sub.add_parser(
        "erase",
        help="erase the subject's records (Art. 17), except where the law says keep",
        description=(
            "Destroy every record of the subject, except in categories whose legal basis is "
            "a legal obligation and records under an active legal hold (erased by the first "
            "pass after the release, while the request is open). Records of the subject that "
            "arrive later, dated before the erasure, are erased by every pass until it closes."
        ),
    )
    p.add_argument("id", type=int, help="request id")
    p.add_argument("--dry-run", action="store_true", help="show what would go, what stays, why")
    _json_flag(p)
    p.set_defaults(func=cmd_request_erase)

    p = req_sub.add_parser(
        "export",
        help="answer an access request (Art. 15): records, purposes, legal bases, destruction",
    )
    p.add_argument("id", type=int, help="request id")
    p.add_argument("--by", required=True, help="who hands it over")
    p.add_argument("--format", choices=access_report.FORMATS, default="json", help="default json")
    p.add_argument(
        "--json", dest="format", action="store_const", const="json", help="same as --format json"
    )
    p.add_argument("--output", help="write to this file (created 0600) instead of stdout")
    p.add_argument(
        "--purpose",
        help="for restricted records: a purpose Art. 18(2) allows "
        "(consent, legal-claims, protection-of-rights, public-interest)",
    )
    p.set_defaults(func=cmd_request_export)

    p = req_sub.add_parser("close", help="close a request; it forgets the subject's identifiers")
    p.add_argument("id", type=int, help="request id")
    p.add_argument("--reason", required=True, help="outcome (free text, no personal data)")
    p.add_argument("--by", required=True, help="who closes it")
    p.add_argument(
        "--with-exceptions",
        action="store_true",
        help="an erasure whose records are still held: close it anyway, documenting them",
    )
    _json_flag(p)
    p.set_defaults(func=cmd_request_close)
