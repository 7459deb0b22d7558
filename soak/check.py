"""The checker: Kafka and the database against what the run sent, one verdict per row.

For every message that landed in a category topic (acknowledged or not: the topics are read
back, so an unacknowledged send that landed anyway is judged too):

* a bad message must be in the dead-letter topic (matched by the source topic, partition
  and offset headers) with a reason, and nowhere in the database;
* a good record is stored now, or was destroyed by a purge pass after its expiry (the insert
  witness saw it stored, and its expiry is at or before the final pass), or was expired when
  the purger read it. That last claim is checked against the witness too: records of one
  topic partition are handled in offset order, so a record that was never stored was judged
  no later than the first insert of any later offset of its partition (or the end of the
  drain); if it had not expired by then, it was skipped: lost;
* a record carrying an identifier of a hold active at the end must still exist, unless it
  could have gone before the hold came (it expired before the hold was placed and was sent
  before then too);
* no record id has two rows; nothing expired at the final pass and covered by no active hold
  is left; nothing was stored live although expired on arrival; and the rows the witness saw
  disappear are exactly the rows the audit trail says the passes destroyed.
"""

from __future__ import annotations

import bisect
import json
import logging
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from kafka import KafkaConsumer
from kafka.structs import TopicPartition
from psycopg import sql

from purger.partitions import held_table, parent_table
from purger.records import DEAD_LETTER_REASONS
from soak.procs import REPO, purger_command
from soak.traffic import Ledger, Sent
from soak.workspace import Workspace

log = logging.getLogger("soak")

DESTROYING_ENTRIES = ("partition_dropped", "rows_deleted", "held_rows_deleted")


@dataclass
class Landed:
    """One copy of a message in a category topic."""

    topic: str
    partition: int
    offset: int
    timestamp: float  # the producer's send time (CreateTime), seconds


@dataclass(frozen=True)
class ActiveHold:
    """A hold active at the end, and the moment the run knew it was in force."""

    id: int
    subject_keys: frozenset[str]
    categories: frozenset[str] | None
    in_force_since: float  # wall-clock seconds


@dataclass(frozen=True)
class _Seen:
    """What the checker read back, as one record's judgement needs it."""

    present: Counter[str]  # record id -> rows in the category's tables
    db: dict[str, Any]
    holds: list[ActiveHold]
    next_stored: dict[tuple[str, int], tuple[list[int], list[datetime]]]


@dataclass
class Row:
    """One line of the table: per category counts, a total, and whether it must be 0."""

    label: str
    counts: Counter[str] = field(default_factory=Counter)
    must_be_zero: bool = False
    text: str | None = None  # instead of counts (the audit verification)
    failed: bool = False
    checked: bool = False  # has a verdict although it is not a count that must be 0

    @property
    def total(self) -> int:
        """All categories together."""
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """The row's verdict."""
        return not self.failed and not (self.must_be_zero and self.total)


@dataclass
class Findings:
    """The checker's result: the table's rows and examples of what went wrong."""

    rows: dict[str, Row]
    examples: dict[str, list[str]]
    dlq_reasons: Counter[str]

    @property
    def ok(self) -> bool:
        """Every row that has a verdict passed."""
        return all(r.ok for r in self.rows.values())


