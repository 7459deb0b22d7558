"""``purger explain``: why a record is (still) stored, or what destroyed records like it.

For a stored record: its expiry, the rule and policy version that gave it, the
active holds covering it, whether it is due and, if due and still here, why (held;
no pass since it fell due; the last pass failing for its category, with outcome
and error; a re-tag pending under a newer rule version). For a record not stored:
the audit entries that destroyed records of the expiry it would have (given its
``occurred_at`` and tenant), else the category's latest destructions. The trail
names no record: this says what destroyed records *of that expiry*.

Read-only. An explanation names the record id, tenant, instants, rule versions
and hold ids, never the record's subjects or payload (and nothing here logs).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from purger.applied_rules import AppliedRules
from purger.audit_entries import Kind
from purger.db import wrap_errors
from purger.errors import PurgerError
from purger.hold_scope import iso
from purger.partitions import held_table, keys_table
from purger.policy import RetentionPolicy
from purger.purge_report import SEVERITY
from purger.queries import query
from purger.stored_records import record_tables, relisting

_SQL = "explain.sql"
_POLICY_SQL = "policy.sql"
DESTRUCTIONS = (Kind.PARTITION_DROPPED, Kind.ROWS_DELETED, Kind.HELD_ROWS_DELETED)
LATEST = 10
LIVE, HELD, DUE, DESTROYED, NOT_STORED = "live", "held", "due", "destroyed", "not_stored"


class InvalidExplain(PurgerError):
    """The question is wrong (unknown category, missing tenant): the operator corrects it."""


@dataclass(frozen=True)
class _Category:
    name: str
    rule_version: int
    retired_at: datetime | None
    dropped_at: datetime | None
    versions: dict[int, tuple[AppliedRules, int, str, datetime]]

    @property
    def current(self) -> AppliedRules | None:
        found = self.versions.get(self.rule_version)
        return found[0] if found else None


def _category(conn: psycopg.Connection[Any], policy: RetentionPolicy, name: str) -> _Category:
    row = conn.execute(query("category_state", _SQL), {"category": name}).fetchone()
    if row is None:
        known = {str(r[0]) for r in conn.execute(query("known_categories", _SQL))}
        known |= set(policy.categories)
        if name in policy.categories:
            raise InvalidExplain(f"category {name} has no tables yet; run `purger migrate`")
        raise InvalidExplain(f"unknown category {name!r}; known: {', '.join(sorted(known))}")
    rows = conn.execute(query("rule_versions", _SQL), {"category": name}).fetchall()
    versions = {r[0]: (AppliedRules(name, r[0], r[1], r[2], None), r[3], r[4], r[5]) for r in rows}
    return _Category(name, int(row[1]), row[2], row[3], versions)


def _rule(cat: _Category, policy: RetentionPolicy, version: int, tenant: str) -> dict[str, Any]:
    found = cat.versions.get(version)
    if found is None:
        out: dict[str, Any] = {"rule_version": version, "policy_version": None}
        out["note"] = "tagged before the policy was versioned" if version == 0 else "unknown"
        if cat.name in policy.categories:
            out["retention_in_policy_file"] = str(policy.category(cat.name).retention_for(tenant))
        return out
    rules, policy_version, label, applied_at = found
    out = {"rule_version": version, "policy_version": policy_version, "policy_label": label}
    return {**out, "applied_at": iso(applied_at), "retention": str(rules.retention_for(tenant))}


def _last_pass(conn: psycopg.Connection[Any], category: str) -> dict[str, Any] | None:
    values = {"kind": Kind.PURGE_PASS.value, "category": category}
    row = conn.execute(query("last_category_pass", _SQL), values).fetchone()
    if row is None:
        return None
    content, mine = row[2], row[2]["categories"][category]
    out = {"seq": int(row[0]), "recorded_at": iso(row[1])}
    out.update({k: content.get(k) for k in ("pass_id", "instant", "outcome")})
    return {**out, "category_outcome": mine.get("outcome"), "category_error": mine.get("error")}


def _find(
    conn: psycopg.Connection[Any], category: str, record_id: str
) -> tuple[str, str, tuple[Any, ...]] | None:
    """(storage, table, row) of a stored record, in one snapshot; None when not stored.

    A re-tag moves a record with its key: one snapshot sees both in the same place.
    """
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with wrap_errors(f"read a record of {category}"), conn.transaction():
        if idle:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        key = conn.execute(
            query("record_key", _SQL).format(keys=sql.Identifier(keys_table(category))),
            {"record_id": record_id},
        ).fetchone()
        if key is None:
            return None
        params = {"category": category, "record_id": record_id, "expires_at": key[0]}
        part = conn.execute(query("record_partition", _SQL), params).fetchone()
        sources = ([(LIVE, str(part[0]))] if part else []) + [(HELD, held_table(category))]
        for storage, table in sources:
            row = conn.execute(
                query("record_row", _SQL).format(source=sql.Identifier(table)), params
            ).fetchone()
            if row is not None:
                return storage, table, tuple(row)
    return None


def _holds(conn: psycopg.Connection[Any], ids: Sequence[int]) -> list[dict[str, Any]]:
    rows = conn.execute(query("holds_by_id", _SQL), {"ids": list(ids)}).fetchall()
    return [{"id": int(r[0]), "case_ref": r[1], "placed_at": iso(r[2])} for r in rows]


def explain_record(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    category: str,
    record_id: str,
    *,
    occurred_at: datetime | None = None,
    tenant: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Why ``record_id`` of ``category`` is stored, held or due; or what destroyed its kind.

    ``occurred_at`` and ``tenant`` only matter for a record that is not stored.
    ``conn`` in autocommit; ``now`` defaults to the database clock.
    """
    with wrap_errors(f"explain a record of {category}"):
        cat = _category(conn, policy, category)
        instant = now or conn.execute(query("db_now")).fetchone()[0]  # type: ignore[index]
        found = None
        if cat.dropped_at is None:
            found = relisting(functools.partial(_find, conn, category, record_id))
        if found is None:
            return _not_stored(conn, policy, cat, (record_id, occurred_at, tenant), instant)
        return _stored(conn, policy, cat, record_id=record_id, found=found, now=instant)


