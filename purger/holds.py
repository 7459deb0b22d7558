"""Legal holds: records in a hold's scope outlive their expiry until it is released.

A stored record is purgeable only when it is expired and no active hold covers
it. Coverage has one definition, the SQL function ``purger.hold_covers``
(migration 0003); ``HoldScope.covers`` mirrors it for validation and tests.

Airtightness rests on one table lock. Every transaction that destroys or moves
records (a partition drop, a row-delete batch, the purge of released held
records) first takes ``LOCK purger.legal_holds IN SHARE MODE`` and only then
reads the active holds. Placing and releasing a hold take ROW EXCLUSIVE, which
conflicts with SHARE: a hold committed before a destroying transaction is seen
by it, and a hold placed while one runs waits for its commit and then counts
what it destroyed (``destroyed_while_placing``).

Covered rows of a partition about to be dropped are copied into the category's
held table (``purger.held_<category>``), checked by count, in the transaction
that drops the partition. The copy finds its rows through the GIN index on
``subject_keys`` and the ``(tenant, occurred_at)`` index, so it costs in
proportion to the held records, not to the partition.

Identifiers are personal data: they go into the holds table (the scope) and the
output of the operator's commands, never into logs, audit entries or exception
messages (audit entries carry selector types, counts and a digest of the scope).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from purger import audit
from purger.db import wrap_errors
from purger.errors import HoldError, StorageError
from purger.identifiers import KNOWN_TYPES, IdentifierError, normalise, subject_key
from purger.partitions import held_table, parent_table
from purger.policy import RetentionPolicy
from purger.queries import query, template

SELECTORS: tuple[str, ...] = KNOWN_TYPES
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
_MAX_TEXT = 1000
_COUNT_ATTEMPTS = 5
_T = TypeVar("_T")


class InvalidHold(HoldError):
    """The request is wrong (scope, text, identifier): the operator must correct it."""


class UnknownHold(HoldError):
    """No hold has this id."""


class HoldReleased(HoldError):
    """The hold was released already; a released hold never becomes active again."""


class PreservationError(HoldError):
    """Held storage did not receive exactly the covered records; nothing was destroyed."""


# -- scope -------------------------------------------------------------------------------
@dataclass(frozen=True)
class HoldScope:
    """What a hold covers. ``None`` means "any"; every given part must match (AND).

    Subject keys match when a record carries any of them (the identifiers of one
    person); the ``occurred_at`` window includes both ends.
    """

    categories: tuple[str, ...] | None = None
    subject_keys: tuple[str, ...] | None = None
    tenant: str | None = None
    occurred_from: datetime | None = None
    occurred_to: datetime | None = None
    all_records: bool = False

    def applies_to(self, category: str) -> bool:
        """True when the hold covers records of ``category`` at all."""
        return self.categories is None or category in self.categories

    def covers(
        self, category: str, tenant: str, occurred_at: datetime, subject_keys: Iterable[str]
    ) -> bool:
        """Python twin of ``purger.hold_covers`` (the database's version decides)."""
        if not self.applies_to(category):
            return False
        if self.subject_keys is not None and not set(self.subject_keys) & set(subject_keys):
            return False
        if self.tenant is not None and tenant != self.tenant:
            return False
        if self.occurred_from is not None and occurred_at < self.occurred_from:
            return False
        return self.occurred_to is None or occurred_at <= self.occurred_to

    def selector_counts(self) -> dict[str, int]:
        """Identifiers per selector type (what the audit trail may say about them)."""
        counts: dict[str, int] = {}
        for key in self.subject_keys or ():
            kind = key.split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def digest(self) -> str:
        """sha256 of the whole scope, so the audit trail can vouch for the stored scope."""
        return hashlib.sha256(
            json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (contains the identifiers: operator output only)."""
        return {
            "categories": list(self.categories) if self.categories is not None else None,
            "subject_keys": list(self.subject_keys) if self.subject_keys is not None else None,
            "tenant": self.tenant,
            "occurred_from": _iso(self.occurred_from),
            "occurred_to": _iso(self.occurred_to),
            "all_records": self.all_records,
        }

    def audit_dict(self) -> dict[str, Any]:
        """The scope without identifiers, for the audit trail."""
        return {
            "categories": list(self.categories) if self.categories is not None else None,
            "selectors": self.selector_counts(),
            "tenant": self.tenant,
            "occurred_from": _iso(self.occurred_from),
            "occurred_to": _iso(self.occurred_to),
            "all_records": self.all_records,
            "scope_digest": self.digest(),
        }

    def params(self) -> dict[str, Any]:
        """The scope as query parameters of ``scope_matches``."""
        return {
            "h_categories": list(self.categories) if self.categories is not None else None,
            "h_subject_keys": (list(self.subject_keys) if self.subject_keys is not None else None),
            "h_tenant": self.tenant,
            "h_occurred_from": self.occurred_from,
            "h_occurred_to": self.occurred_to,
        }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _text(value: str | None, what: str, *, required: bool) -> str | None:
    if value is None or not value.strip():
        if required:
            raise InvalidHold(f"{what} is required and must not be blank")
        return None
    if len(value) > _MAX_TEXT:
        raise InvalidHold(f"{what} is longer than {_MAX_TEXT} characters")
    if "\x00" in value:
        raise InvalidHold(f"{what} contains a NUL character")
    return value.strip()


def build_scope(
    policy: RetentionPolicy,
    *,
    categories: Iterable[str] = (),
    subjects: Mapping[str, Iterable[str]] | None = None,
    tenant: str | None = None,
    occurred_from: datetime | None = None,
    occurred_to: datetime | None = None,
    all_records: bool = False,
    default_country_code: int = 31,
) -> HoldScope:
    """Validate and normalise a scope; InvalidHold names the problem, never an identifier.

    Identifiers are normalised exactly as ingestion normalises them, so
    ``0612345678`` matches records stored as ``+31612345678``.
    """
    cats = sorted(set(categories))
    for name in cats:
        if name not in policy.categories:
            known = ", ".join(sorted(policy.categories))
            raise InvalidHold(f"unknown category {name!r}; known: {known}")
    keys: list[str] = []
    for kind, values in (subjects or {}).items():
        if kind not in SELECTORS:
            raise InvalidHold(f"unknown subject selector {kind!r}; known: {', '.join(SELECTORS)}")
        for index, raw in enumerate(values):
            try:
                value = normalise(kind, raw, default_country_code)
            except IdentifierError as exc:
                raise InvalidHold(f"{kind} #{index + 1}: {exc}") from None
            key = subject_key(kind, value)
            if key not in keys:
                keys.append(key)
    tenant_value = _text(tenant, "tenant", required=False)
    for label, instant in (("occurred-from", occurred_from), ("occurred-to", occurred_to)):
        if instant is not None and instant.tzinfo is None:
            raise InvalidHold(f"{label} needs a UTC offset")
    if occurred_from and occurred_to and occurred_from > occurred_to:
        raise InvalidHold("occurred-from lies after occurred-to")
    if all_records and (keys or tenant_value):
        raise InvalidHold("--all-records cannot be combined with subject selectors or --tenant")
    if not (keys or tenant_value or all_records):
        raise InvalidHold(
            "a hold needs a subject selector or a tenant; "
            "to hold every record in scope, say --all-records explicitly"
        )
    return HoldScope(
        categories=tuple(cats) if cats else None,
        subject_keys=tuple(sorted(keys)) if keys else None,
        tenant=tenant_value,
        occurred_from=occurred_from.astimezone(UTC) if occurred_from else None,
        occurred_to=occurred_to.astimezone(UTC) if occurred_to else None,
        all_records=all_records,
    )


# -- holds -------------------------------------------------------------------------------
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
        """Identifiers per selector type, whether the hold still keeps them or not."""
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
            "placed_at": _iso(self.placed_at),
            "scope": self.scope.as_dict(),
            "released_at": _iso(self.released_at),
            "released_by": self.released_by,
            "release_reason": self.release_reason,
            "selectors": self.selector_counts(),
        }


@dataclass
class Placement:
    """The result of placing a hold."""

    hold: Hold
    # Matching records stored now (live and held), per category in scope.
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
    case = _text(case_ref, "case reference", required=True)
    why = _text(reason, "reason", required=True)
    who = _text(placed_by, "placed by (--by)", required=True)
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
            },
        ).fetchone()
        assert row is not None
        hold = Hold.from_row(row)
        # No destroying transaction can run while this one holds its lock, so
        # these counts are exact and stay covered from the commit on.
        after = {name: _count_matching_once(conn, name, scope) for name in names}
        destroyed = {name: max(before[name] - after[name], 0) for name in names}
        audit.append(
            conn,
            "hold_placed",
            {
                "hold_id": hold.id,
                "case_ref": case,
                "reason": why,
                "placed_by": who,
                "placed_at": _iso(hold.placed_at),
                "scope": scope.audit_dict(),
                "preserved": after,
                "destroyed_while_placing": destroyed,
            },
        )
    return Placement(hold, after, destroyed, before)


def release(conn: psycopg.Connection[Any], hold_id: int, *, released_by: str, reason: str) -> Hold:
    """Release an active hold (audited); its records go at the next pass unless still covered."""
    who = _text(released_by, "released by (--by)", required=True)
    why = _text(reason, "release reason", required=True)
    with wrap_errors("release legal hold"), conn.transaction():
        conn.execute(query("holds_lock_place"))
        existing = conn.execute(query("hold_get"), {"id": hold_id}).fetchone()
        if existing is None:
            raise UnknownHold(f"no legal hold has id {hold_id}")
        # The digest of the scope as placed: the release forgets the identifiers.
        digest = Hold.from_row(existing).scope.digest()
        row = conn.execute(
            query("hold_release"), {"id": hold_id, "released_by": who, "release_reason": why}
        ).fetchone()
        if row is None:
            raise HoldReleased(
                f"legal hold {hold_id} was already released; place a new hold instead"
            )
        hold = Hold.from_row(row)
        audit.append(
            conn,
            "hold_released",
            {
                "hold_id": hold.id,
                "case_ref": hold.case_ref,
                "released_by": who,
                "release_reason": why,
                "released_at": _iso(hold.released_at),
                "scope_digest": digest,
            },
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


def preserved_now(
    conn: psycopg.Connection[Any], policy: RetentionPolicy, hold: Hold
) -> dict[str, int]:
    """Per category in scope, the stored records (live and held) the hold keeps now."""
    if not hold.active:
        return {}
    return {
        name: count_matching(conn, name, hold.scope)
        for name in policy.categories
        if hold.scope.applies_to(name)
    }


# -- counting a scope ----------------------------------------------------------------------
def prefilter(scopes: Sequence[HoldScope]) -> tuple[sql.Composable, dict[str, Any]] | None:
    """An index-backed condition on alias ``r`` that every row covered by ``scopes`` meets.

    A superset, rechecked by ``purger.hold_covers``: subject keys of all holds in
    one GIN look-up, each tenant hold through the ``(tenant, occurred_at)`` index.
    Only a hold on all records needs every row. None when no scope is given.
    """
    if not scopes:
        return None
    if any(s.subject_keys is None and s.tenant is None for s in scopes):
        return query("prefilter_all"), {}
    arms: list[sql.Composable] = []
    params: dict[str, Any] = {}
    keys = sorted({k for s in scopes if s.subject_keys is not None for k in s.subject_keys})
    if keys:
        arms.append(template("prefilter_subjects", keys=sql.Placeholder("pf_keys")))
        params["pf_keys"] = keys
    tenant_windows = sorted(
        {(s.tenant, s.occurred_from, s.occurred_to) for s in scopes if s.subject_keys is None},
        key=lambda w: (w[0] or "", _iso(w[1]) or "", _iso(w[2]) or "~"),
    )
    for i, (tenant, start, end) in enumerate(tenant_windows):
        arms.append(
            template(
                "prefilter_tenant",
                tenant=sql.Placeholder(f"pf_tenant_{i}"),
                occurred_from=sql.Placeholder(f"pf_from_{i}"),
                occurred_to=sql.Placeholder(f"pf_to_{i}"),
            )
        )
        params.update({f"pf_tenant_{i}": tenant, f"pf_from_{i}": start, f"pf_to_{i}": end})
    return sql.SQL(" OR ").join(arms), params


def _sources(conn: psycopg.Connection[Any], category: str) -> list[str]:
    # Every existing partition by name (attached or detached, so that a detach
    # running meanwhile cannot hide rows), then held storage.
    rows = conn.execute(query("category_partition_tables"), {"category": category}).fetchall()
    return [str(r[0]) for r in rows] + [held_table(category)]


def _count_matching_once(conn: psycopg.Connection[Any], category: str, scope: HoldScope) -> int:
    pf = prefilter([scope])
    assert pf is not None
    condition, params = pf
    parts = [
        template("scope_matches", source=sql.Identifier(source), prefilter=condition)
        for source in _sources(conn, category)
    ]
    # UNION: a record counts once even if a redelivery left it in two places.
    counted = template("count_union", parts=sql.SQL(" UNION ").join(parts))
    row = conn.execute(counted, {**params, **scope.params(), "category": category}).fetchone()
    return int(row[0]) if row else 0


def _relisting(action: Callable[[], _T]) -> _T:
    # Outside a destroying transaction's lock, a pass may drop a partition
    # between listing the partitions and reading them: list again. Each retry
    # means a pass made progress, so a few attempts always suffice.
    for attempt in range(_COUNT_ATTEMPTS):
        try:
            return action()
        except StorageError as exc:
            if attempt + 1 < _COUNT_ATTEMPTS and isinstance(exc.__cause__, pgerrors.UndefinedTable):
                continue
            raise
    raise AssertionError("unreachable")


def count_matching(conn: psycopg.Connection[Any], category: str, scope: HoldScope) -> int:
    """Stored records of ``category`` (live and held) in ``scope``, active hold or not."""
    if not scope.applies_to(category):
        return 0

    def count() -> int:
        with wrap_errors("count records in a hold's scope"), conn.transaction():
            return _count_matching_once(conn, category, scope)

    return _relisting(count)


# -- the purge's side ------------------------------------------------------------------------
def lock_for_destruction(conn: psycopg.Connection[Any]) -> list[Hold]:
    """In the caller's transaction: lock out hold changes, then read the active holds.

    Must come before anything in the transaction destroys or moves a record.
    Raises LockTimeout while a hold is being placed or released for longer than
    the session's lock_timeout.
    """
    with wrap_errors("lock out legal-hold changes"):
        conn.execute(query("holds_lock_purge"))
    return active_holds(conn)


@dataclass(frozen=True)
class Preserved:
    """Rows of one partition moved or copied into held storage."""

    rows: int
    hold_ids: tuple[int, ...]


def _covered_where(
    holds: Sequence[Hold], category: str
) -> tuple[sql.Composable, dict[str, Any], tuple[int, ...]] | None:
    applicable = [h for h in holds if h.active and h.scope.applies_to(category)]
    pf = prefilter([h.scope for h in applicable])
    if pf is None:
        return None
    condition, params = pf
    where = template(
        "covered_expired", prefilter=condition, covered=query("covered_by_active_hold")
    )
    return where, params, tuple(h.id for h in applicable)


def preserve(
    conn: psycopg.Connection[Any],
    category: str,
    source: str,
    holds: Sequence[Hold],
    t: datetime,
    *,
    remove: bool,
) -> Preserved:
    """Copy the rows of partition ``source`` expired at ``t`` and covered into held storage.

    Runs in the caller's transaction after ``lock_for_destruction`` returned
    ``holds``. With ``remove`` the copied rows leave the partition (the row
    delete of the partition containing T); without it the caller drops the
    partition next. Raises PreservationError, so that the caller's transaction
    rolls back, unless held storage then has every covered row.
    """
    covered = _covered_where(holds, category)
    if covered is None:
        return Preserved(0, ())
    where, params, hold_ids = covered
    ident = _preserve_identifiers(category, source)
    values = {**params, "t": t, "category": category}
    with wrap_errors(f"preserve held records of {source}"):
        row = conn.execute(template("preserve_check", where=where, **ident), values).fetchone()
        assert row is not None
        expected, already = int(row[0]), int(row[1])
        if expected == 0:
            return Preserved(0, hold_ids)
        cur = conn.execute(template("preserve_copy", where=where, **ident), values)
        copied = cur.rowcount
        if copied != expected - already:
            raise PreservationError(
                f"held storage of {category} received {copied} of {expected - already} "
                f"covered records of {source}; nothing was destroyed"
            )
        if remove:
            cur = conn.execute(template("preserve_remove", where=where, **ident), values)
            if cur.rowcount != expected:
                raise PreservationError(
                    f"{cur.rowcount} of {expected} covered records of {source} left it for "
                    "held storage; nothing was destroyed"
                )
    return Preserved(expected, hold_ids)


def _preserve_identifiers(category: str, source: str) -> dict[str, Any]:
    return {"source": sql.Identifier(source), "held": sql.Identifier(held_table(category))}


def covered_check(
    holds: Sequence[Hold], category: str, source: str, t: datetime
) -> tuple[sql.Composed, dict[str, Any]] | None:
    """The statement (and parameters) counting the covered rows of ``source`` at ``t``.

    The same condition selects the rows that ``preserve`` copies; public so that
    its plan can be checked (index look-ups, never a scan of the partition).
    """
    covered = _covered_where(holds, category)
    if covered is None:
        return None
    where, params, _ = covered
    statement = template("preserve_check", where=where, **_preserve_identifiers(category, source))
    return statement, {**params, "t": t, "category": category}


def count_covered(conn: psycopg.Connection[Any], category: str, source: str, t: datetime) -> int:
    """Rows of ``source`` expired at ``t`` that active holds cover (a dry run's estimate)."""
    check = covered_check(active_holds(conn), category, source, t)
    if check is None:
        return 0
    with wrap_errors(f"count held records of {source}"):
        row = conn.execute(*check).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class HeldPurge:
    """Held records destroyed because no active hold covers them any more."""

    rows: int
    expiry_from: datetime | None
    expiry_to: datetime | None


def purge_released(
    conn: psycopg.Connection[Any], category: str, t: datetime, *, dry_run: bool = False
) -> HeldPurge:
    """Delete held records expired at ``t`` that no active hold covers.

    Call in a transaction after ``lock_for_destruction``, unless ``dry_run``.
    """
    ident: dict[str, Any] = {
        "held": sql.Identifier(held_table(category)),
        "covered": query("covered_by_active_hold"),
    }
    values = {"t": t, "category": category}
    with wrap_errors(f"purge released held records of {category}"):
        if dry_run:
            row = conn.execute(template("held_purgeable", **ident), values).fetchone()
            return HeldPurge(int(row[0]) if row else 0, None, None)
        row = conn.execute(template("held_purge", **ident), values).fetchone()
    assert row is not None
    return HeldPurge(int(row[0]), row[1], row[2])


def store_expired(
    conn: psycopg.Connection[Any], category: str, staging: str, now: datetime
) -> tuple[int, int]:
    """Move staged records expired at ``now`` and covered by an active hold to held storage.

    Runs in the ingest transaction; returns (covered, inserted): covered minus
    inserted were already stored.
    """
    row = conn.execute(
        template(
            "store_held_from_staging",
            staging=sql.Identifier(staging),
            parent=sql.Identifier(parent_table(category)),
            held=sql.Identifier(held_table(category)),
            covered=query("covered_by_active_hold"),
        ),
        {"now": now, "category": category},
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass(frozen=True)
class Coverage:
    """Expired records of one category: kept by holds, and overdue (purgeable)."""

    held: int
    overdue: int


def expired_coverage(conn: psycopg.Connection[Any], category: str, t: datetime) -> Coverage:
    """Expired records of ``category`` at ``t``, split by whether an active hold covers them."""
    held = overdue = 0
    for table in (parent_table(category), held_table(category)):
        row = conn.execute(
            template(
                "expired_by_coverage",
                table=sql.Identifier(table),
                covered=query("covered_by_active_hold"),
            ),
            {"t": t, "category": category},
        ).fetchone()
        if row:
            held += int(row[0])
            overdue += int(row[1])
    return Coverage(held, overdue)


def active_count(conn: psycopg.Connection[Any]) -> int:
    """How many holds are active."""
    row = conn.execute(query("holds_active_count")).fetchone()
    return int(row[0]) if row else 0


def held_count(conn: psycopg.Connection[Any], category: str) -> int:
    """Records in the category's held storage."""
    row = conn.execute(template("held_count", held=sql.Identifier(held_table(category)))).fetchone()
    return int(row[0]) if row else 0


# -- subject export ----------------------------------------------------------------------------
def subject_keys_for(kind: str, raw: str, default_country_code: int = 31) -> list[str]:
    """The look-up key of one identifier, normalised as ingested; InvalidHold if invalid."""
    if kind not in SELECTORS:
        raise InvalidHold(f"unknown subject selector {kind!r}; known: {', '.join(SELECTORS)}")
    try:
        return [subject_key(kind, normalise(kind, raw, default_country_code))]
    except IdentifierError as exc:
        raise InvalidHold(f"{kind}: {exc}") from None


def export_subject(
    conn: psycopg.Connection[Any], policy: RetentionPolicy, keys: Sequence[str]
) -> Iterator[dict[str, Any]]:
    """Every stored record (live and held) carrying one of ``keys``, across categories.

    Each with its expiry and the ids of the active holds that cover it.
    """
    for category in policy.categories:
        yield from _relisting(functools.partial(_export_category, conn, category, keys))


def _export_category(
    conn: psycopg.Connection[Any], category: str, keys: Sequence[str]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[tuple[datetime, str]] = set()
    held = held_table(category)
    with wrap_errors(f"export subject records of {category}"), conn.transaction():
        for source in _sources(conn, category):
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
                        "occurred_at": _iso(r[2]),
                        "expires_at": _iso(r[3]),
                        "ingested_at": _iso(r[4]),
                        "subjects": r[5],
                        "payload": r[6],
                        "source_topic": r[7],
                        "source_partition": r[8],
                        "source_offset": r[9],
                        "holds": [int(h) for h in r[10]],
                    }
                )
    return out
