"""Commands of the audit trail: verify, export."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, TextIO

from purger import audit
from purger.cli.context import Context, print_json
from purger.db import connect
from purger.errors import ConfigError, InvalidMessage
from purger.exits import EXIT_FAILURE, EXIT_OK
from purger.ingest import load_plugin
from purger.records import parse_timestamp


def cmd_audit_verify(ctx: Context) -> int:
    anchors = None
    if ctx.args.anchors:
        anchors = load_plugin().read_anchors(ctx.settings)
        if not anchors:
            print(
                f"no audit heads anchored in {ctx.settings.audit_anchor_topic} yet",
                file=sys.stderr,
            )
    with connect(ctx.settings.conninfo(), autocommit=True, application="audit") as conn:
        result = audit.verify(conn, anchors)
    if ctx.args.json:
        print_json(result.as_dict())
    elif result.ok:
        checked = "" if anchors is None else f", {len(anchors)} anchored heads match"
        print(f"audit chain intact: {result.entries} entries, head {result.head_hash}{checked}")
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
        conn = stack.enter_context(
            connect(ctx.settings.conninfo(), autocommit=True, application="audit")
        )
        for line in audit.export(conn, since):
            out.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``audit verify|export`` to the ``purger`` command's subparsers."""
    audit_p = sub.add_parser("audit", help="the audit trail: verify or export")
    audit_sub = audit_p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    p = audit_sub.add_parser("verify", help="recompute the hash chain")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument(
        "--anchors",
        action="store_true",
        help="also check every audit head the passes published to audit_anchor_topic",
    )
    p.set_defaults(func=cmd_audit_verify)
    p = audit_sub.add_parser("export", help="JSON Lines, ending with the chain head")
    p.add_argument("--since", help="only entries recorded at or after this RFC 3339 time")
    p.add_argument("--output", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_audit_export)