def _reason(code: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"reason": code, "text": text, **extra}


def _stored(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    cat: _Category,
    *,
    record_id: str,
    found: tuple[str, str, tuple[Any, ...]],
    now: datetime,
) -> dict[str, Any]:
    storage, table, (tenant, occurred, expires, ingested, version, hold_ids) = found
    holds = _holds(conn, [int(h) for h in hold_ids])
    retag = _retag(conn, cat, int(version), tenant, (occurred, expires, now))
    due_at = min(expires, cat.retired_at) if cat.retired_at is not None else expires
    due_by_expiry = due_at <= now
    due_by_rules = bool(retag and retag["pending"] and retag["due_under_current_rules"])
    due = due_by_expiry or due_by_rules
    reasons: list[dict[str, Any]] = []
    if due and holds:
        ids = [h["id"] for h in holds]
        listed = ", ".join(str(i) for i in ids)
        text = f"held by legal hold(s) {listed}; kept until every covering hold is released"
        reasons.append(_reason("held", text, hold_ids=ids))
    elif due_by_expiry:
        reasons.append(_pass_reason(conn, cat.name, due_at, storage))
    if retag and retag["pending"] and retag["changes_expiry"] and not holds:
        moved = f"rule version {retag['current_rule_version']} gives expiry " + str(
            retag["expires_at_under_current_rules"]
        )
        if due_by_expiry:
            text = f"not yet re-tagged ({moved}); a pass destroys it by the expiry it has now"
        elif due_by_rules:
            text = f"re-tag pending: {moved}, already past; the re-tag moves it to a partition "
            text += "the next pass destroys"
        else:
            text = f"re-tag pending: {moved}"
        reasons.append(_reason("retag_pending", text))
    return {
        "category": cat.name,
        "record_id": record_id,
        "stored": True,
        "verdict": (HELD if holds else DUE) if due else LIVE,
        "storage": storage,
        "table": table,
        "tenant": tenant,
        "occurred_at": iso(occurred),
        "ingested_at": iso(ingested),
        "expires_at": iso(expires),
        "rule": _rule(cat, policy, int(version), tenant),
        "retired_at": iso(cat.retired_at),
        "retag": retag,
        "holds": holds,
        "now": iso(now),
        "due": due,
        "due_since": iso(due_at) if due_by_expiry else None,
        "reasons": reasons,
    }


