"""The soak run's traffic: what is sent, what the broker acknowledged, and the sender.

Every message is unique by its bytes (good ones by record id, bad ones by a marker they
carry), so the checker recognises each one when it reads the topics back, acknowledged or
not. A small pool of phone numbers recurs in a share of the records: the legal holds of the
run are placed on those.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from purger.durations import add_months
from purger.identifiers import normalise, subject_key
from purger.policy import RetentionPolicy

log = logging.getLogger("soak")

TENANTS = ("bakkerij-de-vries", "transport-noord", "lenex-support", "callcenter-noord")
# Share of each kind of message; a further REPLAY_SHARE re-sends an earlier good one.
KIND_WEIGHTS = {"good": 0.70, "soon": 0.12, "expired": 0.08, "bad": 0.10}
REPLAY_SHARE = 0.03
POOL_SHARE = 0.15  # records that carry a phone number of the hold pool
POOL_PERMANENT = 2  # held from before the first message to the end
POOL_CHURN = 6  # held and released during the run
SOON_SECONDS = (15.0, 150.0)
FLUSH_SECONDS = 90.0  # "soon" records expire this long after they are sent
BAD_KINDS = (
    "not_json",
    "not_utf8",
    "not_object",
    "missing_field",
    "naive_timestamp",
    "bad_msisdn",
    "nan_in_payload",
    "duplicate_keys",
    "year_one_timestamp",
    "future_timestamp",
)


@dataclass
class Sent:
    """One distinct message of the run (re-sent copies share it)."""

    key: str  # the record id; for a bad message, the marker it carries
    category: str
    kind: str  # good | soon | expired | bad
    value: bytes
    expires_at: datetime | None = None  # good kinds: by the run's policy
    pool_keys: frozenset[str] = frozenset()  # subject keys of hold-pool numbers it carries
    bad_kind: str | None = None
    sends: int = 0
    acks: list[tuple[int, int, float]] = field(default_factory=list)  # partition, offset, time
    failures: list[str] = field(default_factory=list)


class Ledger:
    """Everything sent, by key and by value bytes; thread-safe for the producer's callbacks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: dict[str, Sent] = {}
        self.by_value: dict[bytes, Sent] = {}
        self.replayable: list[Sent] = []

    def add(self, sent: Sent) -> None:
        """Remember a new message."""
        with self.lock:
            self.by_key[sent.key] = sent
            self.by_value[sent.value] = sent

    def acked(self, sent: Sent, metadata: Any) -> None:
        """Producer callback: the broker acknowledged one copy."""
        with self.lock:
            sent.acks.append((int(metadata.partition), int(metadata.offset), time.time()))
            if sent.kind in ("good", "soon") and len(sent.acks) == 1:
                self.replayable.append(sent)

    def failed(self, sent: Sent, exc: BaseException) -> None:
        """Producer errback: one copy was not acknowledged (it may or may not have landed)."""
        with self.lock:
            sent.failures.append(exc.__class__.__name__)

    def snapshot(self) -> list[Sent]:
        """Every message, in sending order."""
        with self.lock:
            return list(self.by_key.values())


class HoldPool:
    """Phone numbers that recur in records, and the subject keys holds match them by."""

    def __init__(self, rng: random.Random) -> None:
        national = [f"61{n:07d}" for n in rng.sample(range(10**7), POOL_PERMANENT + POOL_CHURN)]
        self.permanent = national[:POOL_PERMANENT]
        self.churn = national[POOL_PERMANENT:]
        self.keys = {d: subject_key("msisdn", normalise("msisdn", "0" + d)) for d in national}

    @property
    def all(self) -> list[str]:
        """Every number of the pool (national digits after the 0)."""
        return self.permanent + self.churn


def written_msisdn(digits: str, rng: random.Random) -> str:
    # Producers write numbers differently; normalisation must make them equal.
    return rng.choice((f"+31{digits}", f"0{digits}", f"0031{digits}", f"+31 {digits}"))


def _random_msisdn(rng: random.Random) -> str:
    return written_msisdn(f"6{rng.randrange(2, 10)}{rng.randrange(10**7):07d}", rng)


