"""A revoked partition's durable offsets are committed before another member gets it.

kafka-python 3 runs the rebalance listener on its I/O thread, where a blocking
``commit`` raises ("Cannot block on net.run() from the IO thread"): the listener
used to lose the commit on revoke (and poll() then raised). Offsets are pending
at a revocation when an earlier commit failed (a broker outage, say); here they
are made pending by hand, on a real group of two members.
"""

from __future__ import annotations

import logging
import threading

import pytest
from kafka import KafkaConsumer, TopicPartition

from consumers.kafka_config import consumer_options
from consumers.loop import ConsumerWorker, _Rebalance
from purger.policy import RetentionPolicy
from purger.settings import Settings
from tests.integration.support import (
    committed_offsets,
    ingest_metrics,
    second_member,
    wait_until,
)


def test_a_revocation_commits_the_durable_offsets_on_the_io_thread(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    members: list[KafkaConsumer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = policy.category("cdr").topic
    worker = ConsumerWorker(settings, policy, ingest_metrics(policy), threading.Event())
    first = KafkaConsumer(**consumer_options(settings))
    members.append(first)
    worker.checkpoint.consumer = first
    first.subscribe(topics=[topic], listener=_Rebalance(worker))

    def owns_all() -> bool:
        first.poll(timeout_ms=100)
        return len(first.assignment()) == 4

    wait_until(owns_all, what="the first member owning all four partitions")
    # Durable but not committed, as after a commit that failed during an outage.
    durable = {TopicPartition(topic, p): 10 * p + 4 for p in range(4)}
    worker.checkpoint.advance(durable)

    with caplog.at_level(logging.WARNING):
        second_member(settings, topic, first, members)

    moved = {tp for tp in durable if tp not in first.assignment()}
    assert moved, "the second member got nothing from the first"
    committed = committed_offsets(settings.kafka_bootstrap_servers, settings.kafka_group_id, topic)
    for tp in moved:
        # advance(last) makes last + 1 durable: the next offset to read.
        assert committed.get(tp.partition) == durable[tp] + 1, (tp, committed)
        assert tp not in worker.checkpoint.pending
    for tp in set(durable) - moved:
        # Kept (a cooperative rebalance): committed on revoke or still pending.
        assert committed.get(tp.partition) == durable[tp] + 1 or (
            worker.checkpoint.pending.get(tp) == durable[tp] + 1
        )
    failures = [r for r in caplog.records if "rebalance listener" in r.getMessage().lower()]
    assert failures == [], [r.getMessage() for r in failures]
