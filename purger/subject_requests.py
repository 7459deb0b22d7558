"""The register of data-subject requests: open, extend, close, each audited.

Deadlines and the other rules are in ``purger.request_rules``. The register
keeps the subject's look-up keys only while the request is open; closing it
forgets them (migration 0008 enforces it). Every change is audited in the same
transaction, without identifiers (``purger.request_entries``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg

from purger import audit, request_entries
from purger.db import wrap_errors
from purger.queries import query
from purger.request_rules import (
    KEY_BYTES,
    REQUEST_TYPES,
    InvalidRequest,
    RequestClosed,
    UnknownRequest,
    WrongRequestType,
    can_extend,
    check_received,
    due_on,
    extended_due_on,
    is_overdue,
    selector_counts,
    subject_hmac,
    text,
    utc_today,
)

_SQL = "requests.sql"
_COLUMNS = (
    "id",
    "type",
    "ref",
    "received_on",
    "due_on",
    "opened_by",
    "opened_at",
    "subject_keys",
    "extended_due_on",
    "extension_reason",
    "extended_by",
    "extended_at",
    "erased_at",
    "closed_at",
    "closed_by",
    "close_reason",
    "closed_selectors",
)


def _iso(value: date | datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# -- the register ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SubjectRequest:
    """A registered request, open or closed."""

    id: int
    type: str
    ref: str
    received_on: date
    due_on: date
    opened_by: str
    opened_at: datetime
    subject_keys: tuple[str, ...] | None
    extended_due_on: date | None = None
    extension_reason: str | None = None
    extended_by: str | None = None
    extended_at: datetime | None = None
    erased_at: datetime | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    close_reason: str | None = None
    closed_selectors: dict[str, int] | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> SubjectRequest:
        """From a row of the ``request_*`` queries."""
        r = dict(zip(_COLUMNS, row, strict=True))
        keys = r.pop("subject_keys")
        return cls(subject_keys=tuple(keys) if keys is not None else None, **r)

    @property
    def open(self) -> bool:
        """True until it is closed."""
        return self.closed_at is None

    @property
    def deadline(self) -> date:
        """The extended deadline if there is one, else the first."""
        return self.extended_due_on or self.due_on

    @property
    def keys(self) -> tuple[str, ...]:
        """The subject's look-up keys; RequestClosed once they are forgotten."""
        if self.subject_keys is None:
            raise RequestClosed(f"subject request {self.id} is closed: its subject is forgotten")
        return self.subject_keys

    def selectors(self) -> dict[str, int]:
        """Identifiers per type, whether the request still has them or not."""
        if self.subject_keys is not None:
            return selector_counts(self.subject_keys)
        return dict(self.closed_selectors or {})

    def overdue(self, today: date) -> bool:
        """Open past its deadline."""
        return self.open and is_overdue(self.deadline, today)

    def as_dict(self, today: date | None = None) -> dict[str, Any]:
        """JSON-ready (an open request's subject keys included: operator output only)."""
        return {
            "id": self.id,
            "type": self.type,
            "state": "open" if self.open else "closed",
            "ref": self.ref,
            "received_on": self.received_on.isoformat(),
            "due_on": self.due_on.isoformat(),
            "extended_due_on": _iso(self.extended_due_on),
            "deadline": self.deadline.isoformat(),
            "overdue": self.overdue(today) if today is not None else None,
            "opened_by": self.opened_by,
            "opened_at": self.opened_at.isoformat(),
            "subject_keys": list(self.subject_keys) if self.subject_keys is not None else None,
            "selectors": self.selectors(),
            "extension_reason": self.extension_reason,
            "extended_by": self.extended_by,
            "erased_at": _iso(self.erased_at),
            "closed_at": _iso(self.closed_at),
            "closed_by": self.closed_by,
            "close_reason": self.close_reason,
        }


def db_today(conn: psycopg.Connection[Any]) -> date:
    """Today (UTC) by the database clock, which every instance of the purger shares."""
    row = conn.execute(query("db_now")).fetchone()
    assert row is not None
    return utc_today(row[0])


def open_request(
    conn: psycopg.Connection[Any],
    *,
    request_type: str,
    keys: Sequence[str],
    received: date,
    ref: str,
    opened_by: str,
) -> SubjectRequest:
    """Register a request (``conn`` in autocommit); audited in the same transaction."""
    if request_type not in REQUEST_TYPES:
        raise InvalidRequest(f"unknown request type {request_type!r}; known: {REQUEST_TYPES}")
    reference = text(ref, "request reference (--ref)")
    who = text(opened_by, "opened by (--by)", free=False)
    key = secrets.token_bytes(KEY_BYTES)
    with wrap_errors("open subject request"), conn.transaction():
        check_received(received, db_today(conn))
        due = due_on(received)
        row = conn.execute(
            query("request_insert", _SQL),
            {
                "type": request_type,
                "ref": reference,
                "received": received,
                "due": due,
                "by": who,
                "keys": list(keys),
                "hmac_key": key,
            },
        ).fetchone()
        assert row is not None
        request = SubjectRequest.from_row(row)
        audit.record(
            conn,
            request_entries.opened(
                request_id=request.id,
                request_type=request_type,
                ref=reference,
                received_on=received,
                due_on=due,
                opened_by=who,
                selectors=selector_counts(keys),
                subject_hmac=subject_hmac(keys, key),
            ),
        )
    return request


