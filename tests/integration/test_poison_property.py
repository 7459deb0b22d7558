"""For any message, the worker stays alive and the message ends stored, counted or dead-lettered.

Generated messages go through the real decode and store path (``ConsumerWorker.process``)
into the real PostgreSQL, and their dead letters to the real Kafka: random bytes,
and valid messages with one field replaced by an extreme value (out-of-range dates,
NaN and infinities, huge numbers, deep nesting, long strings, odd Unicode,
duplicate keys). The database is where several of these once failed.

Profiles: ``PURGER_HYPOTHESIS_PROFILE=ci`` (default, in ``make test``) and ``soak``
(``make soak``: at least 10,000 messages).
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as profiles
from hypothesis import strategies as st
from kafka import KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry
from psycopg import sql

from consumers.deadletter import DeadLetterWriter
from consumers.failures import Stopping
from consumers.kafka_config import producer_options
from consumers.loop import ConsumerWorker
from purger.metrics import Metrics
from purger.policy import RetentionPolicy
from purger.records import DEAD_LETTER_REASONS
from purger.settings import Settings
from purger.storage import Storage
from tests.integration.support import read_topic

pytestmark = pytest.mark.integration

PROFILE = os.environ.get("PURGER_HYPOTHESIS_PROFILE", "ci")
BATCH = 20
EXAMPLES = {"ci": 25, "soak": 550}[PROFILE]
SOAK_MINIMUM = 10_000
# One batch that is retried as a systemic fault for this long means the worker is stuck.
STUCK_SECONDS = 60

NOW = datetime.now(UTC)

# JSON text fragments a producer could send, valid or not for the contract.
EXTREME = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "9" * 5000,
        "-" + "9" * 400,
        "1e-400",
        "[" * 980 + "1" + "]" * 980,
        "{" + '"a":{' * 200 + "}" * 200 + "}",
        '"0001-01-01T00:30:00+01:00"',
        '"9999-12-31T23:59:59-01:00"',
        '"2024-02-30T10:00:00Z"',
        '"2024-W01-1T10:00:00Z"',
        '"2016-12-31T23:59:60Z"',
        '"2024-01-01T10:00:00+24:00"',
        '"\\ud800"',
        '"\\u0000"',
        '"x\\udfff\\ud800"',
        "null",
        "true",
        "[]",
        "{}",
        '""',
        '"' + "t" * 9000 + '"',
    ]
)
FIELDS = ("record_id", "occurred_at", "tenant", "subjects", "call", "msisdn")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


@st.composite
def valid_fields(draw: st.DrawFn) -> dict[str, str]:
    """A valid message as JSON text fragments, field by field."""
    record_id = draw(st.uuids()).hex
    age = draw(st.integers(min_value=0, max_value=400 * 86400))
    occurred = (NOW - timedelta(seconds=age)).isoformat()
    msisdn = draw(st.sampled_from(["0612345678", "+31612345678", "+32470123456"]))
    return {
        "record_id": _json(record_id),
        "occurred_at": _json(occurred),
        "tenant": _json(draw(st.sampled_from(["t1", "callcenter-noord", "ß-tenant"]))),
        "subjects": "{" + f'"msisdn": {_json(msisdn)}' + "}",
        "call": _json({"duration_s": draw(st.integers(0, 10**6))}),
    }


def _render(fields: dict[str, str], duplicate: str | None) -> str:
    parts = [f"{_json(k)}: {v}" for k, v in fields.items()]
    if duplicate is not None:
        parts.append(f"{_json(duplicate)}: {fields.get(duplicate, 'null')}")
    return "{" + ", ".join(parts) + "}"


@st.composite
def message_values(draw: st.DrawFn) -> bytes | None:
    """Any bytes a producer could send, weighted towards almost-valid messages."""
    kind = draw(st.sampled_from(["bytes", "text", "valid", "extreme", "unicode", "duplicate"]))
    if kind == "bytes":
        return draw(st.none() | st.binary(max_size=300))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    fields = draw(valid_fields())
    duplicate = None
    if kind == "extreme":
        field = draw(st.sampled_from(FIELDS))
        value = draw(EXTREME)
        if field == "msisdn":
            fields["subjects"] = "{" + f'"msisdn": {value}' + "}"
        else:
            fields[field] = value
    elif kind == "unicode":
        field = draw(st.sampled_from(["record_id", "tenant", "call"]))
        fields[field] = _json(draw(st.text(min_size=1, max_size=300)))
    elif kind == "duplicate":
        duplicate = draw(st.sampled_from(["record_id", "subjects", "occurred_at"]))
    text = _render(fields, duplicate)
    return text.encode("utf-8", "surrogatepass")


MESSAGES = st.tuples(
    st.none() | st.binary(max_size=64),
    message_values(),
    st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=20)), max_size=3),
)


def _stored_offsets(url: str) -> set[int]:
    out: set[int] = set()
    with psycopg.connect(url) as conn:
        for table in ("records_cdr", "held_cdr"):
            rows = conn.execute(
                sql.SQL("SELECT source_offset FROM purger.{}").format(sql.Identifier(table))
            ).fetchall()
            out |= {int(r[0]) for r in rows}
    return out


@pytest.mark.timeout(3600 if PROFILE == "soak" else 600)
def test_any_message_ends_stored_counted_or_dead_lettered(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    services: Any,
) -> None:
    topic = topics["cdr"]
    tp = TopicPartition(topic, 0)
    registry = CollectorRegistry()
    metrics = Metrics(registry, list(policy.categories), [topic])
    stop = threading.Event()
    worker = ConsumerWorker(settings, policy, metrics, stop)
    producer = KafkaProducer(**producer_options(settings))
    offset = 0

    @settings_for_profile
    @given(batch=st.lists(MESSAGES, min_size=BATCH, max_size=BATCH))
    def one_batch(batch: list[tuple[bytes | None, bytes | None, list[Any]]]) -> None:
        nonlocal offset
        polled = []
        for key, value, headers in batch:
            polled.append(
                ConsumerRecord(topic, 0, -1, offset, 0, 0, key, value, headers, None, -1, -1, -1)
            )
            offset += 1
        watchdog = threading.Timer(STUCK_SECONDS, stop.set)
        watchdog.start()
        try:
            worker.process({tp: polled}, storage, DeadLetterWriter(producer, metrics))
        except Stopping:
            pytest.fail("a batch was retried as systemic until the watchdog fired")
        finally:
            watchdog.cancel()

    with Storage(settings.conninfo(), policy, settings.granularity) as storage:
        try:
            one_batch()
        finally:
            producer.close()

    counts = worker.summary.counts("cdr")
    dead = sum(counts.dead_lettered.values())
    accounted = counts.stored + counts.held + counts.duplicates + counts.expired_on_arrival + dead
    assert worker.summary.messages == offset
    assert accounted == offset, "a message was neither stored, counted nor dead-lettered"
    # The generator reaches every outcome, or the property says little.
    assert counts.stored and dead and counts.expired_on_arrival
    if PROFILE == "soak":
        assert offset >= SOAK_MINIMUM
    # What the worker counted is what the database and the dead-letter topic hold.
    stored = _stored_offsets(settings.conninfo())
    assert len(stored) == counts.stored + counts.held
    letters = read_topic(services.kafka_bootstrap, policy.category("cdr").dead_letter_topic, dead)
    by_offset = {}
    for letter in letters:
        headers = dict(letter.headers)
        by_offset[int(headers["purger.source.offset"])] = headers["purger.reason"].decode()
    assert len(by_offset) == dead
    assert set(by_offset.values()) <= set(DEAD_LETTER_REASONS)
    assert not stored & set(by_offset), "a message both stored and dead-lettered"


for name in ("ci", "soak"):
    profiles.register_profile(
        name,
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
settings_for_profile = profiles.get_profile(PROFILE)
