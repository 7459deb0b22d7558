"""The ceilings and the baseline our consumer is compared with.

(a) kafka-python consumption plus ``json.loads`` of every message, no database;
(b) COPY of the rows our consumer stored into the same tables of a fresh database,
    no Kafka; (c) a naive consumer that INSERTs and commits once per record.
Each is timed like ours: from the moment the group hands out partitions (inside
the first poll) to the last record handled (for (c), its commit); (b) from the
first COPY to the commit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
from psycopg import sql
from psycopg.types.json import Jsonb

from benchmarks.dataset import COLUMNS
from consumers.kafka_config import consumer_options
from purger.partitions import PartitionManager, parent_table
from purger.policy import RetentionPolicy
from purger.records import decode
from purger.settings import Settings

# The columns our consumer writes: the record's, then where it came from.
COPY_COLUMNS = (*COLUMNS, "source_topic", "source_partition", "source_offset")


@dataclass
class Timed:
    """Records handled and the seconds they took."""

    records: int
    seconds: float

    @property
    def rate(self) -> float:
        """Records per second."""
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "records": self.records,
            "seconds": round(self.seconds, 3),
            "records_per_second": round(self.rate, 1),
        }


class _FirstAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.at: float | None = None

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        pass

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if self.at is None:
            self.at = time.perf_counter()


def raw_consume(settings: Settings, topics: list[str], total: int) -> Timed:
    """(a): consume ``total`` messages with our consumer options and decode them as JSON."""
    consumer = KafkaConsumer(**consumer_options(settings))
    listener = _FirstAssignment()
    try:
        consumer.subscribe(topics=sorted(topics), listener=listener)
        seen = 0
        while seen < total:
            polled = consumer.poll(
                timeout_ms=settings.poll_timeout_ms, max_records=settings.batch_max_records
            )
            for messages in polled.values():
                for message in messages:
                    json.loads(message.value)
                seen += len(messages)
        ended = time.perf_counter()
    finally:
        consumer.close(autocommit=False)
    assert listener.at is not None
    return Timed(seen, ended - listener.at)


def _partition_starts(conn: psycopg.Connection[Any], category: str) -> list[datetime]:
    rows = conn.execute(
        "SELECT range_start FROM purger.partitions WHERE category = %s", [category]
    ).fetchall()
    return [r[0] for r in rows]


def copy_ceiling(source_url: str, target_url: str, policy: RetentionPolicy) -> Timed:
    """(b): the rows stored in ``source_url``, COPYed into the same tables of ``target_url``."""
    dumps: dict[str, list[bytes]] = {}
    starts: dict[str, list[datetime]] = {}
    columns = sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS))
    with psycopg.connect(source_url) as src:
        for name in policy.categories:
            starts[name] = _partition_starts(src, name)
            statement = sql.SQL("COPY (SELECT {} FROM purger.{}) TO STDOUT (FORMAT BINARY)")
            chunks: list[bytes] = []
            with src.cursor().copy(
                statement.format(columns, sql.Identifier(parent_table(name)))
            ) as copy:
                chunks.extend(bytes(chunk) for chunk in copy)
            dumps[name] = chunks
    manager = PartitionManager(timedelta(days=1))
    with psycopg.connect(target_url, application_name="bench:copy") as conn:
        for name, instants in starts.items():
            manager.ensure(conn, name, [s + timedelta(hours=1) for s in instants])
        started = time.perf_counter()
        rows = 0
        for name, chunks in dumps.items():
            statement = sql.SQL("COPY purger.{} ({}) FROM STDIN (FORMAT BINARY)")
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(statement.format(sql.Identifier(parent_table(name)), columns)) as cp:
                    for chunk in chunks:
                        cp.write(chunk)
                rows += cur.rowcount
        seconds = time.perf_counter() - started
    return Timed(rows, seconds)


def naive(
    settings: Settings, target_url: str, policy: RetentionPolicy, total: int, now: datetime
) -> Timed:
    """(c): one INSERT and one commit per record, offsets auto-committed, as often written."""
    by_topic = policy.by_topic()
    manager = PartitionManager(timedelta(days=1))
    insert = {
        name: sql.SQL("INSERT INTO purger.{} ({}) VALUES ({})").format(
            sql.Identifier(parent_table(name)),
            sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS)),
            sql.SQL(", ").join(sql.Placeholder() * len(COPY_COLUMNS)),
        )
        for name in policy.categories
    }
    with psycopg.connect(target_url, application_name="bench:naive") as conn:
        # Our schema needs partitions: create every one the sample traffic can need first.
        for category in policy.categories.values():
            days = [now - timedelta(days=d) for d in range(-2, 33)]
            manager.ensure(conn, category.name, [category.expires_at("", d) for d in days])
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            group_id=settings.kafka_group_id,
            client_id=settings.kafka_client_id,
            auto_offset_reset="earliest",
            enable_auto_commit=True,
        )
        listener = _FirstAssignment()
        seen = 0
        try:
            consumer.subscribe(topics=sorted(by_topic), listener=listener)
            while seen < total:
                for tp, messages in consumer.poll(timeout_ms=500).items():
                    category = by_topic[tp.topic]
                    for message in messages[: total - seen]:
                        record = decode(
                            message.value,
                            now=datetime.now(UTC),
                            future_tolerance=settings.future_tolerance_delta,
                        )
                        conn.execute(
                            insert[category.name],
                            (
                                record.record_id,
                                record.tenant,
                                record.occurred_at,
                                category.expires_at(record.tenant, record.occurred_at),
                                record.subject_keys,
                                Jsonb(record.subjects),
                                Jsonb(record.payload),
                                message.topic,
                                message.partition,
                                message.offset,
                            ),
                        )
                        conn.commit()
                        seen += 1
            ended = time.perf_counter()
        finally:
            consumer.close(autocommit=False)
    assert listener.at is not None
    return Timed(seen, ended - listener.at)
