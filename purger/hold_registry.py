"""The legal-hold registry: place, release, get and list holds, each change audited.

A hold is never deleted and its scope never changes; its release, once, ends it
for good and replaces its identifiers by how many of each kind it had (migration
0004). Placing and releasing take ``purger.legal_holds`` in ROW EXCLUSIVE mode
first, which waits for a running destroying transaction and makes the next one
wait and then see the change (see ``purger.held_storage``).

The identifiers of an active hold's scope are stored in the holds table and
shown by ``Hold.as_dict`` (operator output only); the audit entries carry the
scope's ``audit_dict`` instead: counts per selector type and an HMAC of the
scope under the hold's own random key (``scope_hmac``). The key is stored with
the hold, never shown, and destroyed by the release (migration 0005), so the
HMAC can be checked (``verify_scope``) while the hold is active and is
unlinkable afterwards. Case references and reasons are refused when they look
like personal data (``hold_scope.free_text``): the audit trail keeps them forever.
"""

from __future__ import annotations

import enum
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from purger import audit, audit_entries
from purger.db import wrap_errors
from purger.errors import HoldError
from purger.hold_scope import HoldScope, free_text, iso, required_text
from purger.policy import RetentionPolicy
from purger.queries import query
from purger.stored_records import count_matching, count_matching_once

_COLUMNS = (
    "id",
    "case_ref",
    "reason",
    "placed_by",
    "placed_at",
    "categories",
    "subject_keys",
    "tenant",
    "occurred_from",
    "occurred_to",
    "all_records",
    "released_at",
    "released_by",
    "release_reason",
    "released_selectors",
)


class UnknownHold(HoldError):
    """No hold has this id."""


class HoldReleased(HoldError):
    """The hold was released already; a released hold never becomes active again."""


