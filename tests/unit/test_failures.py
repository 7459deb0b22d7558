"""The ingestion error policy: classification, dead-letter fitting, offsets, liveness."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka import TopicPartition
from kafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    NotCoordinatorError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
    UnsupportedVersionError,
)
from prometheus_client import CollectorRegistry
from psycopg import errors as pgerrors

from consumers.checkpoint import Checkpoint
from consumers.deadletter import DeadLetter, fit, headers, letter_size
from consumers.failures import KafkaOutage, Kind, Retrier, Stopping, classify
from purger.db import classify as classify_db
from purger.errors import (
    DatabaseUnavailable,
    InvalidMessage,
    LockTimeout,
    RecordRefused,
    StatementTimeout,
    StorageError,
    SystemicFault,
)
from purger.liveness import Liveness, beater
from purger.metrics import Metrics


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (InvalidMessage("invalid_json", "x"), Kind.POISON),
        (RecordRefused("x", index=0), Kind.POISON),
        (DatabaseUnavailable("x"), Kind.OUTAGE),
        (LockTimeout("x"), Kind.OUTAGE),
        (StatementTimeout("x"), Kind.OUTAGE),
        (SystemicFault("x"), Kind.SYSTEMIC),
        (StorageError("unknown state"), Kind.SYSTEMIC),
        (KafkaConnectionError(), Kind.OUTAGE),
        (KafkaTimeoutError(), Kind.OUTAGE),
        (NotLeaderForPartitionError(), Kind.OUTAGE),
        (NotCoordinatorError(), Kind.OUTAGE),
        (CommitFailedError(), Kind.OUTAGE),
        (KafkaOutage("x"), Kind.OUTAGE),
        (ConnectionResetError(), Kind.OUTAGE),
        (TopicAuthorizationFailedError(), Kind.SYSTEMIC),
        (UnsupportedVersionError(), Kind.SYSTEMIC),
        (RuntimeError("a bug"), Kind.SYSTEMIC),
    ],
)
def test_every_failure_has_a_kind(exc: BaseException, kind: Kind) -> None:
    assert classify(exc) is kind


def _pg(cls: type[psycopg.Error], sqlstate: str | None) -> psycopg.Error:
    exc = cls("boom")
    exc.sqlstate = sqlstate  # type: ignore[misc]
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_pg(psycopg.OperationalError, None), DatabaseUnavailable),
        (_pg(psycopg.OperationalError, "08006"), DatabaseUnavailable),
        (_pg(pgerrors.AdminShutdown, "57P01"), DatabaseUnavailable),
        (_pg(pgerrors.CannotConnectNow, "57P03"), DatabaseUnavailable),
        (_pg(pgerrors.SerializationFailure, "40001"), DatabaseUnavailable),
        (_pg(pgerrors.LockNotAvailable, "55P03"), LockTimeout),
        (_pg(pgerrors.QueryCanceled, "57014"), StatementTimeout),
        (_pg(pgerrors.InsufficientPrivilege, "42501"), SystemicFault),
        (_pg(pgerrors.UndefinedTable, "42P01"), SystemicFault),
        (_pg(pgerrors.InvalidObjectDefinition, "42P17"), SystemicFault),
        (_pg(pgerrors.DiskFull, "53100"), SystemicFault),
        (_pg(pgerrors.IoError, "58030"), SystemicFault),
        (_pg(pgerrors.DataCorrupted, "XX001"), SystemicFault),
        (_pg(pgerrors.InvalidPassword, "28P01"), SystemicFault),
        (_pg(pgerrors.NumericValueOutOfRange, "22003"), RecordRefused),
        (_pg(pgerrors.UntranslatableCharacter, "22P05"), RecordRefused),
        (_pg(pgerrors.ProgramLimitExceeded, "54000"), RecordRefused),
        (_pg(pgerrors.CheckViolation, "23514"), RecordRefused),
        (_pg(pgerrors.RaiseException, "P0001"), StorageError),
    ],
)
def test_every_database_state_has_a_kind(exc: psycopg.Error, expected: type) -> None:
    assert classify_db(exc) is expected


def _letter(key: bytes | None, value: bytes | None) -> DeadLetter:
    return DeadLetter("t.dlq", "cdr", "t", 1, 2, "invalid_json", "detail", key, value)


@given(
    key=st.none() | st.binary(max_size=3000),
    value=st.none() | st.binary(max_size=20_000),
    limit=st.integers(min_value=4096, max_value=30_000),
)
def test_a_fitted_letter_always_fits_and_keeps_a_prefix(
    key: bytes | None, value: bytes | None, limit: int
) -> None:
    letter = _letter(key, value)
    fitted = fit(letter, limit)
    assert letter_size(fitted) <= limit
    assert fitted.key is not None or fitted.value is not None
    assert (value or b"").startswith(fitted.value or b"")
    assert (key or b"").startswith(fitted.key or b"")
    names = dict(headers(fitted))
    if fitted.truncated_from is None:
        assert (fitted.key, fitted.value) == (key, value if (key, value) != (None, None) else b"")
    else:
        assert names["purger.original.size"] == str(len(value or b"")).encode()


class _Consumer:
    """Records commits; fails them as told (a unit-test stand-in for KafkaConsumer)."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []
        self.fail_with: BaseException | None = None

    def commit(self, offsets: dict[TopicPartition, Any], timeout_ms: int) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