def _timestamp(instant: datetime, rng: random.Random) -> str:
    # RFC 3339 with a Z or a numeric offset: both mean the same instant.
    offset = rng.choice((0, 1, 2, -5))
    local = instant.astimezone(timezone(timedelta(hours=offset)))
    text = local.isoformat()
    return text.replace("+00:00", "Z") if offset == 0 and rng.random() < 0.5 else text


class Generator:
    """Builds the run's messages."""

    def __init__(
        self, run_id: str, policy: RetentionPolicy, pool: HoldPool, rng: random.Random
    ) -> None:
        self.run_id = run_id
        self.policy = policy
        self.pool = pool
        self.rng = rng
        self.count = 0

    def next(self, now: datetime) -> Sent:
        """A new message of a random category and kind."""
        self.count += 1
        rng = self.rng
        category = rng.choice(list(self.policy.categories))
        kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
        if kind == "bad":
            return self._bad(category, now)
        return self._good(category, kind, now)

    def _good(self, category: str, kind: str, now: datetime) -> Sent:
        rng = self.rng
        cat = self.policy.category(category)
        record_id = f"soak-{self.run_id}-{category}-{self.count}"
        tenant = rng.choice(TENANTS)
        retention = cat.retention_for(tenant)
        if kind == "good":
            occurred = now - timedelta(seconds=rng.uniform(0, 30 * 86400))
        elif kind == "soon":
            target = now + timedelta(seconds=rng.uniform(*SOON_SECONDS))
            occurred = add_months(target, -retention.months) - retention.exact
        else:  # expired on arrival
            target = now - timedelta(seconds=rng.uniform(600, 30 * 86400))
            occurred = add_months(target, -retention.months) - retention.exact
        occurred = occurred.replace(microsecond=occurred.microsecond // 1000 * 1000)
        subjects = self._subjects(category)
        pool_keys: set[str] = set()
        if rng.random() < POOL_SHARE:
            digits = rng.choice(self.pool.all)
            pool_keys.add(self.pool.keys[digits])
            subjects.setdefault("msisdn", []).append(written_msisdn(digits, rng))
        message: dict[str, Any] = {
            "record_id": record_id,
            "occurred_at": _timestamp(occurred, rng),
            "tenant": tenant,
            "subjects": subjects,
            "soak": {"kind": kind, "n": self.count, "note": rng.choice(("é", "ß", "✓", "x"))},
        }
        return Sent(
            key=record_id,
            category=category,
            kind=kind,
            value=json.dumps(message, ensure_ascii=rng.random() < 0.5).encode(),
            expires_at=cat.expires_at(tenant, occurred.astimezone(UTC)),
            pool_keys=frozenset(pool_keys),
        )

    def _subjects(self, category: str) -> dict[str, list[str]]:
        rng = self.rng
        if category == "cdr":
            return {
                "msisdn": [_random_msisdn(rng), _random_msisdn(rng)],
                "imsi": [f"20408{rng.randrange(10**9, 10**10)}"],
            }
        if category == "call_recordings":
            return {"msisdn": [_random_msisdn(rng)]}
        if category == "interception":
            return {
                "ip": [f"2a02:a45f:{rng.randrange(1, 999):x}::{rng.randrange(1, 9999):x}"],
                "email": [f"User{rng.randrange(1, 10**6)}@Example.NL"],
            }
        return {
            "cookie_id": [f"{rng.getrandbits(64):016x}"],
            "ip": [f"192.0.2.{rng.randrange(1, 255)}"],
        }

    def _bad(self, category: str, now: datetime) -> Sent:
        rng = self.rng
        marker = f"soak-{self.run_id}-bad-{self.count}"
        bad_kind = rng.choice(BAD_KINDS)
        ok_time = _timestamp(now - timedelta(days=1), rng)
        base = f'"occurred_at": "{ok_time}", "tenant": "t1", "subjects": {{}}'
        values: dict[str, bytes] = {
            "not_json": f'{{"record_id": "{marker}", "occurred_at": '.encode(),
            "not_utf8": b"\xff\xfe" + marker.encode() + b"\xc3\x28",
            "not_object": json.dumps([marker, 1, 2]).encode(),
            "missing_field": (
                f'{{"record_id": "{marker}", "tenant": "t1", "subjects": {{}}}}'
            ).encode(),
            "naive_timestamp": (
                f'{{"record_id": "{marker}", "occurred_at": "{now:%Y-%m-%dT%H:%M:%S}", '
                f'"tenant": "t1", "subjects": {{}}}}'
            ).encode(),
            "bad_msisdn": (
                f'{{"record_id": "{marker}", "occurred_at": "{ok_time}", "tenant": "t1", '
                f'"subjects": {{"msisdn": ["not-a-number"]}}}}'
            ).encode(),
            "nan_in_payload": f'{{"record_id": "{marker}", {base}, "reading": NaN}}'.encode(),
            "duplicate_keys": (
                f'{{"record_id": "{marker}", {base}, "record_id": "{marker}"}}'
            ).encode(),
            "year_one_timestamp": (
                f'{{"record_id": "{marker}", "occurred_at": "0001-01-01T00:30:00+01:00", '
                f'"tenant": "t1", "subjects": {{}}}}'
            ).encode(),
            "future_timestamp": (
                f'{{"record_id": "{marker}", '
                f'"occurred_at": "{(now + timedelta(days=30)).isoformat()}", '
                f'"tenant": "t1", "subjects": {{}}}}'
            ).encode(),
        }
        return Sent(
            key=marker, category=category, kind="bad", value=values[bad_kind], bad_kind=bad_kind
        )


class Sender(threading.Thread):
    """Sends the run's traffic at a steady rate until ``stop`` is set; survives broker restarts.

    On its way out it waits for the outstanding acknowledgements and closes the producer.
    """

    def __init__(
        self,
        make_producer: Callable[[], KafkaProducer],
        generator: Generator,
        ledger: Ledger,
        policy: RetentionPolicy,
        rate: int,
    ) -> None:
        super().__init__(name="soak-sender", daemon=True)
        self.make_producer = make_producer
        self.generator = generator
        self.ledger = ledger
        self.topics = {name: c.topic for name, c in policy.categories.items()}
        self.interval = 1.0 / rate
        self.stop = threading.Event()
        self.producer: KafkaProducer | None = None
        self.send_errors = 0
        self.producers_made = 0
        self.error: BaseException | None = None

    def _producer(self) -> KafkaProducer:
        if self.producer is None:
            self.producer = self.make_producer()
            self.producers_made += 1
        return self.producer

    def _drop_producer(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.close(timeout=5)
            except Exception:  # a broken producer is discarded either way
                log.debug("closing a broken producer failed", exc_info=True)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._finish()

    def _run(self) -> None:
        rng = self.generator.rng
        due = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now < due:
                self.stop.wait(due - now)
                continue
            # After a stall (a broker outage blocks sends) carry on at the rate, no burst.
            due = max(due + self.interval, now - 1.0)
            with self.ledger.lock:
                replay = (
                    rng.choice(self.ledger.replayable)
                    if self.ledger.replayable and rng.random() < REPLAY_SHARE
                    else None
                )
            sent = replay or self.generator.next(datetime.now(UTC))
            if replay is None:
                self.ledger.add(sent)
            self._send(sent)

    def _send(self, sent: Sent) -> None:
        key = sent.key.encode() if sent.kind != "bad" else None
        try:
            producer = self._producer()
            future = producer.send(
                self.topics[sent.category],
                value=sent.value,
                key=key,
                timestamp_ms=int(time.time() * 1000),
            )
        except KafkaTimeoutError:
            # Not handed to the producer (no metadata, buffer full while the broker is
            # away): never sent, nothing to account for. Carry on after a short pause.
            self.send_errors += 1
            self.stop.wait(0.5)
            return
        except (KafkaError, AssertionError, OSError) as exc:
            # No broker to bootstrap from, or a producer in a fatal state: a new one.
            self.send_errors += 1
            log.debug("send failed: %s", exc.__class__.__name__)
            self._drop_producer()
            self.stop.wait(1.0)
            return
        with self.ledger.lock:
            sent.sends += 1
        future.add_callback(self.ledger.acked, sent)
        future.add_errback(self.ledger.failed, sent)

    def _finish(self) -> None:
        # Wait for the outstanding acknowledgements (a copy still unacknowledged then may
        # or may not have landed: the checker reads the topics to know), then close.
        producer = self.producer
        if producer is not None:
            try:
                producer.flush(timeout=FLUSH_SECONDS)
            except KafkaError as exc:
                log.warning("flush at the end: %s", exc.__class__.__name__)
            self._drop_producer()
