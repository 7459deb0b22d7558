"""Restriction of processing (GDPR Art. 18): reads of restricted records refused, audited.

An open restriction request marks every record that carries one of its
subject's identifiers, in every category. The mark keeps nothing: a pass still
destroys such a record at its expiry (only a legal hold keeps records past it).
It makes every read surface refuse them unless the operator names a purpose
Art. 18(2) allows; the refusal, and each allowed read, is an audit entry.

Read surfaces call ``is_restricted`` (per record or per subject) and then
``guard``; ``check_subject`` does both for a read of one subject's records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from purger import audit, request_entries
from purger.db import wrap_errors
from purger.errors import RequestError
from purger.policy import RetentionPolicy
from purger.queries import query
from purger.request_rules import InvalidRequest
from purger.stored_records import record_tables, relisting

# Art. 18(2): besides storage, restricted data may be processed only with the
# subject's consent, for legal claims, to protect another person's rights, or
# for reasons of important public interest.
PURPOSES = ("consent", "legal_claims", "protection_of_rights", "public_interest")
_SQL = "requests.sql"


class RestrictedRecords(RequestError):
    """A read touched records under restriction without an allowed purpose; audited."""

    def __init__(self, message: str, request_ids: Sequence[int], records: Mapping[str, int]):
        super().__init__(message)
        self.request_ids = tuple(request_ids)
        self.records = dict(records)


def is_restricted(conn: psycopg.Connection[Any], subject_keys: Sequence[str]) -> tuple[int, ...]:
    """The open restriction requests covering a record with any of ``subject_keys``.

    Empty when the record is not restricted. Restrictions cover every category.
    """
    with wrap_errors("check restrictions"):
        rows = conn.execute(
            query("restricting_requests", _SQL), {"keys": list(subject_keys)}
        ).fetchall()
    return tuple(int(r[0]) for r in rows)


def check_purpose(purpose: str | None) -> str | None:
    """``purpose`` normalised (``-`` or ``_``); InvalidRequest unless Art. 18(2) allows it."""
    if purpose is None:
        return None
    normalised = purpose.strip().lower().replace("-", "_")
    if normalised not in PURPOSES:
        allowed = ", ".join(p.replace("_", "-") for p in PURPOSES)
        raise InvalidRequest(f"unknown purpose; Art. 18(2) allows: {allowed}")
    return normalised


def guard(
    conn: psycopg.Connection[Any],
    *,
    surface: str,
    request_ids: Sequence[int],
    records: Mapping[str, int],
    purpose: str | None,
) -> None:
    """Audit a read of restricted records; raise RestrictedRecords unless ``purpose`` is allowed.

    ``records`` counts the restricted records per category, ``request_ids`` the
    restrictions; nothing happens when both are empty. ``conn`` in autocommit.
    """
    if not request_ids and not any(records.values()):
        return
    allowed = check_purpose(purpose)
    with wrap_errors("audit a read of restricted records"), conn.transaction():
        audit.record(
            conn,
            request_entries.restricted_read(
                surface=surface,
                allowed=allowed is not None,
                purpose=allowed,
                request_ids=request_ids,
                records={k: v for k, v in records.items() if v},
            ),
        )
    if allowed is None:
        total = sum(records.values())
        ids = ", ".join(str(i) for i in request_ids)
        raise RestrictedRecords(
            f"{total} of the records asked for are restricted (subject requests {ids}, "
            "Art. 18); refused and audited. Give --purpose when Art. 18(2) allows the read",
            request_ids,
            records,
        )


def restricted_records(
    conn: psycopg.Connection[Any], policy: RetentionPolicy, keys: Sequence[str]
) -> tuple[tuple[int, ...], dict[str, int]]:
    """The restrictions and the restricted records (per category) among a subject's records."""
    with wrap_errors("check restrictions"):
        rows = conn.execute(query("restrictions_open", _SQL)).fetchall()
    restrictions = {int(r[0]): set(r[1]) for r in rows}
    if not restrictions:
        return (), {}
    restricted = sorted(set().union(*restrictions.values()))
    counts: dict[str, int] = {}
    hit: set[int] = set()
    for category in policy.categories:

        def found(name: str = category) -> list[set[str]]:
            with wrap_errors(f"check restricted records of {name}"), conn.transaction():
                return [
                    set(r[0])
                    for source in record_tables(conn, name)
                    for r in conn.execute(
                        query("subject_restricted_keys", _SQL).format(
                            source=sql.Identifier(source)
                        ),
                        {"keys": list(keys), "restricted": restricted},
                    )
                ]

        records = relisting(found)
        counts[category] = len(records)
        for record_keys in records:
            hit.update(i for i, k in restrictions.items() if k & record_keys)
    return tuple(sorted(hit)), counts


def check_subject(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    keys: Sequence[str],
    *,
    surface: str,
    purpose: str | None,
) -> None:
    """Before a read of one subject's records: refuse (audited) any restricted one."""
    check_purpose(purpose)
    request_ids, counts = restricted_records(conn, policy, keys)
    if request_ids:
        guard(conn, surface=surface, request_ids=request_ids, records=counts, purpose=purpose)