def test_offsets_survive_a_broker_outage_and_never_move_backwards() -> None:
    tp = TopicPartition("t", 0)
    checkpoint = Checkpoint()
    consumer = _Consumer()
    checkpoint.consumer = consumer  # type: ignore[assignment]
    checkpoint.advance({tp: 9})
    consumer.fail_with = KafkaConnectionError()
    assert checkpoint.commit() is False
    assert checkpoint.outstanding([tp])
    consumer.fail_with = None
    checkpoint.advance({tp: 4})  # an older batch never moves the offset back
    assert checkpoint.commit() is True
    assert consumer.commits == [{tp: 10}]
    assert not checkpoint.outstanding([tp])
    assert checkpoint.commit() is True
    assert consumer.commits == [{tp: 10}]


def test_a_commit_refused_after_a_rebalance_is_dropped() -> None:
    tp = TopicPartition("t", 0)
    checkpoint = Checkpoint()
    consumer = _Consumer()
    checkpoint.consumer = consumer  # type: ignore[assignment]
    checkpoint.advance({tp: 3})
    consumer.fail_with = CommitFailedError()
    assert checkpoint.commit() is False
    assert not checkpoint.outstanding([tp])


def test_the_retrier_waits_out_outages_and_reports_systemic_faults() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    failures: list[BaseException] = [DatabaseUnavailable("down"), SystemicFault("grant")]
    beats: list[int] = []

    def action() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    retrier = Retrier(
        metrics, threading.Event(), longest=0.01, first=0.001, beat=lambda: beats.append(1)
    )
    assert retrier.run(action, "store") == "done"
    assert len(beats) == 3
    assert registry.get_sample_value("purger_ingest_retries_total", {"kind": "outage"}) == 1
    assert registry.get_sample_value("purger_ingest_retries_total", {"kind": "systemic"}) == 1
    assert registry.get_sample_value("purger_ingest_faulted", {"kind": "systemic"}) == 0


def test_the_retrier_never_passes_a_poison_record_as_success() -> None:
    stop = threading.Event()
    calls = []

    def action() -> None:
        calls.append(1)
        if len(calls) == 3:
            stop.set()
        raise RecordRefused("escaped isolation")

    retrier = Retrier(Metrics(CollectorRegistry()), stop, longest=0.01, first=0.001)
    with pytest.raises(Stopping):
        retrier.run(action, "store")
    assert len(calls) == 3


def test_liveness_fails_for_a_worker_without_progress() -> None:
    now = [100.0]
    liveness = Liveness(10, clock=lambda: now[0])
    beat = beater(liveness.slot("worker-0"), clock=lambda: now[0])
    liveness.slot("worker-1")
    now[0] = 109.0
    beat()
    assert liveness()
    now[0] = 111.0
    assert liveness.stale() == ["worker-1"]
    liveness.remove("worker-1")
    assert liveness()
    now[0] = 120.0
    assert not liveness()
