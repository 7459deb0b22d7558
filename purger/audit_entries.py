"""Every kind of audit entry and its content, built in one place.

An entry's content is what ``purger audit export`` hands to a regulator and what
``audit verify`` hashes: its keys are a published format, so they never change
for an existing kind. Contents name partitions, categories, counts, instants and
hold ids, never identifiers or record contents.

The one exception, for privacy (migration 0005): ``hold_placed``'s scope and
``hold_released`` carried ``scope_digest``, an unsalted sha256 of the scope from
which a held phone number could be recovered; entries written since carry
``scope_hmac`` (keyed per hold, unlinkable once the hold is released) instead.
Older entries keep ``scope_digest``: the trail is append-only and hash-chained.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class Kind(enum.StrEnum):
    """The kinds of audit entries."""

    PURGE_PASS = "purge_pass"
    PARTITION_DROPPED = "partition_dropped"
    ROWS_DELETED = "rows_deleted"
    HELD_ROWS_DELETED = "held_rows_deleted"
    PARTITION_VACUUMED = "partition_vacuumed"
    HOLD_PLACED = "hold_placed"
    HOLD_RELEASED = "hold_released"
    # Data-subject requests: built by purger/request_entries.py.
    SUBJECT_REQUEST_OPENED = "subject_request_opened"
    SUBJECT_REQUEST_EXTENDED = "subject_request_extended"
    SUBJECT_REQUEST_CLOSED = "subject_request_closed"
    SUBJECT_ERASED = "subject_erased"
    SUBJECT_EXPORTED = "subject_exported"
    RESTRICTED_READ = "restricted_read"
    POLICY_APPLIED = "policy_applied"
    RECORDS_RETAGGED = "records_retagged"
    CATEGORY_RETIRED = "category_retired"
    CATEGORY_DROPPED = "category_dropped"


@dataclass(frozen=True, slots=True)
class Entry:
    """An audit entry to append: its kind and its content."""

    kind: Kind
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PolicyRef:
    """The policy a destruction followed."""

    version: str
    digest: str


def _iso(instant: datetime | None) -> str | None:
    return instant.isoformat() if instant is not None else None


def partition_dropped(
    *,
    pass_id: str,
    category: str,
    partition: str,
    rows: int,
    held: int,
    hold_ids: Sequence[int],
    expiry_from: datetime,
    expiry_to: datetime,
    policy: PolicyRef,
) -> Entry:
    """A wholly expired partition dropped; ``held`` rows moved to held storage first."""
    return Entry(
        Kind.PARTITION_DROPPED,
        {
            "pass_id": pass_id,
            "category": category,
            "partition": partition,
            "rows": rows,
            "held": held,
            "hold_ids": list(hold_ids),
            "expiry_from": expiry_from.isoformat(),
            "expiry_to": expiry_to.isoformat(),
            "policy_version": policy.version,
            "policy_digest": policy.digest,
        },
    )


def rows_deleted(
    *,
    pass_id: str,
    category: str,
    partition: str,
    rows: int,
    expiry_from: datetime,
    expiry_to: datetime,
    purge_instant: datetime,
    policy: PolicyRef,
) -> Entry:
    """One batch of expired rows deleted from the partition that contains the pass's instant."""
    return Entry(
        Kind.ROWS_DELETED,
        {
            "pass_id": pass_id,
            "category": category,
            "partition": partition,
            "rows": rows,
            "expiry_from": expiry_from.isoformat(),
            "expiry_to": expiry_to.isoformat(),
            "purge_instant": purge_instant.isoformat(),
            "policy_version": policy.version,
            "policy_digest": policy.digest,
        },
    )


def held_rows_deleted(
    *,
    pass_id: str,
    category: str,
    rows: int,
    expiry_from: datetime | None,
    expiry_to: datetime | None,
    purge_instant: datetime,
    policy: PolicyRef,
) -> Entry:
    """Held records that no active hold covers any more, destroyed."""
    return Entry(
        Kind.HELD_ROWS_DELETED,
        {
            "pass_id": pass_id,
            "category": category,
            "rows": rows,
            "expiry_from": _iso(expiry_from),
            "expiry_to": _iso(expiry_to),
            "purge_instant": purge_instant.isoformat(),
            "policy_version": policy.version,
            "policy_digest": policy.digest,
        },
    )


def partition_vacuumed(*, pass_id: str, category: str, partition: str, rows_deleted: int) -> Entry:
    """A partition VACUUMed after the pass deleted ``rows_deleted`` rows from it.

    The deleted rows' tuples are then gone from the table's pages, not merely invisible
    (an older snapshot still open at that moment may have kept some; see the README).
    """
    return Entry(
        Kind.PARTITION_VACUUMED,
        {
            "pass_id": pass_id,
            "category": category,
            "partition": partition,
            "rows_deleted": rows_deleted,
        },
    )


def purge_pass(
    *,
    pass_id: str,
    instant: datetime,
    started_at: datetime,
    finished_at: datetime | None,
    outcome: str,
    error: str | None,
    policy_version: str,
    categories: Mapping[str, Mapping[str, Any]],
) -> Entry:
    """The summary of one pass: its outcome and each category's."""
    return Entry(
        Kind.PURGE_PASS,
        {
            "pass_id": pass_id,
            "instant": instant.isoformat(),
            "started_at": started_at.isoformat(),
            "finished_at": _iso(finished_at),
            "outcome": outcome,
            "error": error,
            "policy_version": policy_version,
            "categories": {name: dict(c) for name, c in categories.items()},
        },
    )


def hold_placed(
    *,
    hold_id: int,
    case_ref: str,
    reason: str,
    placed_by: str,
    placed_at: datetime | None,
    scope: Mapping[str, Any],
    preserved: Mapping[str, int],
    destroyed_while_placing: Mapping[str, int],
) -> Entry:
    """A legal hold placed; ``preserved`` counts the records it holds per category.

    ``scope`` is ``HoldScope.audit_dict``: selector counts and ``scope_hmac``, never
    an identifier or an unkeyed digest of one. ``case_ref`` and ``reason`` are free
    text refused when they look like personal data.
    """
    return Entry(
        Kind.HOLD_PLACED,
        {
            "hold_id": hold_id,
            "case_ref": case_ref,
            "reason": reason,
            "placed_by": placed_by,
            "placed_at": _iso(placed_at),
            "scope": dict(scope),
            "preserved": dict(preserved),
            "destroyed_while_placing": dict(destroyed_while_placing),
        },
    )


def hold_released(
    *,
    hold_id: int,
    case_ref: str,
    released_by: str,
    release_reason: str,
    released_at: datetime | None,
    scope_hmac: str | None,
) -> Entry:
    """A legal hold released; only the keyed digest of its scope as placed is kept.

    ``scope_hmac`` is the HMAC of ``hold_placed``'s scope under the hold's key,
    which the release destroys; None for a hold placed before migration 0005.
    """
    return Entry(
        Kind.HOLD_RELEASED,
        {
            "hold_id": hold_id,
            "case_ref": case_ref,
            "released_by": released_by,
            "release_reason": release_reason,
            "released_at": _iso(released_at),
            "scope_hmac": scope_hmac,
        },
    )