def read_topics(bootstrap: str, topics: list[str], timeout: float = 120) -> list[Any]:
    """Every message of ``topics``, from the beginning to the end offsets read first."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        enable_auto_commit=False,
        client_id="soak-checker",
        consumer_timeout_ms=1000,
    )
    try:
        parts = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {len(topics)} topics took over {timeout:.0f} s")
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
        return out
    finally:
        consumer.close()


def _header(msg: Any, name: str) -> str | None:
    for key, value in msg.headers or []:
        if key == name:
            return bytes(value).decode("utf-8", "replace")
    return None


class Checker:
    """Reads everything back once and judges it."""

    def __init__(
        self,
        ws: Workspace,
        ledger: Ledger,
        *,
        hold_times: dict[int, float],
        final_instant: datetime,
        drain_end: datetime,
        committed: dict[tuple[str, int], int],
    ) -> None:
        self.ws = ws
        self.ledger = ledger
        self.hold_times = hold_times
        self.final_instant = final_instant
        self.drain_end = drain_end
        self.committed = committed
        self.categories = list(ws.policy.categories)
        self.examples: dict[str, list[str]] = defaultdict(list)

    def _example(self, row: str, text: str) -> None:
        if len(self.examples[row]) < 5:
            self.examples[row].append(text)

    # -- reading ---------------------------------------------------------------------------
    def _landed(self) -> tuple[dict[str, list[Landed]], int]:
        by_value = self.ledger.by_value
        landed: dict[str, list[Landed]] = defaultdict(list)
        foreign = 0
        for msg in read_topics(self.ws.config.kafka_bootstrap, self.ws.source_topics()):
            sent = by_value.get(bytes(msg.value) if msg.value is not None else b"")
            if sent is None:
                foreign += 1
                continue
            landed[sent.key].append(
                Landed(msg.topic, msg.partition, msg.offset, msg.timestamp / 1000)
            )
        return landed, foreign

    def _dead_letters(self) -> tuple[dict[tuple[str, int, int], list[str]], int]:
        letters: dict[tuple[str, int, int], list[str]] = defaultdict(list)
        unlabelled = 0
        for msg in read_topics(self.ws.config.kafka_bootstrap, self.ws.dead_letter_topics()):
            topic = _header(msg, "purger.source.topic")
            partition = _header(msg, "purger.source.partition")
            offset = _header(msg, "purger.source.offset")
            reason = _header(msg, "purger.reason") or ""
            if topic is None or partition is None or offset is None:
                unlabelled += 1
                continue
            letters[(topic, int(partition), int(offset))].append(reason)
        return letters, unlabelled

    def _database(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "present": {},
            "witness": {},
            "expired_left": Counter(),
            "stored_expired": Counter(),
            "audit_destroyed": Counter(),
        }
        t = self.final_instant
        with psycopg.connect(self.ws.database_url(), autocommit=True) as conn:
            for name in self.categories:
                present: Counter[str] = Counter()
                held: set[str] = set()
                for storage, table in (("records", parent_table(name)), ("held", held_table(name))):
                    rows = conn.execute(
                        sql.SQL("SELECT record_id FROM purger.{}").format(sql.Identifier(table))
                    ).fetchall()
                    for (record_id,) in rows:
                        present[record_id] += 1
                        if storage == "held":
                            held.add(record_id)
                    left = conn.execute(
                        sql.SQL(
                            "SELECT count(*) FROM purger.{} r WHERE r.expires_at <= %(t)s "
                            "AND NOT EXISTS (SELECT 1 FROM purger.legal_holds h "
                            "WHERE h.released_at IS NULL AND purger.hold_covers(h.categories, "
                            "h.subject_keys, h.tenant, h.occurred_from, h.occurred_to, "
                            "%(category)s, r.tenant, r.occurred_at, r.subject_keys))"
                        ).format(sql.Identifier(table)),
                        {"t": t, "category": name},
                    ).fetchone()
                    out["expired_left"][name] += int(left[0]) if left else 0
                out["present"][name] = (present, held)
            witness: dict[str, dict[str, list[tuple[Any, ...]]]] = defaultdict(
                lambda: defaultdict(list)
            )
            for row in conn.execute(
                "SELECT category, record_id, storage, source_topic, source_partition, "
                "source_offset, at, expires_at, ingested_at FROM soak.witness"
            ):
                witness[row[0]][row[1]].append(row[2:])
                if row[2] == "records" and row[8] is not None and row[7] <= row[8]:
                    out["stored_expired"][row[0]] += 1
            out["witness"] = witness
            for category, rows in conn.execute(
                "SELECT content->>'category', sum((content->>'rows')::bigint) "
                "FROM purger.audit_log WHERE kind = ANY(%s) GROUP BY 1",
                [list(DESTROYING_ENTRIES)],
            ):
                out["audit_destroyed"][category] = int(rows or 0)
            out["holds"] = [
                ActiveHold(
                    id=int(hid),
                    subject_keys=frozenset(keys or ()),
                    categories=frozenset(cats) if cats else None,
                    # A hold the run did not place itself: only what it keeps from now on.
                    in_force_since=self.hold_times.get(int(hid), time.time()),
                )
                for hid, keys, cats in conn.execute(
                    "SELECT id, subject_keys, categories FROM purger.legal_holds "
                    "WHERE released_at IS NULL"
                )
            ]
        return out

    def audit_verify(self) -> tuple[bool, str]:
        """``purger audit verify --json``: intact or not, and what it says."""
        done = subprocess.run(
            purger_command("audit", "verify", "--json"),
            env=self.ws.child_env("audit"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        try:
            result = json.loads(done.stdout)
            text = (
                f"intact ({result.get('entries')} entries)"
                if done.returncode == 0
                else f"BROKEN: {result.get('problem')}"
            )
        except ValueError:
            text = f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-200:]}"
        return done.returncode == 0, text

    # -- judging ---------------------------------------------------------------------------
    def run(self) -> Findings:
        """Read Kafka and the database, judge every message, build the table's rows."""
        landed, foreign = self._landed()
        letters, unlabelled = self._dead_letters()
        db = self._database()
        audit_ok, audit_text = self.audit_verify()
        labels = {
            "produced": ("produced (acknowledged)", False),
            "maybe": ("  unacknowledged but landed", False),
            "kafka_lost": ("  acknowledged, not in the topic", False),
            "stored": ("stored", False),
            "stored_held": ("  of which in held storage", False),
            "expired": ("expired on arrival", False),
            "dead": ("dead-lettered", False),
            "purged": ("destroyed by purge passes", False),
            "lost": ("lost", True),
            "duplicated": ("duplicated", True),
            "held_destroyed": ("held records destroyed", True),
            "expired_left": ("expired unheld records left", True),
            "audit": ("audit verify", False),
            "audit_count": ("destroyed: witnessed minus audited", True),
            "good_dead": ("good records dead-lettered", True),
            "bad_kept": ("bad records not dead-lettered", True),
            "stored_expired": ("stored live though expired", True),
            "unconsumed": ("not consumed by the end (lag)", True),
        }
        rows = {key: Row(label, must_be_zero=zero) for key, (label, zero) in labels.items()}
        rows["audit"].text = audit_text
        rows["audit"].failed = not audit_ok
        rows["audit"].checked = True
        reasons: Counter[str] = Counter()
        holds: list[ActiveHold] = db["holds"]
        next_stored = self._next_stored(db["witness"])

        for sent in self.ledger.snapshot():
            c = sent.category
            copies = landed.get(sent.key, [])
            if sent.acks:
                rows["produced"].counts[c] += 1
                if not copies:
                    rows["kafka_lost"].counts[c] += 1
                    self._example("kafka_lost", sent.key)
            elif copies:
                rows["maybe"].counts[c] += 1
            if not copies:
                continue
            present, held = db["present"][c]
            in_dlq = [letters[(x.topic, x.partition, x.offset)] for x in copies]
            if sent.key not in present and not any(in_dlq) and self._unconsumed(copies):
                # Beyond the group's committed offset: the purger never finished with it,
                # so nothing else can be said about it (the drain timed out).
                rows["unconsumed"].counts[c] += 1
                self._example("unconsumed", f"{sent.kind} {sent.key}")
                continue
            if sent.kind == "bad":
                missing = [x for x, r in zip(copies, in_dlq, strict=True) if not r]
                if missing or sent.key in present:
                    rows["bad_kept"].counts[c] += 1
                    where = "stored" if sent.key in present else "nowhere"
                    self._example("bad_kept", f"{sent.bad_kind} {sent.key}: {where}")
                for found in in_dlq:
                    reasons.update(f"{sent.bad_kind} -> {r or '(no reason)'}" for r in found[:1])
                    if found and not all(r in DEAD_LETTER_REASONS for r in found):
                        rows["bad_kept"].counts[c] += 1
                        self._example("bad_kept", f"{sent.bad_kind}: unknown reason {found}")
                continue
            self._judge_good(sent, copies, in_dlq, _Seen(present, db, holds, next_stored), rows)

        for c in self.categories:
            present, held = db["present"][c]
            rows["stored"].counts[c] = len(present)
            rows["stored_held"].counts[c] = len(held)
            dupes = [rid for rid, n in present.items() if n > 1]
            rows["duplicated"].counts[c] = len(dupes)
            for rid in dupes[:3]:
                self._example("duplicated", f"{c} {rid} x{present[rid]}")
            rows["expired_left"].counts[c] = db["expired_left"][c]
            rows["stored_expired"].counts[c] = db["stored_expired"][c]
            gone = sum(1 for rid in db["witness"].get(c, {}) if rid not in present)
            diff = gone - db["audit_destroyed"].get(c, 0)
            rows["audit_count"].counts[c] = abs(diff)
            if diff:
                self._example(
                    "audit_count",
                    f"{c}: {gone} witnessed gone, {db['audit_destroyed'].get(c, 0)} in the audit",
                )
        for (topic, _p, _o), found in letters.items():
            category = self.ws.policy.by_topic().get(topic)
            if category is not None and found:
                rows["dead"].counts[category.name] += 1
        if foreign or unlabelled:
            self._example(
                "lost", f"{foreign} unknown messages in the topics, {unlabelled} unlabelled DLQ"
            )
        return Findings(rows, dict(self.examples), reasons)

    def _judge_good(
        self,
        sent: Sent,
        copies: list[Landed],
        in_dlq: list[list[str]],
        seen: _Seen,
        rows: dict[str, Row],
    ) -> None:
        c = sent.category
        present, db = seen.present, seen.db
        assert sent.expires_at is not None
        if any(in_dlq):
            rows["good_dead"].counts[c] += 1
            reasons = sorted({r for found in in_dlq for r in found})
            self._example("good_dead", f"{sent.kind} {sent.key}: {reasons}")
            return
        if sent.key in present:
            return
        must_keep = self._must_keep(sent, copies, seen.holds)
        if sent.key in db["witness"].get(c, {}):
            if must_keep is not None:
                self._held_destroyed(sent, must_keep, "stored, then destroyed", rows)
                return
            if sent.expires_at > self.final_instant:
                rows["lost"].counts[c] += 1
                self._example(
                    "lost", f"{sent.kind} {sent.key}: destroyed before its expiry {sent.expires_at}"
                )
            else:
                rows["purged"].counts[c] += 1
            return
        # Never stored: it must have been expired when the purger judged it.
        judged_by = self.drain_end
        for copy in copies:
            bound = self._bound(seen.next_stored, copy)
            if bound is not None and bound < judged_by:
                judged_by = bound
        if sent.expires_at > judged_by:
            # Not expired when it was handled (or never handled): lost, held or not.
            rows["lost"].counts[c] += 1
            self._example(
                "lost",
                f"{sent.kind} {sent.key} at {copies[0].topic}/{copies[0].partition}"
                f"@{copies[0].offset}: never stored, not dead-lettered, expires "
                f"{sent.expires_at:%Y-%m-%d %H:%M:%S.%f} but was handled by "
                f"{judged_by:%H:%M:%S.%f}",
            )
        elif must_keep is not None:
            self._held_destroyed(sent, must_keep, "expired on arrival but not held", rows)
        else:
            rows["expired"].counts[c] += 1

    def _unconsumed(self, copies: list[Landed]) -> bool:
        """Every copy lies at or beyond its partition's committed offset."""
        return all(x.offset >= self.committed.get((x.topic, x.partition), 0) for x in copies)

    def _held_destroyed(self, sent: Sent, hold: int, how: str, rows: dict[str, Row]) -> None:
        assert sent.expires_at is not None
        rows["held_destroyed"].counts[sent.category] += 1
        self._example(
            "held_destroyed",
            f"{sent.kind} {sent.key} (hold {hold}, "
            f"expires {sent.expires_at:%Y-%m-%d %H:%M:%S}): {how}",
        )

    def _must_keep(self, sent: Sent, copies: list[Landed], holds: list[ActiveHold]) -> int | None:
        """The id of an active hold that must have kept ``sent``, if any."""
        assert sent.expires_at is not None
        for hold in holds:
            if hold.categories is not None and sent.category not in hold.categories:
                continue
            if not sent.pool_keys & hold.subject_keys:
                continue
            since = datetime.fromtimestamp(hold.in_force_since, UTC)
            if sent.expires_at > since or any(x.timestamp > hold.in_force_since for x in copies):
                return hold.id
        return None

    @staticmethod
    def _next_stored(
        witness: dict[str, dict[str, list[tuple[Any, ...]]]],
    ) -> dict[tuple[str, int], tuple[list[int], list[datetime]]]:
        """Per topic partition: stored offsets, ascending, and the earliest insert at or after."""
        first: dict[tuple[str, int], dict[int, datetime]] = defaultdict(dict)
        for records in witness.values():
            for rows in records.values():
                for _storage, topic, partition, offset, at, _exp, _ing in rows:
                    if topic is None or partition is None or offset is None:
                        continue
                    seen = first[(topic, partition)]
                    if offset not in seen or at < seen[offset]:
                        seen[offset] = at
        out: dict[tuple[str, int], tuple[list[int], list[datetime]]] = {}
        for tp, seen in first.items():
            offsets = sorted(seen)
            suffix: list[datetime] = [seen[o] for o in offsets]
            for i in range(len(suffix) - 2, -1, -1):
                suffix[i] = min(suffix[i], suffix[i + 1])
            out[tp] = (offsets, suffix)
        return out

    @staticmethod
    def _bound(
        next_stored: dict[tuple[str, int], tuple[list[int], list[datetime]]], copy: Landed
    ) -> datetime | None:
        """The earliest insert of a later offset of the copy's partition (None: none)."""
        found = next_stored.get((copy.topic, copy.partition))
        if not found:
            return None
        offsets, suffix = found
        i = bisect.bisect_right(offsets, copy.offset)
        return suffix[i] if i < len(offsets) else None
