"""Producing the ingestion backlog: realistic messages over the four topics, fast."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kafka import KafkaProducer

from examples import samples

# Records occurred within the last 30 days: none expires on arrival, every
# category's expiry spreads over about 30 daily partitions.
SPREAD = timedelta(days=30)


@dataclass(frozen=True)
class ProducerJob:
    """One producer process's share: records ``start`` .. ``start + count - 1``."""

    bootstrap: str
    topics: dict[str, str]  # category -> topic
    run_id: str
    start: int
    count: int
    now: datetime
    # Wrap each message in the schema envelope of Kafka Connect's JsonConverter.
    envelope: bool = False


@dataclass(frozen=True)
class Produced:
    """What was sent and acknowledged."""

    messages: int
    bytes: int
    seconds: float
    errors: int = 0


# The record as Kafka Connect's JsonConverter (schemas.enable=true) reads it. Debezium's
# JDBC sink writes io.debezium.data.Json fields as jsonb and ZonedTimestamp as timestamptz;
# what is not a contract field goes into ``payload`` as ours does.
_CONTRACT = ("record_id", "occurred_at", "tenant", "subjects")
_SCHEMA = {
    "type": "struct",
    "name": "bench.Record",
    "optional": False,
    "fields": [
        {"field": "record_id", "type": "string", "optional": False},
        {
            "field": "occurred_at",
            "type": "string",
            "optional": False,
            "name": "io.debezium.time.ZonedTimestamp",
        },
        {"field": "tenant", "type": "string", "optional": False},
        {"field": "subjects", "type": "string", "optional": False, "name": "io.debezium.data.Json"},
        {"field": "payload", "type": "string", "optional": True, "name": "io.debezium.data.Json"},
    ],
}


def connect_envelope(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` in JsonConverter's envelope: the same fields, a schema beside them."""
    extra = {k: v for k, v in message.items() if k not in _CONTRACT}
    return {
        "schema": _SCHEMA,
        "payload": {
            "record_id": message["record_id"],
            "occurred_at": message["occurred_at"],
            "tenant": message["tenant"],
            "subjects": json.dumps(message["subjects"], separators=(",", ":")),
            "payload": json.dumps(extra, separators=(",", ":")),
        },
    }


def _produce(job: ProducerJob) -> Produced:
    rng = random.Random(job.start)
    names = sorted(job.topics)
    errors: list[BaseException] = []
    producer = KafkaProducer(
        bootstrap_servers=job.bootstrap.split(","),
        client_id=f"bench-{job.run_id}-producer",
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
    )
    started = time.perf_counter()
    size = 0
    try:
        for i in range(job.start, job.start + job.count):
            category = names[i % len(names)]
            occurred = samples.spread(job.now, rng, SPREAD)
            message = samples.message(category, f"bench-{job.run_id}-{i}", occurred, rng)
            value = samples.encode(connect_envelope(message) if job.envelope else message)
            size += len(value)
            producer.send(job.topics[category], value=value).add_errback(errors.append)
        producer.flush()
    finally:
        producer.close(timeout=30)
    return Produced(job.count, size, time.perf_counter() - started, len(errors))


def produce(
    bootstrap: str,
    *,
    topics: dict[str, str],
    run_id: str,
    total: int,
    processes: int,
    now: datetime,
    envelope: bool = False,
) -> Produced:
    """Send ``total`` messages round-robin over the categories from ``processes`` processes."""
    share, rest = divmod(total, processes)
    jobs = []
    start = 0
    for p in range(processes):
        count = share + (1 if p < rest else 0)
        jobs.append(ProducerJob(bootstrap, topics, run_id, start, count, now, envelope))
        start += count
    started = time.perf_counter()
    with ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn")) as pool:
        results = list(pool.map(_produce, jobs))
    return Produced(
        messages=sum(r.messages for r in results),
        bytes=sum(r.bytes for r in results),
        seconds=time.perf_counter() - started,
        errors=sum(r.errors for r in results),
    )
