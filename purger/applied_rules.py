"""The rules the database holds for a category: the applied policy, which ingestion obeys.

A process may run another policy file than the one applied (a rolling update, a
refused policy): records are tagged by the applied rules all the same, so that
what is stored never depends on which pod wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from purger.db import wrap_errors
from purger.durations import Duration, parse_duration
from purger.errors import RecordRefused
from purger.partitions import parent_table
from purger.queries import query
from purger.records import Record

POLICY_SQL = "policy.sql"


@dataclass(frozen=True)
class AppliedRules:
    """A category's current rule version as the database has it."""

    category: str
    rule_version: int
    rules: dict[str, Any]
    digest: str
    retired_at: datetime | None
    dropped_at: datetime | None = None

    @property
    def retention(self) -> Duration:
        """The category's retention."""
        return parse_duration(self.rules["retention"])

    def retention_for(self, tenant: str) -> Duration:
        """The retention of ``tenant``'s records (its override, else the category's)."""
        override = self.rules.get("tenant_overrides", {}).get(tenant)
        return parse_duration(override) if override else self.retention

    def expires_at(self, tenant: str, occurred_at: datetime) -> datetime:
        """The expiry these rules give a record (the arithmetic of purger/durations.py)."""
        return self.retention_for(tenant).add_to(occurred_at)

    def expiries(self, category: str, records: Sequence[Record]) -> list[datetime]:
        """The expiry of each record; RecordRefused names the first past the calendar."""
        out = []
        for index, record in enumerate(records):
            try:
                out.append(self.expires_at(record.tenant, record.occurred_at))
            except (OverflowError, ValueError):
                # As decoding treats its own expiry past the calendar: this record's
                # fault, dead-lettered by the sink (a retry would fail the same way).
                raise RecordRefused(
                    "occurred_at + the applied retention is out of range",
                    category=category,
                    index=index,
                ) from None
        return out

    def bound(self, name: str) -> Duration | None:
        """``minimum_retention`` or ``maximum_retention``, when set."""
        text = self.rules.get(name)
        return parse_duration(text) if text else None


def read(conn: psycopg.Connection[Any], category: str) -> AppliedRules | None:
    """The category's applied rules; None before any policy version was applied to it."""
    row = conn.execute(query("applied_rules", POLICY_SQL), {"category": category}).fetchone()
    if row is None or not row[0] or row[1] is None:
        return None
    return AppliedRules(category, int(row[0]), dict(row[1]), str(row[2]), row[3], row[4])


def of_version(
    conn: psycopg.Connection[Any], category: str, rule_version: int
) -> tuple[AppliedRules, int, str, datetime] | None:
    """A past or current rule version: the rules, their policy version, its label and date."""
    row = conn.execute(
        query("rules_of_version", POLICY_SQL),
        {"category": category, "rule_version": rule_version},
    ).fetchone()
    if row is None:
        return None
    rules = AppliedRules(category, rule_version, dict(row[0]), str(row[1]), None)
    return rules, int(row[2]), str(row[3]), row[4]


def expiry_diff(
    conn: psycopg.Connection[Any],
    category: str,
    default: Duration,
    overrides: dict[str, Duration],
    *,
    now: datetime,
    below_version: int,
) -> list[tuple[str, int, int, int, int]]:
    """Per tenant, over the stored records of a rule version below ``below_version``:
    (tenant, records, expiry changes, moves earlier, falls due at ``now``) under the rules
    ``default`` and ``overrides``. In SQL, in UTC, with the arithmetic of purger/durations.py.
    """
    ordered = sorted(overrides.items())
    with wrap_errors(f"compare the expiries of {category}"), conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        rows = conn.execute(
            query("expiry_diff", POLICY_SQL).format(parent=sql.Identifier(parent_table(category))),
            {
                "tenants": [t for t, _ in ordered],
                "months": [d.months for _, d in ordered],
                "secs": [d.exact.total_seconds() for _, d in ordered],
                "default_months": default.months,
                "default_secs": default.exact.total_seconds(),
                "now": now,
                "below_version": below_version,
            },
        ).fetchall()
    return [(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]
