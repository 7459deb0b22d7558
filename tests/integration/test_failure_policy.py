"""The ingestion error policy on the real Kafka and PostgreSQL (consumers/failures.py).

A poison record is dead-lettered with its original key and value and the
partition moves on; a systemic fault is retried without committing and without
dead-lettering; each message that once stopped the worker for good is tested here.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from psycopg import sql

from consumers.deadletter import MAX_LETTER_BYTES
from consumers.loop import ConsumerWorker
from consumers.service import consume
from purger.policy import RetentionPolicy
from purger.records import DEAD_LETTER_REASONS
from purger.settings import Settings
from purger.storage import Storage
from tests.integration.conftest import SettingsFactory
from tests.integration.support import (
    committed_offsets,
    count_rows,
    ingest_metrics,
    read_topic,
    wait_until,
)
from tests.integration.test_ingest import message

pytestmark = pytest.mark.integration

RECENT = datetime.now(UTC) - timedelta(hours=1)


def _valid(record_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "record_id": record_id,
        "occurred_at": RECENT.isoformat(),
        "tenant": "t1",
        "subjects": {"msisdn": "0612345678"},
        "call": {"duration_s": 42},
    }
    body.update(fields)
    return body


# Each of these stopped `purger consume` for good before the robustness work.
KILLERS: dict[str, bytes] = {
    "year-one-with-offset": json.dumps(
        _valid("k-year-one", occurred_at="0001-01-01T00:30:00+01:00")
    ).encode(),
    "nan-in-payload": b'{"record_id": "k-nan", "occurred_at": "%s", "tenant": "t1", '
    b'"subjects": {}, "call": {"duration_s": NaN}}' % RECENT.isoformat().encode(),
    "infinity-in-payload": b'{"record_id": "k-inf", "occurred_at": "%s", "tenant": "t1", '
    b'"subjects": {}, "x": -Infinity}' % RECENT.isoformat().encode(),
    "overflowing-float": b'{"record_id": "k-1e400", "occurred_at": "%s", "tenant": "t1", '
    b'"subjects": {}, "x": +1e400}' % RECENT.isoformat().encode(),
    "float-to-infinity": b'{"record_id": "k-1e400b", "occurred_at": "%s", "tenant": "t1", '
    b'"subjects": {}, "x": 1e400}' % RECENT.isoformat().encode(),
    "huge-integer": b'{"record_id": "k-bigint", "occurred_at": "%s", "tenant": "t1", '
    b'"subjects": {}, "x": %s}' % (RECENT.isoformat().encode(), b"9" * 5000),
    "nested-980-levels": b'{"record_id": "k-deep", "occurred_at": "%s", "tenant": "t1", '
    b'"subjects": {}, "x": %s1%s}' % (RECENT.isoformat().encode(), b"[" * 980, b"]" * 980),
    "tenant-of-8-kb": json.dumps(_valid("k-tenant", tenant="t" * 8192)).encode(),
    "duplicate-subject-key": b'{"record_id": "k-dup", "occurred_at": "%s", "tenant": "t1", '
    b'"subjects": {"msisdn": "0612345678", "msisdn": "0687654321"}}' % RECENT.isoformat().encode(),
    "iso-week-date": json.dumps(_valid("k-week", occurred_at="2024-W01-1T10:00:00Z")).encode(),
}


def _consume_until_idle(
    settings: Settings, policy: RetentionPolicy, registry: CollectorRegistry | None = None
) -> dict[str, Any]:
    return consume(
        settings, policy, ingest_metrics(policy, registry), threading.Event(), until_idle=True
    )


def _letters(services: Any, policy: RetentionPolicy, n: int) -> dict[int, tuple[Any, ...]]:
    """Dead letters of the cdr topic by source offset: (reason, key, value, headers)."""
    found = read_topic(services.kafka_bootstrap, policy.category("cdr").dead_letter_topic, n)
    out = {}
    for letter in found:
        headers = {k: v for k, v in letter.headers}
        offset = int(headers["purger.source.offset"])
        out[offset] = (headers["purger.reason"].decode(), letter.key, letter.value, headers)
    return out


def test_each_message_that_stopped_the_worker_is_dead_lettered_and_ingestion_goes_on(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    services: Any,
) -> None:
    names = sorted(KILLERS)
    values = [message("first", RECENT)] + [KILLERS[n] for n in names] + [message("last", RECENT)]
    for value in values:
        producer.send(topics["cdr"], value, key=b"k", partition=0)
    producer.flush()

    summary = _consume_until_idle(settings, policy)

    assert summary["errors"] == []
    assert summary["categories"]["cdr"]["stored"] == 2
    assert count_rows(settings.conninfo(), "cdr") == 2
    letters = _letters(services, policy, len(names))
    for offset, name in enumerate(names, start=1):
        assert offset in letters, f"{name} was neither stored nor dead-lettered"
        reason, key, value, _ = letters[offset]
        assert reason in DEAD_LETTER_REASONS and reason != "storage_rejected", name
        assert (key, value) == (b"k", KILLERS[name]), name
    assert committed_offsets(services.kafka_bootstrap, settings.kafka_group_id, topics["cdr"]) == {
        0: len(values)
    }


@pytest.fixture
def refusing_trigger(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """A trigger on records_cdr that refuses rows of tenant 'refuse-me' (or every row).

    It raises SQLSTATE P0001, a state the error policy has no rule for: only the
    canary can tell that the record, not the database, is at fault.
    """
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE purger.refuse_all (flag boolean NOT NULL);
            INSERT INTO purger.refuse_all VALUES (false);
            CREATE FUNCTION purger.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.tenant = 'refuse-me' OR (SELECT flag FROM purger.refuse_all) THEN
                    RAISE EXCEPTION 'refused by a test trigger';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse BEFORE INSERT ON purger.records_cdr
                FOR EACH ROW EXECUTE FUNCTION purger.refuse();
            """
        )
        yield conn


