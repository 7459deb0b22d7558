"""Applying a policy: versions in the database, bounds, removed categories, the diff.

``purger migrate`` (and ``purger policy apply``) records each new policy version
with its digest, who applied it and when, in ``purger.policy_versions`` and the
audit trail. A category's rules (retention, tenant overrides, bounds) get a new
rule version only when they change; its stored records are then re-tagged
(purger/retag.py). A policy is refused, naming the category and the bound, when
it undercuts a minimum or exceeds a maximum that the applied version sets, when
it changes a bound without ``allow_bound_change``, or when it drops a category
that was not retired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from purger import applied_rules, audit
from purger.audit_entries import Entry, Kind
from purger.db import wrap_errors
from purger.durations import parse_duration
from purger.errors import PolicyError
from purger.partitions import ensure_category_table, parent_table
from purger.policy import Category, RetentionPolicy, shorter_somewhere
from purger.queries import query

POLICY_SQL = "policy.sql"
NEW, CHANGED, UNCHANGED = "new", "changed", "unchanged"
BOUNDS = ("minimum_retention", "maximum_retention")


@dataclass(frozen=True)
class Applied:
    """One category as the database has it."""

    name: str
    rule_version: int
    rules: dict[str, Any] | None
    digest: str | None
    retired_at: datetime | None
    dropped_at: datetime | None


@dataclass
class CategoryChange:
    """What applying the policy does to one category's rules."""

    category: str
    status: str
    old: dict[str, Any] | None
    new: dict[str, Any]
    bounds_changed: bool = False


@dataclass
class Plan:
    """What applying a policy would do, and why it would be refused."""

    label: str
    digest: str
    changes: list[CategoryChange] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    current_digest: str | None = None

    @property
    def needs_version(self) -> bool:
        """True when the policy differs from the last one applied (rules or not)."""
        return self.digest != self.current_digest

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        return {
            "label": self.label,
            "digest": self.digest,
            "applied_digest": self.current_digest,
            "refusals": self.refusals,
            "categories": {
                c.category: {
                    "status": c.status,
                    "bounds_changed": c.bounds_changed,
                    "from": c.old,
                    "to": c.new,
                }
                for c in self.changes
            },
        }


def applied_categories(conn: psycopg.Connection[Any]) -> dict[str, Applied]:
    """Every category the database knows, with its current rules."""
    rows = conn.execute(query("applied_categories", POLICY_SQL)).fetchall()
    return {
        str(r[0]): Applied(str(r[0]), int(r[1]), dict(r[2]) if r[2] else None, r[3], r[4], r[5])
        for r in rows
    }


