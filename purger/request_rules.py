"""The rules of data-subject requests, pure: types, deadlines, the subject, free text.

A request (erasure, restriction or access) is answered within one month of its
receipt (GDPR Art. 12(3)), a period that may be extended once by two further
months with a recorded reason, which must be given within the first month. A
month is counted as EU Regulation 1182/71 counts it: the deadline is the day of
the last month with the same number as the day of receipt, or that month's last
day when it has none (received 31 January: due 28 or 29 February). The deadline
is the whole UTC day; a request still open the day after is overdue. The
Regulation's moving of a deadline that falls on a weekend or holiday to the next
working day is not applied: the purger warns early rather than late.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time

from purger.durations import add_months
from purger.errors import RequestError
from purger.hold_scope import InvalidHold, check_selector, free_text, required_text, selector_key

REQUEST_TYPES = ("erasure", "restriction", "access")
MONTHS_TO_ANSWER = 1
MONTHS_EXTENDED = 3
KEY_BYTES = 32


class InvalidRequest(RequestError):
    """A mistake in the request (type, identifier, date, text): the operator corrects it."""


class UnknownRequest(RequestError):
    """No request has this id."""


class RequestClosed(RequestError):
    """The request is closed: it can no longer change, and it no longer knows its subject."""


class WrongRequestType(RequestError):
    """The action does not apply to a request of this type."""


# -- deadlines (pure) ---------------------------------------------------------------------
def months_after(received: date, months: int) -> date:
    """The day ``months`` calendar months after ``received``, clamped to the month's end."""
    return add_months(datetime.combine(received, time(), tzinfo=UTC), months).date()


def due_on(received: date) -> date:
    """The deadline of a request received on ``received``: one month (Art. 12(3))."""
    return months_after(received, MONTHS_TO_ANSWER)


def extended_due_on(received: date) -> date:
    """The deadline extended by two further months: three months after receipt."""
    return months_after(received, MONTHS_EXTENDED)


def utc_today(now: datetime) -> date:
    """The UTC day of ``now``: deadlines are whole UTC days."""
    return now.astimezone(UTC).date()


def is_overdue(deadline: date, today: date) -> bool:
    """A request still open after its deadline's day is overdue."""
    return today > deadline


def check_received(received: date, today: date) -> date:
    """``received`` unless it lies in the future."""
    if received > today:
        raise InvalidRequest("the date of receipt (--received) lies in the future")
    return received


def can_extend(received: date, today: date) -> bool:
    """Art. 12(3): the subject is told of an extension within one month of receipt."""
    return not is_overdue(due_on(received), today)


# -- the subject -----------------------------------------------------------------------------
def subject_keys(selectors: Mapping[str, Iterable[str]], default_country_code: int) -> list[str]:
    """The look-up keys of the given identifiers, normalised as ingestion normalises them."""
    keys: list[str] = []
    try:
        for kind, values in selectors.items():
            check_selector(kind)
            for index, raw in enumerate(values):
                key = selector_key(kind, raw, default_country_code, label=f"{kind} #{index + 1}")
                if key not in keys:
                    keys.append(key)
    except InvalidHold as exc:
        raise InvalidRequest(str(exc)) from None
    if not keys:
        raise InvalidRequest("a request needs at least one identifier of the subject")
    return sorted(keys)


def selector_counts(keys: Sequence[str]) -> dict[str, int]:
    """Identifiers per type: what the audit trail may say about them."""
    counts: dict[str, int] = {}
    for key in keys:
        kind = key.split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def subject_hmac(keys: Sequence[str], key: bytes) -> str:
    """HMAC-SHA256 of the sorted look-up keys under the request's key (hex)."""
    body = json.dumps(sorted(keys), separators=(",", ":")).encode()
    return hmac.new(key, body, "sha256").hexdigest()


def text(value: str | None, what: str, *, free: bool = True) -> str:
    """Free text of a request (kept forever by the audit trail): no personal data."""
    try:
        return free_text(value, what) if free else required_text(value, what)
    except InvalidHold as exc:
        raise InvalidRequest(str(exc)) from None