def test_a_record_the_database_refuses_is_dead_lettered_with_its_key_and_value(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    services: Any,
    refusing_trigger: psycopg.Connection[Any],
) -> None:
    refused = json.dumps(_valid("refused", tenant="refuse-me")).encode()
    good = [message(f"g{i:03d}", RECENT) for i in range(40)]
    values = [*good[:20], refused, *good[20:]]
    for i, value in enumerate(values):
        producer.send(topics["cdr"], value, key=f"key-{i}".encode(), partition=0)
    producer.flush()
    registry = CollectorRegistry()

    summary = _consume_until_idle(settings, policy, registry)

    assert summary["errors"] == []
    assert count_rows(settings.conninfo(), "cdr") == 40
    letters = _letters(services, policy, 1)
    assert list(letters) == [20]
    reason, key, value, headers = letters[20]
    assert reason == "storage_rejected"
    assert (key, value) == (b"key-20", refused)
    # The detail names the condition, never the trigger's text or the data.
    assert b"refuse-me" not in headers["purger.detail"]
    assert committed_offsets(services.kafka_bootstrap, settings.kafka_group_id, topics["cdr"]) == {
        0: 41
    }
    assert registry.get_sample_value("purger_ingest_retries_total", {"kind": "systemic"}) == 0


@contextmanager
def _worker_running(
    settings: Settings, policy: RetentionPolicy, registry: CollectorRegistry
) -> Iterator[None]:
    """A ConsumerWorker thread with metrics on ``registry``; stopped, and found stopped, after."""
    stop = threading.Event()
    worker = ConsumerWorker(settings, policy, ingest_metrics(policy, registry), stop)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()


def _assert_nothing_dead_lettered(services: Any, policy: RetentionPolicy) -> None:
    dlq = policy.category("cdr").dead_letter_topic
    assert read_topic(services.kafka_bootstrap, dlq, 1, timeout=3) == []