def get(conn: psycopg.Connection[Any], request_id: int) -> SubjectRequest:
    """The request with ``request_id``; UnknownRequest if there is none."""
    with wrap_errors("read subject request"):
        row = conn.execute(query("request_get", _SQL), {"id": request_id}).fetchone()
    if row is None:
        raise UnknownRequest(f"no subject request has id {request_id}")
    return SubjectRequest.from_row(row)


def lock(
    conn: psycopg.Connection[Any], request_id: int, request_type: str | None = None
) -> SubjectRequest:
    """In the caller's transaction: lock an open request (of ``request_type``) and read it."""
    row = conn.execute(query("request_lock", _SQL), {"id": request_id}).fetchone()
    if row is None:
        raise UnknownRequest(f"no subject request has id {request_id}")
    request = SubjectRequest.from_row(row)
    if not request.open:
        raise RequestClosed(f"subject request {request_id} is closed")
    if request_type is not None and request.type != request_type:
        raise WrongRequestType(
            f"subject request {request_id} is a {request.type} request, not {request_type}"
        )
    return request


def lock_if_free(conn: psycopg.Connection[Any], request_id: int) -> SubjectRequest | None:
    """Like ``lock`` without waiting: None when closed or locked by someone else."""
    row = conn.execute(query("request_lock_if_free", _SQL), {"id": request_id}).fetchone()
    return SubjectRequest.from_row(row) if row is not None else None


def list_requests(
    conn: psycopg.Connection[Any], *, open_only: bool = False
) -> list[SubjectRequest]:
    """Every request (or the open ones), oldest first."""
    with wrap_errors("list subject requests"):
        rows = conn.execute(query("requests_list", _SQL), {"open_only": open_only}).fetchall()
    return [SubjectRequest.from_row(r) for r in rows]


def extend(
    conn: psycopg.Connection[Any], request_id: int, *, reason: str, extended_by: str
) -> SubjectRequest:
    """Extend the deadline to three months after receipt, once, within the first month."""
    why = text(reason, "reason of the extension (--reason)")
    who = text(extended_by, "extended by (--by)", free=False)
    with wrap_errors("extend subject request"), conn.transaction():
        request = lock(conn, request_id)
        if request.extended_due_on is not None:
            raise InvalidRequest(f"subject request {request_id} was extended already")
        if not can_extend(request.received_on, db_today(conn)):
            raise InvalidRequest(
                f"subject request {request_id}: its first month has passed; Art. 12(3) asks "
                "for the extension to be given within it"
            )
        new_due = extended_due_on(request.received_on)
        conn.execute(
            query("request_extend", _SQL),
            {"id": request_id, "extended_due": new_due, "reason": why, "by": who},
        )
        audit.record(
            conn,
            request_entries.extended(
                request_id=request_id,
                due_on=request.due_on,
                extended_due_on=new_due,
                reason=why,
                extended_by=who,
            ),
        )
    return get(conn, request_id)


def mark_erased(conn: psycopg.Connection[Any], request_id: int, at: datetime) -> None:
    """In the caller's transaction: record the instant of the erasure (once)."""
    conn.execute(query("request_mark_erased", _SQL), {"id": request_id, "at": at})


Exceptions = Callable[[SubjectRequest], dict[str, dict[str, Any]]]


def close(
    conn: psycopg.Connection[Any],
    request_id: int,
    *,
    reason: str,
    closed_by: str,
    exceptions: Exceptions | None = None,
) -> tuple[SubjectRequest, dict[str, dict[str, Any]]]:
    """Close a request: it forgets its subject; audited with ``exceptions(request)``.

    ``exceptions`` runs under the request's lock, before the identifiers go, and
    may raise to refuse the closing.
    """
    why = text(reason, "reason of the closing (--reason)")
    who = text(closed_by, "closed by (--by)", free=False)
    with wrap_errors("close subject request"), conn.transaction():
        request = lock(conn, request_id)
        documented = exceptions(request) if exceptions is not None else {}
        row = conn.execute(query("request_hmac_key", _SQL), {"id": request_id}).fetchone()
        digest = subject_hmac(request.keys, bytes(row[0])) if row and row[0] else None
        today = db_today(conn)
        row = conn.execute(
            query("request_close", _SQL), {"id": request_id, "by": who, "reason": why}
        ).fetchone()
        assert row is not None
        done = SubjectRequest.from_row(row)
        audit.record(
            conn,
            request_entries.closed(
                request_id=request_id,
                request_type=done.type,
                closed_by=who,
                reason=why,
                closed_at=done.closed_at,
                deadline=done.deadline,
                in_time=not is_overdue(done.deadline, today),
                selectors=done.selectors(),
                subject_hmac=digest,
                exceptions=documented,
            ),
        )
    return done, documented


def counts(conn: psycopg.Connection[Any], today: date) -> dict[str, tuple[int, int]]:
    """Per request type: (open, overdue)."""
    out = dict.fromkeys(REQUEST_TYPES, (0, 0))
    for kind, n_open, n_overdue in conn.execute(query("requests_by_type", _SQL), {"today": today}):
        out[str(kind)] = (int(n_open), int(n_overdue))
    return out
