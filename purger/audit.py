"""The audit trail: an append-only, hash-chained log of every destruction and hold.

Each entry's hash is sha256 over the previous entry's hash and the entry's own
canonical content (kind, time, content as sorted, compact JSON). A trigger
refuses UPDATE, DELETE and TRUNCATE; what a superuser does anyway breaks the
chain, and ``verify`` names the first entry that was modified, removed or moved.

The owner of the tables can still rewrite the whole chain consistently, head
included. Each pass therefore publishes its entry's (seq, hash) outside
PostgreSQL (``anchor_of``; a Kafka topic through the ingest plugin), and
``verify(conn, anchors)`` checks the chain against every anchored head.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from purger.audit_entries import Entry
from purger.db import wrap_errors
from purger.queries import query

GENESIS = "0" * 64


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, kind: str, recorded_at: datetime, content: dict[str, Any]) -> str:
    """The hash of an entry given its predecessor's hash."""
    body = canonical(
        {"kind": kind, "recorded_at": recorded_at.astimezone(UTC).isoformat(), "content": content}
    )
    return hashlib.sha256(prev_hash.encode() + b"\n" + body).hexdigest()


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the chain."""

    seq: int
    kind: str
    recorded_at: datetime
    content: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data (one line of an export)."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "recorded_at": self.recorded_at.astimezone(UTC).isoformat(),
            "content": self.content,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def append(conn: psycopg.Connection[Any], kind: str, content: dict[str, Any]) -> AuditEntry:
    """Append an entry inside the caller's transaction (atomic with what it records)."""
    with wrap_errors("append audit entry"):
        # Serialises appends: seq has no gaps and each entry sees its predecessor.
        conn.execute(query("audit_lock"))
        last = conn.execute(query("audit_last")).fetchone()
        seq, prev = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS)
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        recorded_at: datetime = row[0]
        digest = entry_hash(prev, kind, recorded_at, content)
        conn.execute(
            query("audit_insert"),
            {
                "seq": seq,
                "kind": kind,
                "recorded_at": recorded_at,
                "content": Jsonb(content),
                "prev_hash": prev,
                "hash": digest,
            },
        )
        conn.execute(query("audit_set_head"), {"seq": seq, "hash": digest})
    return AuditEntry(seq, kind, recorded_at, content, prev, digest)


def record(conn: psycopg.Connection[Any], entry: Entry) -> AuditEntry:
    """Append ``entry`` (built by ``purger.audit_entries``) to the chain."""
    return append(conn, entry.kind.value, entry.content)


def _rows(conn: psycopg.Connection[Any], since: datetime | None) -> Iterator[AuditEntry]:
    with conn.cursor(name="audit_scan") as cur:
        if since is None:
            cur.execute(query("audit_all"))
        else:
            cur.execute(query("audit_entries"), {"since": since})
        for seq, kind, recorded_at, content, prev_hash, digest in cur:
            yield AuditEntry(int(seq), kind, recorded_at, content, prev_hash, digest)