def _pass_reason(
    conn: psycopg.Connection[Any], category: str, due_at: datetime, storage: str
) -> dict[str, Any]:
    last = _last_pass(conn, category)
    if last is None:
        text = f"no purge pass has run for {category} yet; the next pass destroys it"
        return _reason("no_pass_yet", text, last_pass=None)
    where = f"the last pass {last['pass_id']} (instant {last['instant']})"
    outcome = last["category_outcome"]
    if datetime.fromisoformat(str(last["instant"])) < due_at:
        text = f"no pass has run since it fell due ({where} was before); the next one destroys it"
        return _reason("pass_not_run_since_due", text, last_pass=last)
    if outcome in SEVERITY:
        error = last["category_error"] or "no error recorded"
        text = f"the purge is failing: {where} ended {outcome} for {category}: {error}"
        return _reason("pass_failing", text, last_pass=last)
    why = "held then, released since" if storage == HELD else "held or later expiry then"
    text = f"{where} ended {outcome} for {category} but it was not due for it ({why}); "
    return _reason("not_due_at_last_pass", text + "the next pass destroys it", last_pass=last)


def _retag(
    conn: psycopg.Connection[Any],
    cat: _Category,
    version: int,
    tenant: str,
    instants: tuple[datetime, datetime, datetime],
) -> dict[str, Any] | None:
    occurred_at, expires_at, now = instants
    current = cat.current
    if current is None or cat.retired_at is not None:
        return None
    pending = version < current.rule_version
    expiry = current.expires_at(tenant, occurred_at) if pending else expires_at
    progress = None
    if pending:
        row = conn.execute(
            query("retag_progress_get", _POLICY_SQL), {"category": cat.name}
        ).fetchone()
        if row is not None:
            progress = {"rule_version": row[0], "retagged": row[3], "finished_at": iso(row[4])}
    return {
        "pending": pending,
        "current_rule_version": current.rule_version,
        "expires_at_under_current_rules": iso(expiry),
        "changes_expiry": expiry != expires_at,
        "due_under_current_rules": expiry <= now,
        "progress": progress,
    }


def _entry(row: Sequence[Any]) -> dict[str, Any]:
    fields = ("pass_id", "partition", "rows", "expiry_from", "expiry_to")
    head = {"seq": int(row[0]), "kind": row[1], "recorded_at": iso(row[2])}
    policy = {"policy_label": row[3].get("policy_version")}
    return {**head, **{name: row[3].get(name) for name in fields}, **policy}


