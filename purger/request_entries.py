"""The audit entries of data-subject requests, built in one place.

Like every entry (``purger.audit_entries``), their keys are a published format.
They name request ids, types, categories, counts, dates, hold ids and free text
refused when it looks like personal data, never an identifier: the subject is
audited as counts per identifier type and ``subject_hmac``, an HMAC-SHA256 of
its look-up keys under the request's own random key, which closing the request
destroys (migration 0008), so the HMAC can no longer be linked to anyone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from purger.audit_entries import Entry, Kind, PolicyRef


def _iso(value: date | datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def opened(
    *,
    request_id: int,
    request_type: str,
    ref: str,
    received_on: date,
    due_on: date,
    opened_by: str,
    selectors: Mapping[str, int],
    subject_hmac: str,
) -> Entry:
    """A request registered, with its deadline."""
    return Entry(
        Kind.SUBJECT_REQUEST_OPENED,
        {
            "request_id": request_id,
            "type": request_type,
            "ref": ref,
            "received_on": received_on.isoformat(),
            "due_on": due_on.isoformat(),
            "opened_by": opened_by,
            "selectors": dict(selectors),
            "subject_hmac": subject_hmac,
        },
    )


def extended(
    *, request_id: int, due_on: date, extended_due_on: date, reason: str, extended_by: str
) -> Entry:
    """The deadline extended by two months (Art. 12(3)), with the reason given."""
    return Entry(
        Kind.SUBJECT_REQUEST_EXTENDED,
        {
            "request_id": request_id,
            "due_on": due_on.isoformat(),
            "extended_due_on": extended_due_on.isoformat(),
            "reason": reason,
            "extended_by": extended_by,
        },
    )


def closed(
    *,
    request_id: int,
    request_type: str,
    closed_by: str,
    reason: str,
    closed_at: datetime | None,
    deadline: date,
    in_time: bool,
    selectors: Mapping[str, int],
    subject_hmac: str | None,
    exceptions: Mapping[str, Mapping[str, Any]],
) -> Entry:
    """A request closed; ``exceptions`` documents what an erasure left, per category."""
    return Entry(
        Kind.SUBJECT_REQUEST_CLOSED,
        {
            "request_id": request_id,
            "type": request_type,
            "closed_by": closed_by,
            "reason": reason,
            "closed_at": _iso(closed_at),
            "deadline": deadline.isoformat(),
            "in_time": in_time,
            "selectors": dict(selectors),
            "subject_hmac": subject_hmac,
            "exceptions": {name: dict(e) for name, e in exceptions.items()},
        },
    )


def erased(
    *,
    request_id: int,
    pass_id: str,
    erased_at: datetime,
    deferred: bool,
    categories: Mapping[str, Mapping[str, Any]],
    policy: PolicyRef,
) -> Entry:
    """Records of a request's subject destroyed (``deferred``: by a purge pass, later).

    ``categories`` counts per category what was erased and what was kept and why.
    """
    return Entry(
        Kind.SUBJECT_ERASED,
        {
            "request_id": request_id,
            "pass_id": pass_id,
            "erased_at": erased_at.isoformat(),
            "deferred": deferred,
            "categories": {name: dict(c) for name, c in categories.items()},
            "policy_version": policy.version,
            "policy_digest": policy.digest,
        },
    )


def exported(
    *,
    request_id: int,
    exported_by: str,
    output_format: str,
    records: Mapping[str, int],
    purpose: str | None,
) -> Entry:
    """An access request answered: how many records of each category were handed over."""
    return Entry(
        Kind.SUBJECT_EXPORTED,
        {
            "request_id": request_id,
            "exported_by": exported_by,
            "format": output_format,
            "records": dict(records),
            "purpose": purpose,
        },
    )


def restricted_read(
    *,
    surface: str,
    allowed: bool,
    purpose: str | None,
    request_ids: Sequence[int],
    records: Mapping[str, int],
) -> Entry:
    """A read of restricted records (Art. 18): refused, or allowed for ``purpose``."""
    return Entry(
        Kind.RESTRICTED_READ,
        {
            "surface": surface,
            "outcome": "allowed" if allowed else "refused",
            "purpose": purpose,
            "request_ids": list(request_ids),
            "records": dict(records),
        },
    )
