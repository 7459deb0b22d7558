"""Helpers of the data-subject request tests: requests, lock waits, threads, leftovers."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from purger import erasure, subject_requests
from purger.erasure_report import ErasureReport
from purger.policy import RetentionPolicy
from purger.subject_requests import SubjectRequest
from tests.integration.support import wait_until

MSISDN = "+31612345678"
EMAIL = "jan.jansen@example.nl"
SUBJECT = {"msisdn": [MSISDN]}
KEYS = [f"msisdn:{MSISDN}"]


def now() -> datetime:
    """The current instant, UTC."""
    return datetime.now(UTC)


def open_request(
    url: str,
    request_type: str,
    keys: list[str] | None = None,
    received: date | None = None,
    ref: str = "DSR-2026-001",
) -> SubjectRequest:
    """Register a request through the library (the CLI is tested on its own)."""
    with psycopg.connect(url, autocommit=True) as conn:
        return subject_requests.open_request(
            conn,
            request_type=request_type,
            keys=keys or KEYS,
            received=received or now().date(),
            ref=ref,
            opened_by="dpo",
        )


def erase(url: str, policy: RetentionPolicy, request_id: int, **options: Any) -> ErasureReport:
    """Carry out an erasure on a connection of its own."""
    with psycopg.connect(url, autocommit=True, application_name="erasure-test") as conn:
        return erasure.erase(conn, policy, request_id, **options)


def waiting_on_a_lock(url: str, application: str) -> bool:
    """True while a session named ``application`` waits for a lock (heavyweight or advisory)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = %s AND wait_event_type = 'Lock'",
            (application,),
        ).fetchone()
    return bool(row and row[0])


def holds_ingest_lock_and_waits(url: str, application: str) -> bool:
    """True while ``application`` holds an ingest lock (shared) and waits for another lock."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
            "WHERE a.application_name = %s AND a.wait_event_type = 'Lock' "
            "AND l.locktype = 'advisory' AND l.mode = 'ShareLock' AND l.granted",
            (application,),
        ).fetchone()
    return bool(row and row[0])


def await_lock_wait(url: str, application: str, what: str) -> None:
    """Return once a session named ``application`` waits for a lock."""
    wait_until(lambda: waiting_on_a_lock(url, application), timeout=60, what=what)


class Side(threading.Thread):
    """One side of a race in a thread; ``result()`` re-raises what it raised."""

    def __init__(self, action: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._action = action
        self._value: Any = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._value = self._action()
        except BaseException as exc:  # re-raised in the test's thread
            self._error = exc

    def result(self, timeout: float = 120) -> Any:
        """The action's return value once it finished."""
        self.join(timeout)
        assert not self.is_alive(), "a side of the race did not finish"
        if self._error is not None:
            raise self._error
        return self._value


AUDIT_LOCK = "SELECT pg_advisory_lock(hashtextextended('purger.audit', 0))"
AUDIT_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('purger.audit', 0))"

# Tables whose rows are records (they keep the subject legitimately when an
# exception applies, or until an erasure); every other table is checked for identifiers.
_RECORD_TABLE = r"^(records|held|keys)_"


def identifiers_left(url: str, needles: list[str]) -> list[str]:
    """Where any of ``needles`` appears outside the record tables: table names, or audit seqs."""
    found: list[str] = []
    with psycopg.connect(url) as conn:
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c "
                "WHERE c.relnamespace = 'purger'::regnamespace AND c.relkind IN ('r', 'p') "
                "AND c.relname !~ %s AND NOT c.relispartition",
                (_RECORD_TABLE,),
            )
        ]
        for table in tables:
            for (text,) in conn.execute(
                sql.SQL("SELECT to_jsonb(t)::text FROM purger.{} t").format(sql.Identifier(table))
            ):
                if any(n.lower() in str(text).lower() for n in needles):
                    found.append(table)
                    break
        for seq, content in conn.execute("SELECT seq, content FROM purger.audit_log"):
            text = json.dumps(content).lower()
            if any(n.lower() in text for n in needles):
                found.append(f"audit entry {seq}")
    return found


def future(days: float) -> datetime:
    """An instant ``days`` from now."""
    return now() + timedelta(days=days)
