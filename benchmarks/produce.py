"""Producing the ingestion backlog: realistic messages over the four topics, fast."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

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


@dataclass(frozen=True)
class Produced:
    """What was sent and acknowledged."""

    messages: int
    bytes: int
    seconds: float
    errors: int = 0


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
            value = samples.encode(
                samples.message(category, f"bench-{job.run_id}-{i}", occurred, rng)
            )
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
) -> Produced:
    """Send ``total`` messages round-robin over the categories from ``processes`` processes."""
    share, rest = divmod(total, processes)
    jobs = []
    start = 0
    for p in range(processes):
        count = share + (1 if p < rest else 0)
        jobs.append(ProducerJob(bootstrap, topics, run_id, start, count, now))
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
