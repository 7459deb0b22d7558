"""What a legal hold covers: the scope, its validation and its index pre-filter. Pure.

A stored record is held (kept past its expiry) while an active hold's scope
covers it. Coverage has one definition, the SQL function ``purger.hold_covers``
(migration 0003); this module never decides it. It only builds what the
database needs around it: the scope's parameters and an index-backed pre-filter
(a superset of the covered rows that ``purger.hold_covers`` rechecks).

Identifiers are personal data. A scope's ``as_dict`` contains them (operator
output only); ``audit_dict`` names none of them, not even as a plain hash (a
phone number is recovered from its sha256 by trying the numbering space): it
counts them per selector type and carries an HMAC-SHA256 of the whole scope
under the hold's own random key, which the hold keeps while it is active (so
the stored scope can be checked against the audit trail) and forgets on its
release (so the HMAC can no longer be linked to anyone). Messages of
``InvalidHold`` name selector types and positions, never a value.

A hold's case reference and reason are free text kept forever in the audit
trail; ``free_text`` refuses one that looks like it holds personal data (a
phone number, an e-mail address, an IP address) without echoing it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql

from purger.errors import HoldError
from purger.identifiers import KNOWN_TYPES, IdentifierError, normalise, subject_key
from purger.policy import RetentionPolicy
from purger.queries import query, template

SELECTORS: tuple[str, ...] = KNOWN_TYPES
_MAX_TEXT = 1000


class InvalidHold(HoldError):
    """The request is wrong (scope, text, identifier): the operator must correct it."""


def iso(value: datetime | None) -> str | None:
    """``value`` in UTC as ISO 8601 (None stays None)."""
    return value.astimezone(UTC).isoformat() if value is not None else None


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

    def selector_counts(self) -> dict[str, int]:
        """Identifiers per selector type (what the audit trail may say about them).

        The database's ``purger.selector_counts`` (migration 0004) counts the same
        when a release replaces the identifiers; its guard trigger insists on it.
        """
        counts: dict[str, int] = {}
        for key in self.subject_keys or ():
            kind = key.split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def canonical(self) -> bytes:
        """The whole scope as canonical JSON (contains the identifiers: never stored as is)."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":")).encode()

    def keyed_digest(self, key: bytes) -> str:
        """HMAC-SHA256 of the whole scope under the hold's key (hex).

        Without the key nobody can confirm a guessed identifier from it; the key
        lives in the hold's row until the release destroys it (migration 0005).
        """
        return hmac.new(key, self.canonical(), hashlib.sha256).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (contains the identifiers: operator output only)."""
        return {
            "categories": list(self.categories) if self.categories is not None else None,
            "subject_keys": list(self.subject_keys) if self.subject_keys is not None else None,
            "tenant": self.tenant,
            "occurred_from": iso(self.occurred_from),
            "occurred_to": iso(self.occurred_to),
            "all_records": self.all_records,
        }

    def audit_dict(self, key: bytes) -> dict[str, Any]:
        """The scope for the audit trail: selector counts and the keyed digest, no identifier."""
        return {
            "categories": list(self.categories) if self.categories is not None else None,
            "selectors": self.selector_counts(),
            "tenant": self.tenant,
            "occurred_from": iso(self.occurred_from),
            "occurred_to": iso(self.occurred_to),
            "all_records": self.all_records,
            "scope_hmac": self.keyed_digest(key),
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


def optional_text(value: str | None, what: str) -> str | None:
    """``value`` stripped, or None when blank; InvalidHold when it cannot be stored."""
    if value is None or not value.strip():
        return None
    if len(value) > _MAX_TEXT:
        raise InvalidHold(f"{what} is longer than {_MAX_TEXT} characters")
    if "\x00" in value:
        raise InvalidHold(f"{what} contains a NUL character")
    return value.strip()


def required_text(value: str | None, what: str) -> str:
    """``value`` stripped; InvalidHold when it is blank or cannot be stored."""
    text = optional_text(value, what)
    if text is None:
        raise InvalidHold(f"{what} is required and must not be blank")
    return text


# Personal data that must not be written into a hold's free text. A phone number:
# 7 or more digits (a leading +, spaces, dashes and parentheses between them) that
# do not continue a word, so that CASE-2026-001 is a reference; dates are no phones.
_DATES = re.compile(r"\d{4}-\d{1,2}-\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2})?)?|\d{1,2}-\d{1,2}-\d{4}")
_PHONE = re.compile(r"(?<![\w+-])\+?\(?\d(?:[\s()-]{0,3}\d){6,}")
_EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)+")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d])")
_IPV6 = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.%\w]*")


def _is_ip(candidate: str) -> bool:
    for text in {candidate, candidate.strip("."), candidate.rstrip(".:")}:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            continue
        return True
    return False


def personal_data_in(text: str) -> str | None:
    """What kind of personal data ``text`` looks like it contains, or None."""
    if _EMAIL.search(text):
        return "an e-mail address"
    if any(all(int(n) <= 255 for n in m.group().split(".")) for m in _IPV4.finditer(text)):
        return "an IP address"
    if any(_is_ip(m.group()) for m in _IPV6.finditer(text)):
        return "an IP address"
    if _PHONE.search(_DATES.sub(" ", text)):
        return "a phone number"
    return None


def free_text(value: str | None, what: str) -> str:
    """``value`` as ``required_text``, refused when it looks like it holds personal data.

    A hold's case reference and reason are kept forever in the audit trail, so
    they must not identify a person. The message names ``what`` and the kind of
    data, never the value.
    """
    text = required_text(value, what)
    found = personal_data_in(text)
    if found is not None:
        raise InvalidHold(
            f"{what} looks like it contains {found}; it is free text kept forever in the "
            "audit trail and must not hold personal data: refer to the case, not the person"
        )
    return text


def check_selector(kind: str) -> None:
    """InvalidHold unless ``kind`` is a known subject selector."""
    if kind not in SELECTORS:
        raise InvalidHold(f"unknown subject selector {kind!r}; known: {', '.join(SELECTORS)}")


def selector_key(kind: str, raw: str, default_country_code: int, *, label: str) -> str:
    """The look-up key of one identifier, normalised as ingestion normalises it.

    InvalidHold names ``label`` and the problem, never the identifier.
    """
    try:
        return subject_key(kind, normalise(kind, raw, default_country_code))
    except IdentifierError as exc:
        raise InvalidHold(f"{label}: {exc}") from None


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
        check_selector(kind)
        for index, raw in enumerate(values):
            key = selector_key(kind, raw, default_country_code, label=f"{kind} #{index + 1}")
            if key not in keys:
                keys.append(key)
    tenant_value = optional_text(tenant, "tenant")
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
        key=lambda w: (w[0] or "", iso(w[1]) or "", iso(w[2]) or "~"),
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