@dataclass(frozen=True)
class Hold:
    """A placed hold, active or released."""

    id: int
    case_ref: str
    reason: str
    placed_by: str
    placed_at: datetime
    scope: HoldScope
    released_at: datetime | None = None
    released_by: str | None = None
    release_reason: str | None = None
    # Identifiers per selector type; on release they replace the identifiers.
    released_selectors: dict[str, int] | None = None

    @property
    def active(self) -> bool:
        """True until it is released."""
        return self.released_at is None

    def selector_counts(self) -> dict[str, int]:
        """Identifiers per selector type, whether the hold still has them or not."""
        return self.scope.selector_counts() or dict(self.released_selectors or {})

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Hold:
        """From a row of the ``hold_*`` queries (columns in ``_COLUMNS`` order)."""
        r = dict(zip(_COLUMNS, row, strict=True))
        return cls(
            id=int(r["id"]),
            case_ref=r["case_ref"],
            reason=r["reason"],
            placed_by=r["placed_by"],
            placed_at=r["placed_at"],
            scope=HoldScope(
                categories=tuple(r["categories"]) if r["categories"] is not None else None,
                subject_keys=tuple(r["subject_keys"]) if r["subject_keys"] is not None else None,
                tenant=r["tenant"],
                occurred_from=r["occurred_from"],
                occurred_to=r["occurred_to"],
                all_records=bool(r["all_records"]),
            ),
            released_at=r["released_at"],
            released_by=r["released_by"],
            release_reason=r["release_reason"],
            released_selectors=r["released_selectors"],
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (contains the scope's identifiers: operator output only)."""
        return {
            "id": self.id,
            "active": self.active,
            "case_ref": self.case_ref,
            "reason": self.reason,
            "placed_by": self.placed_by,
            "placed_at": iso(self.placed_at),
            "scope": self.scope.as_dict(),
            "released_at": iso(self.released_at),
            "released_by": self.released_by,
            "release_reason": self.release_reason,
            "selectors": self.selector_counts(),
        }


@dataclass
class Placement:
    """The result of placing a hold."""

    hold: Hold
    # Matching records stored now (live and held), per category in scope: what
    # the hold holds from its commit on. The name is the published output key.
    preserved: dict[str, int] = field(default_factory=dict)
    # Matching records a purge destroyed between the first count and the hold's
    # commit: the hold came too late for them.
    destroyed_while_placing: dict[str, int] = field(default_factory=dict)
    # The first count, taken before the lock (outside the transaction).
    counted_before: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            **self.hold.as_dict(),
            "preserved": self.preserved,
            "destroyed_while_placing": self.destroyed_while_placing,
            "counted_before": self.counted_before,
        }


KEY_BYTES = 32


class ScopeCheck(enum.StrEnum):
    """Whether a hold's stored scope matches the HMAC its placing entry audited."""

    MATCHES = "matches"
    # The stored scope or key differs from what was audited: investigate.
    DIFFERS = "differs"
    # Released: the key is destroyed, the audited HMAC is unlinkable by design.
    RELEASED = "released"
    # Placed before migration 0005: audited with an unkeyed digest, no key to check.
    NO_KEY = "no_key"
    # No hold_placed entry names this hold, or it carries no HMAC.
    NOT_AUDITED = "not_audited"


def _scope_key(conn: psycopg.Connection[Any], hold_id: int) -> bytes | None:
    row = conn.execute(query("hold_scope_key"), {"id": hold_id}).fetchone()
    return bytes(row[0]) if row is not None and row[0] is not None else None


def verify_scope(conn: psycopg.Connection[Any], hold: Hold) -> ScopeCheck:
    """Check an active hold's stored scope against the HMAC of its hold_placed entry."""
    if not hold.active:
        return ScopeCheck.RELEASED
    with wrap_errors("verify legal hold scope"):
        key = _scope_key(conn, hold.id)
        row = conn.execute(query("hold_placed_entry"), {"id": hold.id}).fetchone()
    audited = (row[0].get("scope") or {}).get("scope_hmac") if row is not None else None
    if key is None:
        return ScopeCheck.NO_KEY
    if not isinstance(audited, str):
        return ScopeCheck.NOT_AUDITED
    if hmac.compare_digest(hold.scope.keyed_digest(key), audited):
        return ScopeCheck.MATCHES
    return ScopeCheck.DIFFERS


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def place(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    scope: HoldScope,
    *,
    case_ref: str,
    reason: str,
    placed_by: str,
) -> Placement:
    """Place a hold (``conn`` in autocommit); audited in the same transaction.

    Counts the matching records before taking the lock and again after the
    insert: a positive difference is what a concurrent pass destroyed first.
    """
    case = free_text(case_ref, "case reference (--case-ref)")
    why = free_text(reason, "reason (--reason)")
    who = required_text(placed_by, "placed by (--by)")
    # The hold's own key: its audited scope HMAC is unlinkable once it is destroyed.
    key = secrets.token_bytes(KEY_BYTES)
    names = [n for n in policy.categories if scope.applies_to(n)]
    before = {name: count_matching(conn, name, scope) for name in names}
    with wrap_errors("place legal hold"), conn.transaction():
        conn.execute(query("holds_lock_place"))
        row = conn.execute(
            query("hold_insert"),
            {
                "case_ref": case,
                "reason": why,
                "placed_by": who,
                "categories": list(scope.categories) if scope.categories else None,
                "subject_keys": list(scope.subject_keys) if scope.subject_keys else None,
                "tenant": scope.tenant,
                "occurred_from": scope.occurred_from,
                "occurred_to": scope.occurred_to,
                "all_records": scope.all_records,
                "scope_key": key,
            },
        ).fetchone()
        assert row is not None
        hold = Hold.from_row(row)
        # No destroying transaction can run while this one holds its lock, so
        # these counts are exact and stay held from the commit on.
        after = {name: count_matching_once(conn, name, scope) for name in names}
        destroyed = {name: max(before[name] - after[name], 0) for name in names}
        audit.record(
            conn,
            audit_entries.hold_placed(
                hold_id=hold.id,
                case_ref=case,
                reason=why,
                placed_by=who,
                placed_at=_utc(hold.placed_at),
                scope=scope.audit_dict(key),
                preserved=after,
                destroyed_while_placing=destroyed,
            ),
        )
    return Placement(hold, after, destroyed, before)


def release(conn: psycopg.Connection[Any], hold_id: int, *, released_by: str, reason: str) -> Hold:
    """Release an active hold (audited); its records go at the next pass unless still held."""
    who = required_text(released_by, "released by (--by)")
    why = free_text(reason, "release reason (--reason)")
    with wrap_errors("release legal hold"), conn.transaction():
        conn.execute(query("holds_lock_place"))
        existing = conn.execute(query("hold_get"), {"id": hold_id}).fetchone()
        if existing is None:
            raise UnknownHold(f"no legal hold has id {hold_id}")
        # The HMAC of the scope as placed: the release forgets the identifiers and
        # destroys the key. A hold placed before 0005 has no key and gets no HMAC.
        key = _scope_key(conn, hold_id)
        keyed = Hold.from_row(existing).scope.keyed_digest(key) if key is not None else None
        row = conn.execute(
            query("hold_release"), {"id": hold_id, "released_by": who, "release_reason": why}
        ).fetchone()
        if row is None:
            raise HoldReleased(
                f"legal hold {hold_id} was already released; place a new hold instead"
            )
        hold = Hold.from_row(row)
        audit.record(
            conn,
            audit_entries.hold_released(
                hold_id=hold.id,
                case_ref=hold.case_ref,
                released_by=who,
                release_reason=why,
                released_at=_utc(hold.released_at),
                scope_hmac=keyed,
            ),
        )
    return hold


def get(conn: psycopg.Connection[Any], hold_id: int) -> Hold:
    """The hold with ``hold_id``; UnknownHold if there is none."""
    with wrap_errors("read legal hold"):
        row = conn.execute(query("hold_get"), {"id": hold_id}).fetchone()
    if row is None:
        raise UnknownHold(f"no legal hold has id {hold_id}")
    return Hold.from_row(row)


def list_holds(conn: psycopg.Connection[Any], *, active_only: bool = False) -> list[Hold]:
    """Every hold (or only the active ones), oldest first."""
    with wrap_errors("list legal holds"):
        rows = conn.execute(query("holds_list"), {"active_only": active_only}).fetchall()
    return [Hold.from_row(r) for r in rows]


def active_holds(conn: psycopg.Connection[Any]) -> list[Hold]:
    """The active holds."""
    return list_holds(conn, active_only=True)


def held_now(conn: psycopg.Connection[Any], policy: RetentionPolicy, hold: Hold) -> dict[str, int]:
    """Per category in scope, the stored records (live and held) the hold holds now."""
    if not hold.active:
        return {}
    return {
        name: count_matching(conn, name, hold.scope)
        for name in policy.categories
        if hold.scope.applies_to(name)
    }