def _not_stored(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    cat: _Category,
    question: tuple[str, datetime | None, str | None],
    now: datetime,
) -> dict[str, Any]:
    record_id, occurred_at, tenant = question
    out: dict[str, Any] = {"category": cat.name, "record_id": record_id, "stored": False}
    out.update(now=iso(now), category_dropped_at=iso(cat.dropped_at), verdict=NOT_STORED)
    values: dict[str, Any] = {"kinds": [k.value for k in DESTRUCTIONS], "category": cat.name}
    if occurred_at is None:
        rows = conn.execute(query("latest_destructions", _SQL), {**values, "limit": LATEST})
        out["latest_destructions"] = [_entry(r) for r in rows]
        out["text"] = (
            "not stored; give --occurred-at (and --tenant) to find what destroyed records of "
            f"its expiry; the latest destructions of {cat.name} follow"
        )
        return out
    candidates = _expiries(policy, cat, occurred_at, tenant)
    out.update(occurred_at=iso(occurred_at), tenant=tenant)
    out["expiries"] = [{"rule_version": v, "expires_at": iso(e)} for v, e in candidates]
    found: dict[int, dict[str, Any]] = {}
    values["half_open"] = Kind.PARTITION_DROPPED.value
    for _version, expiry in candidates:
        rows = conn.execute(
            query("destructions_containing", _SQL), {**values, "expires_at": expiry}
        )
        for r in rows:
            found.setdefault(int(r[0]), {**_entry(r), "expires_at": iso(expiry)})
    out["destroyed_by"] = [found[seq] for seq in sorted(found)]
    if found:
        out["verdict"] = DESTROYED
        out["text"] = (
            f"not stored; records of {cat.name} with its expiry were destroyed as the audit "
            "entries below record (the trail names no record)"
        )
    elif all(e > now for _v, e in candidates):
        out["text"] = "not stored, and its expiry lies ahead: not received (or dead-lettered)"
    else:
        out["text"] = (
            "not stored, and no destruction of records of its expiry is audited: never stored "
            "(expired on arrival, or dead-lettered), or erased on a data-subject request"
        )
    return out


def _expiries(
    policy: RetentionPolicy, cat: _Category, occurred_at: datetime, tenant: str | None
) -> list[tuple[int | None, datetime]]:
    """The expiry the current rules give, then those of older rule versions (distinct)."""
    rules: list[tuple[int | None, AppliedRules]] = [
        (v, r[0]) for v, r in sorted(cat.versions.items(), reverse=True)
    ]
    if not rules and cat.name in policy.categories:
        category = policy.category(cat.name)
        rules = [(None, AppliedRules(cat.name, 0, category.rules(), category.rule_digest, None))]
    if not rules:
        raise InvalidExplain(f"no rules of category {cat.name} are known to compute an expiry")
    if tenant is None and any(r.rules.get("tenant_overrides") for _v, r in rules):
        raise InvalidExplain(
            f"category {cat.name} has tenant overrides: give --tenant with --occurred-at"
        )
    out: list[tuple[int | None, datetime]] = []
    for version, applied in rules:
        expiry = applied.expires_at(tenant or "", occurred_at)
        if all(expiry != e for _v, e in out):
            out.append((version, expiry))
    return out


def explain_subject(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    keys: Sequence[str],
    *,
    categories: Sequence[str] | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``explain_record`` for each stored record carrying one of ``keys`` (at most ``limit``).

    Never names the subject: the answer lists records by id.
    """
    records: list[dict[str, Any]] = []
    truncated = False
    with wrap_errors("explain a subject's records"):
        names = list(categories) if categories else sorted(policy.categories)
        for name in names:
            cat = _category(conn, policy, name)
            if cat.dropped_at is not None:
                continue
            ids = relisting(functools.partial(_subject_ids, conn, name, keys, limit + 1))
            for record_id in ids:
                if len(records) >= limit:
                    truncated = True
                    break
                records.append(explain_record(conn, policy, name, record_id, now=now))
    return {"categories": names, "count": len(records), "truncated": truncated, "records": records}


def _subject_ids(
    conn: psycopg.Connection[Any], category: str, keys: Sequence[str], limit: int
) -> list[str]:
    found: dict[str, datetime] = {}
    with wrap_errors(f"find a subject's records of {category}"), conn.transaction():
        for source in record_tables(conn, category):
            for r in conn.execute(
                query("subject_record_ids", _SQL).format(source=sql.Identifier(source)),
                {"keys": list(keys), "limit": limit},
            ):
                found.setdefault(str(r[0]), r[1])
    return sorted(found, key=lambda rid: (found[rid], rid))[:limit]