@contextlib.contextmanager
def _snapshot(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A read-only transaction on one snapshot, so that the entries and the head agree.

    Under READ COMMITTED an entry appended while the chain is read moves the head
    past the last entry read: to ``verify`` that looks exactly like removed entries.
    """
    idle = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction():
        if idle:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


@dataclass(frozen=True)
class Verification:
    """The result of ``verify``."""

    ok: bool
    entries: int
    head_seq: int
    head_hash: str
    problem: str | None = None
    first_bad_seq: int | None = None
    anchors: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "problem": self.problem,
            "first_bad_seq": self.first_bad_seq,
            **({} if self.anchors is None else {"anchors": self.anchors}),
        }


def anchor_of(entry: AuditEntry) -> dict[str, Any]:
    """What is published outside PostgreSQL to anchor the chain at ``entry``."""
    return {
        "seq": entry.seq,
        "hash": entry.hash,
        "recorded_at": entry.recorded_at.astimezone(UTC).isoformat(),
    }


def verify(
    conn: psycopg.Connection[Any], anchors: list[dict[str, Any]] | None = None
) -> Verification:
    """Recompute the chain; name the first entry modified, removed or reordered.

    With ``anchors`` (heads published by earlier passes), an intact chain must also
    still hold every anchored (seq, hash): a chain rewritten consistently, or cut
    back below an anchored head, fails naming the lowest such seq.
    """
    result = _verify_chain(conn)
    if anchors is None or not result.ok:
        return result
    with wrap_errors("verify audit anchors"), _snapshot(conn):
        stored = {
            int(r[0]): str(r[1]) for r in conn.execute("SELECT seq, hash FROM purger.audit_log")
        }
    for anchor in sorted(anchors, key=lambda a: int(a["seq"])):
        seq, digest = int(anchor["seq"]), str(anchor["hash"])
        when = anchor.get("recorded_at", "?")
        if seq not in stored:
            problem = f"entry {seq}, anchored at {when}, was removed"
        elif stored[seq] != digest:
            problem = f"entry {seq} differs from its head anchored at {when} (chain rewritten)"
        else:
            continue
        return Verification(
            False, result.entries, result.head_seq, result.head_hash, problem, seq, len(anchors)
        )
    return Verification(
        True, result.entries, result.head_seq, result.head_hash, anchors=len(anchors)
    )


def _verify_chain(conn: psycopg.Connection[Any]) -> Verification:
    with wrap_errors("verify audit chain"), _snapshot(conn):
        hashes = {str(r[0]) for r in conn.execute("SELECT hash FROM purger.audit_log")}
        prev, expected, count = GENESIS, 1, 0

        def bad(problem: str, seq: int) -> Verification:
            return Verification(False, count, expected - 1, prev, problem, seq)

        for entry in _rows(conn, None):
            if entry_hash(entry.prev_hash, entry.kind, entry.recorded_at, entry.content) != (
                entry.hash
            ):
                return bad(f"entry {entry.seq} was modified (its hash does not match)", entry.seq)
            if entry.seq != expected:
                return bad(
                    f"entry {expected} was removed (the chain jumps to {entry.seq})", expected
                )
            if entry.prev_hash != prev:
                if entry.prev_hash in hashes:
                    return bad(
                        f"entry {entry.seq} was reordered (it follows another entry)", entry.seq
                    )
                return bad(f"an entry before {entry.seq} was removed or replaced", entry.seq)
            prev, expected, count = entry.hash, expected + 1, count + 1
        head = conn.execute(query("audit_head")).fetchone()
        if head is not None and (int(head[0]) != expected - 1 or head[1] != prev):
            return bad(
                f"entries after {expected - 1} were removed (the recorded head is {head[0]})",
                expected,
            )
        if head is None and count:
            return bad("the chain head record was removed", expected)
    return Verification(True, count, expected - 1, prev)


def export(
    conn: psycopg.Connection[Any], since: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """JSON-ready entries (from ``since``), then a final line with the chain head."""
    count = 0
    with wrap_errors("export audit chain"), _snapshot(conn):
        for entry in _rows(conn, since):
            count += 1
            yield entry.as_dict()
        head = conn.execute(query("audit_head")).fetchone()
    yield {
        "chain_head": {
            "seq": int(head[0]) if head else 0,
            "hash": str(head[1]) if head else GENESIS,
            "exported_at": datetime.now(UTC).isoformat(),
            "entries_in_export": count,
        }
    }


def last_of_kind(conn: psycopg.Connection[Any], kind: str) -> AuditEntry | None:
    """The newest entry of ``kind``."""
    with wrap_errors("read audit trail"):
        row = conn.execute(query("audit_last_of_kind"), {"kind": kind}).fetchone()
    if row is None:
        return None
    return AuditEntry(int(row[0]), row[1], row[2], row[3], row[4], row[5])
