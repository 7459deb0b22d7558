"""The answer to an access request (GDPR Art. 15), audited.

The subject export of the request's subject, each record with its category's
purpose, legal basis, controller and retention (the tenant's, where a tenant
has its own) and its planned destruction: its expiry, or none while a legal
hold keeps it. Restricted records (Art. 18) are refused as on every read
surface. The handing over is an audit entry (counts per category, the format).
The output holds personal data: for the data-protection officer only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from purger import audit, request_entries, request_rules, restriction, subject_requests
from purger.db import wrap_errors
from purger.policy import RetentionPolicy
from purger.request_rules import RequestClosed, WrongRequestType
from purger.subject_export import csv_row, export_subject
from purger.subject_requests import SubjectRequest

CSV_FIELDS = (
    "category",
    "record_id",
    "purpose",
    "legal_basis",
    "controller",
    "retention",
    "occurred_at",
    "expires_at",
    "planned_destruction",
    "destruction_note",
    "storage",
    "holds",
    "tenant",
    "ingested_at",
    "subjects",
    "payload",
    "source_topic",
    "source_partition",
    "source_offset",
)
FORMATS = ("json", "csv")


@dataclass(frozen=True)
class AccessAnswer:
    """What is handed over: the request, the categories' rules, the records."""

    request: SubjectRequest
    categories: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        """The JSON answer."""
        return {
            "request": {
                "id": self.request.id,
                "ref": self.request.ref,
                "received_on": self.request.received_on.isoformat(),
                "subject_keys": list(self.request.keys),
            },
            "categories": self.categories,
            "count": len(self.records),
            "records": self.records,
        }

    def csv_rows(self) -> list[dict[str, str]]:
        """One CSV row per record, cells neutralised against formula injection."""
        return [csv_row(r) for r in self.records]


def categories_of(policy: RetentionPolicy) -> dict[str, dict[str, Any]]:
    """Each category's purpose, legal basis, controller and retention, as the policy says."""
    return {
        name: {
            "purpose": c.policy.description,
            "legal_basis": c.policy.legal_basis,
            "controller": c.policy.controller,
            "retention": str(c.policy.retention),
            "tenant_retention": {t: str(d) for t, d in c.policy.tenant_overrides.items()},
            "source": c.policy.statement_row,
        }
        for name, c in policy.categories.items()
    }


def _annotated(policy: RetentionPolicy, record: dict[str, Any]) -> dict[str, Any]:
    category = policy.categories[record["category"]]
    held = bool(record["holds"])
    return {
        **record,
        "purpose": category.policy.description,
        "legal_basis": category.policy.legal_basis,
        "controller": category.policy.controller,
        "retention": str(category.retention_for(record["tenant"])),
        "planned_destruction": None if held else record["expires_at"],
        "destruction_note": (
            "kept past its expiry while a legal hold covers it"
            if held
            else "destroyed by the first purge pass at or after this instant"
        ),
    }


def answer(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    request_id: int,
    *,
    exported_by: str,
    output_format: str,
    purpose: str | None = None,
) -> AccessAnswer:
    """The records of an open access request's subject; the export is audited."""
    who = request_rules.text(exported_by, "exported by (--by)", free=False)
    request = subject_requests.get(conn, request_id)
    if request.type != "access":
        raise WrongRequestType(f"subject request {request_id} is a {request.type} request")
    if not request.open:
        raise RequestClosed(f"subject request {request_id} is closed")
    restriction.check_subject(conn, policy, request.keys, surface="request export", purpose=purpose)
    records = [_annotated(policy, r) for r in export_subject(conn, policy, request.keys)]
    per_category = dict.fromkeys(policy.categories, 0)
    for r in records:
        per_category[r["category"]] += 1
    with wrap_errors("audit the access export"), conn.transaction():
        audit.record(
            conn,
            request_entries.exported(
                request_id=request_id,
                exported_by=who,
                output_format=output_format,
                records=per_category,
                purpose=restriction.check_purpose(purpose),
            ),
        )
    return AccessAnswer(request, categories_of(policy), records)