def current(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    """The last applied policy version: version, label, digest, applied_at, applied_by."""
    row = conn.execute(query("current_policy", POLICY_SQL)).fetchone()
    if row is None:
        return None
    return dict(zip(("version", "label", "digest", "applied_at", "applied_by"), row, strict=True))


def plan(
    conn: psycopg.Connection[Any], policy: RetentionPolicy, *, allow_bound_change: bool = False
) -> Plan:
    """Compare ``policy`` with the applied one; the refusals say what stops it."""
    applied = applied_categories(conn)
    current = conn.execute(query("current_policy", POLICY_SQL)).fetchone()
    result = Plan(policy.version, policy.digest, current_digest=current[2] if current else None)
    for name, category in sorted(policy.categories.items()):
        before = applied.get(name)
        new = category.rules()
        if before is not None and before.retired_at is not None:
            result.refusals.append(
                f"category {name}: retired on {before.retired_at:%Y-%m-%d}; remove it from the "
                "policy (a retired category does not come back under the same name)"
            )
            continue
        if before is None or before.rules is None:
            result.changes.append(CategoryChange(name, NEW, None, new))
            continue
        if before.digest == category.rule_digest:
            result.changes.append(CategoryChange(name, UNCHANGED, before.rules, new))
            continue
        change = CategoryChange(name, CHANGED, before.rules, new)
        change.bounds_changed = any(before.rules.get(b) != new[b] for b in BOUNDS)
        if change.bounds_changed and not allow_bound_change:
            moved = ", ".join(
                f"{b} {before.rules.get(b) or 'unset'} -> {new[b] or 'unset'}"
                for b in BOUNDS
                if before.rules.get(b) != new[b]
            )
            result.refusals.append(
                f"category {name}: changes its bounds ({moved}); give --allow-bound-change "
                "to change a legal bound (the change is audited)"
            )
        if not change.bounds_changed:
            result.refusals.extend(_outside_bounds(name, category, before.rules))
        result.changes.append(change)
    for name, before in sorted(applied.items()):
        if name in policy.categories or before.retired_at is not None:
            continue
        if before.rules is None and before.rule_version == 0:
            # Registered by a process but never part of an applied policy.
            continue
        result.refusals.append(
            f"category {name}: stored by the applied policy but missing from this one; "
            f"retire it first with `purger policy retire {name}` (its records are then "
            "destroyed at the next pass, held ones kept), or put it back"
        )
    return result


def _outside_bounds(name: str, category: Category, old: dict[str, Any]) -> list[str]:
    # The applied version's bounds bind the new rules (the file's own bounds were
    # checked when it was loaded).
    found = []
    spans = [("retention", category.policy.retention)] + [
        (f"tenant_overrides.{t}", d) for t, d in sorted(category.policy.tenant_overrides.items())
    ]
    low, high = old.get("minimum_retention"), old.get("maximum_retention")
    for key, duration in spans:
        if low and shorter_somewhere(duration, parse_duration(low)):
            found.append(f"category {name}: {key} {duration} is under minimum_retention {low}")
        if high and shorter_somewhere(parse_duration(high), duration):
            found.append(f"category {name}: {key} {duration} is over maximum_retention {high}")
    return found


def apply(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    *,
    applied_by: str,
    allow_bound_change: bool = False,
) -> tuple[Plan, int | None]:
    """Apply ``policy``: a new version when it differs; (the plan, the new version or None).

    Raises PolicyError with every refusal. Category tables are created for new
    categories. Each category whose rules change gets a new rule version under
    its ingest lock, taken exclusively: no batch tagged by the old rules commits
    after it; its re-tagging starts from the beginning.
    """
    with wrap_errors("apply the policy"), conn.transaction():
        conn.execute(query("policy_lock", POLICY_SQL))
        result = plan(conn, policy, allow_bound_change=allow_bound_change)
        if result.refusals:
            raise PolicyError(
                f"policy {policy.version} ({policy.source}) refused:\n  "
                + "\n  ".join(result.refusals)
            )
        if not result.needs_version and all(c.status == UNCHANGED for c in result.changes):
            return result, None
        for change in result.changes:
            if change.status == NEW:
                ensure_category_table(conn, policy.category(change.category))
        row = conn.execute(
            query("insert_policy_version", POLICY_SQL),
            {
                "label": policy.version,
                "digest": policy.digest,
                "rules": Jsonb({c.category: c.new for c in result.changes}),
                "applied_by": applied_by,
            },
        ).fetchone()
        assert row is not None
        version = int(row[0])
        changed: dict[str, Any] = {}
        for change in result.changes:
            if change.status == UNCHANGED:
                continue
            name = change.category
            conn.execute(query("ingest_lock_exclusive"), {"category": name})
            rule_row = conn.execute(
                query("insert_category_rules", POLICY_SQL),
                {
                    "category": name,
                    "policy_version": version,
                    "rules": Jsonb(change.new),
                    "digest": policy.category(name).rule_digest,
                },
            ).fetchone()
            assert rule_row is not None
            rule_version = int(rule_row[0])
            conn.execute(
                query("set_rule_version", POLICY_SQL),
                {"category": name, "rule_version": rule_version},
            )
            if change.status == CHANGED or _has_records(conn, name):
                # A category new to versioning may hold records tagged before it
                # (rule version 0): they are re-tagged like any older version.
                conn.execute(
                    query("retag_progress_start", POLICY_SQL),
                    {"category": name, "rule_version": rule_version},
                )
            changed[name] = {
                "status": change.status,
                "rule_version": rule_version,
                "from": change.old,
                "to": change.new,
                "bounds_changed": change.bounds_changed,
            }
        audit.record(
            conn,
            Entry(
                Kind.POLICY_APPLIED,
                {
                    "policy_version": version,
                    "label": policy.version,
                    "digest": policy.digest,
                    "applied_by": applied_by,
                    "categories": changed,
                },
            ),
        )
    return result, version


def _has_records(conn: psycopg.Connection[Any], category: str) -> bool:
    row = conn.execute(
        query("has_records", POLICY_SQL).format(parent=sql.Identifier(parent_table(category)))
    ).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class TenantDiff:
    """How a policy changes one tenant's stored records of one category."""

    tenant: str
    records: int
    changed: int
    earlier: int
    due_now: int


def diff(
    conn: psycopg.Connection[Any], policy: RetentionPolicy, now: datetime | None = None
) -> dict[str, list[TenantDiff]]:
    """Per changed category and tenant: records whose expiry changes, moves earlier, falls due.

    Counted in SQL over the stored (not held) records, before anything is applied.
    """
    result: dict[str, list[TenantDiff]] = {}
    applied = applied_categories(conn)
    instant = now or datetime.now(UTC)
    for name, category in sorted(policy.categories.items()):
        before = applied.get(name)
        if before is None or before.digest == category.rule_digest or before.dropped_at:
            continue
        rows = applied_rules.expiry_diff(
            conn,
            name,
            category.policy.retention,
            dict(category.policy.tenant_overrides),
            now=instant,
            below_version=2**31 - 1,
        )
        result[name] = [TenantDiff(*r) for r in rows]
    return result
