"""Erasure (GDPR Art. 17): every record of a request's subject destroyed, with its exceptions.

Two kinds of record stay, each reported per category with its reason: those of
a category whose legal basis is a legal obligation (interception: the statute
wins, Art. 17(3)(b)), and those an active legal hold covers (Art. 17(3)(e)).
Held records go when their last hold is released: every purge pass calls
``complete_deferred``, which also erases records of the subject that arrived
after the erasure but are dated at or before it (a late or replayed message),
until the request is closed.

The destruction is a purge pass's: the transaction first locks out hold changes
and re-reads the holds (``held_storage.lock_for_destruction``), keeps the
partition registry's counts exact, is atomic with its audit entry, and the
tables rows left are VACUUMed afterwards, each vacuum audited. The erasure also
takes every category's ingest lock exclusively, as a pass does to fix its
instant: a batch being stored commits first and is erased, a later one waits
and is then a late arrival for the next pass. ``erase_records`` holds all the
record-destroying SQL.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from purger import audit, held_storage, request_entries, subject_requests
from purger.audit_entries import PolicyRef
from purger.db import wrap_errors
from purger.erasure_report import (
    LEGAL_HOLD,
    LEGAL_OBLIGATION,
    CategoryErasure,
    ErasureReport,
    exemption,
)
from purger.errors import PurgerError, RequestError, StorageError
from purger.partitions import held_table, keys_table
from purger.policy import RetentionPolicy
from purger.queries import query
from purger.stored_records import record_tables
from purger.subject_requests import SubjectRequest
from purger.vacuum import vacuum_audited

log = logging.getLogger("purger.erasure")

_SQL = "requests.sql"
_ATTEMPTS = 5


class ErasureRefused(RequestError):
    """The erasure cannot be closed (or done) as asked; the message says why."""


def _q(name: str, **identifiers: Any) -> sql.Composed:
    return query(name, _SQL).format(**identifiers)


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute(query("table_exists", _SQL), {"name": table}).fetchone()
    return bool(row and row[0])


def erase_records(
    conn: psycopg.Connection[Any], category: str, keys: Sequence[str], until: datetime
) -> dict[str, int]:
    """Destroy the subject's unheld records of ``category`` stored or dated before ``until``.

    The one place an erasure destroys records: every partition (attached or
    detached) and held storage, their key-registry rows with them, the
    partition registry's counts kept exact. Runs in the caller's transaction,
    after ``held_storage.lock_for_destruction``. Returns rows erased per table.
    """
    held = held_table(category)
    keys_name = keys_table(category)
    registry = _exists(conn, keys_name)
    values = {"keys": list(keys), "until": until, "category": category}
    covered = query("covered_by_active_hold")
    erased: dict[str, int] = {}
    for source in record_tables(conn, category):
        rows = conn.execute(
            _q("erase_rows", source=sql.Identifier(source), covered=covered), values
        ).fetchall()
        if not rows:
            continue
        if source != held:
            conn.execute(query("decrement_rows"), {"n": len(rows), "name": source})
        if registry:
            conn.execute(
                _q("erase_keys", keys=sql.Identifier(keys_name)),
                {"ids": [r[0] for r in rows], "expiries": [r[1] for r in rows]},
            )
        erased[source] = len(rows)
    return erased


def _count(conn: psycopg.Connection[Any], name: str, source: str, values: dict[str, Any]) -> int:
    covered = query("covered_by_active_hold")
    row = conn.execute(_q(name, source=sql.Identifier(source), covered=covered), values).fetchone()
    return int(row[0]) if row else 0


def _category(
    conn: psycopg.Connection[Any],
    category: str,
    legal_basis: str,
    keys: Sequence[str],
    until: datetime,
    *,
    erase: bool,
) -> CategoryErasure:
    out = CategoryErasure(legal_basis)
    values = {"keys": list(keys), "until": until, "category": category}
    tables = record_tables(conn, category)
    if exemption(legal_basis) is not None:
        out.kept_legal_obligation = sum(_count(conn, "subject_count", t, values) for t in tables)
        return out
    holds: set[int] = set()
    for source in tables:
        row = conn.execute(_q("subject_held", source=sql.Identifier(source)), values).fetchone()
        if row:
            out.kept_legal_hold += int(row[0])
            holds.update(int(h) for h in row[1])
    out.hold_ids = sorted(holds)
    if erase:
        out.tables = erase_records(conn, category, keys, until)
        out.erased = sum(out.tables.values())
    else:
        out.erased = sum(_count(conn, "erasable_count", t, values) for t in tables)
    return out


def _retryable(exc: StorageError) -> bool:
    # A pass dropped a listed partition, or won a deadlock, or held a lock too long:
    # the whole transaction rolled back and can simply run again.
    cause = exc.__cause__
    return isinstance(
        cause, pgerrors.UndefinedTable | pgerrors.DeadlockDetected | pgerrors.LockNotAvailable
    )


def erase(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    request_id: int,
    *,
    dry_run: bool = False,
) -> ErasureReport:
    """Carry out (or, ``dry_run``, plan) the erasure of request ``request_id``.

    ``conn`` is in autocommit. Running it again is harmless: records dated after
    the first erasure's instant are not the request's.
    """
    pass_id = str(uuid.uuid4())
    for attempt in range(_ATTEMPTS):
        try:
            with wrap_errors("erase the subject's records"), conn.transaction():
                report = _erase_once(conn, policy, request_id, pass_id, dry_run)
            break
        except StorageError as exc:
            if attempt + 1 < _ATTEMPTS and _retryable(exc):
                continue
            raise
    if not dry_run:
        vacuum(conn, report)
    return report


def _erase_once(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    request_id: int,
    pass_id: str,
    dry_run: bool,
) -> ErasureReport:
    if not dry_run:
        # Sorted like a pass's: nobody waits for these locks in a cycle.
        for name in sorted(policy.categories):
            conn.execute(query("ingest_lock_exclusive"), {"category": name})
    request = subject_requests.lock(conn, request_id, "erasure")
    row = conn.execute(query("db_now")).fetchone()
    assert row is not None
    until: datetime = request.erased_at or row[0]
    if not dry_run:
        if request.erased_at is None:
            subject_requests.mark_erased(conn, request_id, until)
        held_storage.lock_for_destruction(conn)
    report = ErasureReport(request_id, pass_id, until, dry_run=dry_run)
    for name, category in policy.categories.items():
        report.categories[name] = _category(
            conn, name, category.policy.legal_basis, request.keys, until, erase=not dry_run
        )
    if not dry_run:
        _audit(conn, policy, report)
    return report


def _audit(conn: psycopg.Connection[Any], policy: RetentionPolicy, report: ErasureReport) -> None:
    assert report.erased_at is not None
    audit.record(
        conn,
        request_entries.erased(
            request_id=report.request_id,
            pass_id=report.pass_id,
            erased_at=report.erased_at,
            deferred=report.deferred,
            categories={n: c.audit_dict() for n, c in report.categories.items()},
            policy=PolicyRef(policy.version, policy.digest),
        ),
    )


def vacuum(conn: psycopg.Connection[Any], report: ErasureReport) -> None:
    """VACUUM every table rows were erased from (autocommit), each audited.

    As after a pass's row deletes: the erased tuples leave the pages. A vacuum
    that fails is reported and never undoes the erasure.
    """
    for name, category in report.categories.items():
        for table, rows in category.tables.items():
            try:
                vacuum_audited(
                    conn, table, pass_id=report.pass_id, category=name, rows=rows, analyze=True
                )
            except StorageError as exc:
                report.vacuum_problems.append(str(exc))


def complete_deferred(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    *,
    pass_id: str,
    categories: Sequence[str] | None = None,
) -> list[ErasureReport]:
    """Finish the open erasures (the purge pass's hook, once per pass, autocommit ``conn``).

    Erases the records of each carried-out, still open erasure request that no
    hold covers any more, or that arrived since, dated at or before its instant.
    A request an operator is working on is skipped (a later pass takes it). Never
    raises: what stops it is logged, and the next pass tries again.
    """
    reports: list[ErasureReport] = []
    if conn.closed or conn.broken:
        return reports
    try:
        with wrap_errors("list pending erasures"):
            pending = [int(r[0]) for r in conn.execute(query("erasures_pending", _SQL))]
        for request_id in pending:
            with wrap_errors(f"complete erasure {request_id}"), conn.transaction():
                request = subject_requests.lock_if_free(conn, request_id)
                if request is None or request.erased_at is None:
                    continue
                held_storage.lock_for_destruction(conn)
                report = _deferred_one(conn, policy, request, pass_id, categories)
                if report.erased:
                    _audit(conn, policy, report)
            if report.erased:
                vacuum(conn, report)
                reports.append(report)
    except (PurgerError, psycopg.Error) as exc:
        reason = str(exc) if isinstance(exc, PurgerError) else exc.__class__.__name__
        log.warning(
            "deferred erasures not completed (%s); the next pass tries again",
            reason,
            extra={"pass_id": pass_id},
        )
    return reports


def _deferred_one(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    request: SubjectRequest,
    pass_id: str,
    categories: Sequence[str] | None,
) -> ErasureReport:
    assert request.erased_at is not None
    report = ErasureReport(request.id, pass_id, request.erased_at, deferred=True)
    for name, category in policy.categories.items():
        if categories is not None and name not in categories:
            continue
        if exemption(category.policy.legal_basis) is not None:
            continue
        tables = erase_records(conn, name, request.keys, request.erased_at)
        if tables:
            report.categories[name] = CategoryErasure(
                category.policy.legal_basis, erased=sum(tables.values()), tables=tables
            )
    return report


def exceptions_at_close(
    conn: psycopg.Connection[Any], policy: RetentionPolicy, *, accept: bool
) -> subject_requests.Exceptions:
    """The check and documentation of what a closed erasure request leaves behind.

    Records kept by legal obligation are documented. Records still held, or not
    yet erased, keep the request open unless ``accept`` documents them as
    exceptions instead (they are then destroyed at their expiry, not before).
    """

    def document(request: SubjectRequest) -> dict[str, dict[str, Any]]:
        if request.type != "erasure":
            return {}
        if request.erased_at is None:
            return {"*": {"reason": "not_carried_out"}}
        out: dict[str, dict[str, Any]] = {}
        pending = 0
        for name, category in policy.categories.items():
            basis = category.policy.legal_basis
            c = _category(conn, name, basis, request.keys, request.erased_at, erase=False)
            entry: dict[str, Any] = {}
            if c.kept_legal_obligation:
                entry = {"reason": LEGAL_OBLIGATION, "records": c.kept_legal_obligation}
            elif c.kept_legal_hold or c.erased:
                entry = {"reason": LEGAL_HOLD, "records": c.kept_legal_hold, "hold_ids": c.hold_ids}
                entry["not_yet_erased"] = c.erased
                pending += c.kept_legal_hold + c.erased
            if entry:
                out[name] = entry
        if pending and not accept:
            raise ErasureRefused(
                f"subject request {request.id}: {pending} records of the subject are held or "
                "not yet erased; it stays open until their holds are released and a pass "
                "erases them, or close it with --with-exceptions to document them instead"
            )
        return out

    return document
