"""The subject export: every stored record of one person, with its expiry and holds.

Answers an access request (``purger subject export``). The output contains the
records' identifiers and payloads: it is for the operator only, never for logs.
Its CSV cells are neutralised against spreadsheet formula injection (``csv_row``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from purger.db import wrap_errors
from purger.hold_scope import check_selector, iso, selector_key
from purger.partitions import held_table
from purger.policy import RetentionPolicy
from purger.queries import template
from purger.stored_records import record_tables, relisting


def subject_keys_for(kind: str, raw: str, default_country_code: int = 31) -> list[str]:
    """The look-up key of one identifier, normalised as ingested; InvalidHold if invalid."""
    check_selector(kind)
    return [selector_key(kind, raw, default_country_code, label=kind)]


def export_subject(
    conn: psycopg.Connection[Any], policy: RetentionPolicy, keys: Sequence[str]
) -> Iterator[dict[str, Any]]:
    """Every stored record (live and held) carrying one of ``keys``, across categories.

    Each with its expiry and the ids of the active holds that cover it.
    """
    for category in policy.categories:
        yield from relisting(functools.partial(_export_category, conn, category, keys))


def _export_category(
    conn: psycopg.Connection[Any], category: str, keys: Sequence[str]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[tuple[datetime, str]] = set()
    held = held_table(category)
    with wrap_errors(f"export subject records of {category}"), conn.transaction():
        for source in record_tables(conn, category):
            rows = conn.execute(
                template("subject_records", source=sql.Identifier(source)),
                {"keys": list(keys), "category": category},
            ).fetchall()
            for r in rows:
                if (r[3], r[0]) in seen:
                    continue
                seen.add((r[3], r[0]))
                out.append(
                    {
                        "category": category,
                        "record_id": r[0],
                        "storage": "held" if source == held else "live",
                        "tenant": r[1],
                        "occurred_at": iso(r[2]),
                        "expires_at": iso(r[3]),
                        "ingested_at": iso(r[4]),
                        "subjects": r[5],
                        "payload": r[6],
                        "source_topic": r[7],
                        "source_partition": r[8],
                        "source_offset": r[9],
                        "holds": [int(h) for h in r[10]],
                    }
                )
    return out


# A spreadsheet reads a cell starting with one of these as a formula (OWASP: CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: Any) -> str:
    """``value`` as CSV cell text, with a leading ``'`` if a spreadsheet would run it."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_row(record: dict[str, Any]) -> dict[str, str]:
    """One exported record as CSV cells: lists and JSON flattened, every cell neutralised."""
    flat = {
        **record,
        "holds": " ".join(str(h) for h in record["holds"]),
        "subjects": json.dumps(record["subjects"], ensure_ascii=False),
        "payload": json.dumps(record["payload"], ensure_ascii=False),
    }
    return {key: neutralise_cell(value) for key, value in flat.items()}