def _systemic(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("purger_ingest_retries_total", {"kind": "systemic"}) or 0


def test_a_database_that_refuses_every_row_is_retried_not_dead_lettered(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    services: Any,
    refusing_trigger: psycopg.Connection[Any],
) -> None:
    refusing_trigger.execute("UPDATE purger.refuse_all SET flag = true")
    for i in range(10):
        producer.send(topics["cdr"], message(f"r{i}", RECENT), key=b"k", partition=1)
    producer.flush()
    registry = CollectorRegistry()
    with _worker_running(settings, policy, registry):
        wait_until(lambda: _systemic(registry) >= 2, what="systemic retries")
        assert registry.get_sample_value("purger_ingest_faulted", {"kind": "systemic"}) == 1
        assert count_rows(settings.conninfo(), "cdr") == 0
        assert (
            committed_offsets(services.kafka_bootstrap, settings.kafka_group_id, topics["cdr"])
            == {}
        )

        refusing_trigger.execute("UPDATE purger.refuse_all SET flag = false")
        wait_until(lambda: count_rows(settings.conninfo(), "cdr") == 10, what="rows stored")
        wait_until(
            lambda: (
                committed_offsets(services.kafka_bootstrap, settings.kafka_group_id, topics["cdr"])
                == {1: 10}
            ),
            what="offsets committed",
        )
    assert registry.get_sample_value("purger_ingest_faulted", {"kind": "systemic"}) == 0
    _assert_nothing_dead_lettered(services, policy)


def test_a_missing_grant_stops_ingestion_until_it_is_granted(
    make_settings: SettingsFactory,
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    services: Any,
) -> None:
    role = f"purger_limited_{uuid.uuid4().hex[:8]}"
    url = settings.conninfo()
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(url, autocommit=True) as admin:
        ident = sql.Identifier(role)
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'limited'").format(ident))
        admin.execute(sql.SQL("GRANT ALL ON SCHEMA purger TO {}").format(ident))
        admin.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA purger TO {}").format(ident))
        admin.execute(sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA purger TO {}").format(ident))
        admin.execute(sql.SQL("GRANT ALL ON ALL FUNCTIONS IN SCHEMA purger TO {}").format(ident))
        admin.execute(sql.SQL("REVOKE INSERT ON purger.records_cdr FROM {}").format(ident))
        try:
            # Partitions are DDL, which only the owner may run: made by it beforehand.
            with Storage(url, policy) as owner:
                expiry = policy.category("cdr").expires_at("t1", RECENT)
                owner.partitions.ensure(owner.conn, "cdr", [expiry])
            limited = make_settings(
                database_url=f"postgresql://{role}:limited@127.0.0.1:5432/{dbname}"
            )
            for i in range(5):
                producer.send(topics["cdr"], message(f"p{i}", RECENT), partition=2)
            producer.flush()
            registry = CollectorRegistry()
            with _worker_running(limited, policy, registry):
                wait_until(lambda: _systemic(registry) >= 2, what="systemic retries")
                assert count_rows(url, "cdr") == 0
                assert (
                    committed_offsets(
                        services.kafka_bootstrap, settings.kafka_group_id, topics["cdr"]
                    )
                    == {}
                )
                admin.execute(sql.SQL("GRANT INSERT ON purger.records_cdr TO {}").format(ident))
                wait_until(lambda: count_rows(url, "cdr") == 5, what="rows stored after GRANT")
            _assert_nothing_dead_lettered(services, policy)
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            admin.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_a_message_near_the_size_limit_is_dead_lettered_truncated(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    services: Any,
) -> None:
    big = KafkaProducer(
        bootstrap_servers=services.kafka_bootstrap, acks="all", max_request_size=1_100_000
    )
    try:
        value = b"{" + b"x" * (MAX_LETTER_BYTES - 100)
        big.send(topics["cdr"], value, key=b"big", partition=3).get(30)
        big.send(topics["cdr"], message("after-big", RECENT), partition=3).get(30)
    finally:
        big.close()
    registry = CollectorRegistry()

    summary = _consume_until_idle(settings, policy, registry)

    assert summary["errors"] == []
    assert count_rows(settings.conninfo(), "cdr") == 1
    reason, key, letter, headers = _letters(services, policy, 1)[0]
    assert reason == "invalid_json"
    assert key == b"big"
    assert headers["purger.truncated"] == b"true"
    assert int(headers["purger.original.size"]) == len(value)
    assert value.startswith(letter) and 0 < len(letter) < len(value)
    assert (
        registry.get_sample_value("purger_dead_letters_truncated_total", {"category": "cdr"}) == 1
    )


def test_tombstones_are_dead_lettered_with_their_own_reason(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    services: Any,
) -> None:
    producer.send(topics["cdr"], None, key=b"gone", partition=0)
    producer.send(topics["cdr"], message("after", RECENT), partition=0)
    producer.flush()

    _consume_until_idle(settings, policy)

    reason, key, value, _ = _letters(services, policy, 1)[0]
    assert (reason, key, value) == ("tombstone", b"gone", None)
    assert count_rows(settings.conninfo(), "cdr") == 1
