"""The audit chain's heads anchored outside PostgreSQL: one Kafka record per pass.

A pass publishes its audit entry's ``{seq, hash, recorded_at}`` (``purger.audit.anchor_of``)
to ``audit_anchor_topic``; ``purger audit verify --anchors`` reads them all back and
checks each against the database. The records hold no personal data and are kept
forever (``retention.ms=-1``, ``cleanup.policy=delete``), so that whoever owns the
database cannot rewrite the chain without the anchors showing it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from consumers.kafka_config import client_options, producer_options
from purger.settings import Settings

log = logging.getLogger("purger.audit")

KEY = b"audit-head"
SEND_TIMEOUT_SECONDS = 30
READ_TIMEOUT_MS = 10_000
TOPIC_CONFIGS = {"retention.ms": "-1", "cleanup.policy": "delete"}


def ensure_anchor_topic(settings: Settings) -> bool:
    """Create the anchor topic (one partition, kept forever) unless it exists; True if created."""
    admin = KafkaAdminClient(**client_options(settings), request_timeout_ms=15000)
    try:
        if settings.audit_anchor_topic in set(admin.list_topics()):
            return False
        topic = NewTopic(
            settings.audit_anchor_topic,
            1,
            settings.dead_letter_replication_factor,
            topic_configs=dict(TOPIC_CONFIGS),
        )
        try:
            admin.create_topics([topic])
        except TopicAlreadyExistsError:
            return False
        return True
    finally:
        admin.close()


def publish_anchor(settings: Settings, anchor: dict[str, Any]) -> None:
    """Publish one audit head, acknowledged by all in-sync replicas; raises on failure."""
    ensure_anchor_topic(settings)
    producer = KafkaProducer(**producer_options(settings))
    try:
        value = json.dumps(anchor, sort_keys=True, separators=(",", ":")).encode()
        producer.send(settings.audit_anchor_topic, key=KEY, value=value).get(
            timeout=SEND_TIMEOUT_SECONDS
        )
    finally:
        producer.close()


def read_anchors(settings: Settings) -> list[dict[str, Any]]:
    """Every audit head in the anchor topic, oldest first (none when the topic is absent)."""
    consumer = KafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(settings.audit_anchor_topic)
        if not partitions:
            return []
        assigned = [TopicPartition(settings.audit_anchor_topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        end = consumer.end_offsets(assigned)
        anchors: list[dict[str, Any]] = []
        while any(consumer.position(tp) < end[tp] for tp in assigned):
            polled = consumer.poll(timeout_ms=READ_TIMEOUT_MS)
            if not polled:
                raise KafkaError("the anchor topic stopped answering before its end")
            for records in polled.values():
                anchors.extend(_decode(r.value, r.offset) for r in records)
        return [a for a in anchors if a]
    finally:
        consumer.close()


def _decode(value: bytes | None, offset: int) -> dict[str, Any]:
    try:
        anchor = json.loads(value or b"")
        if isinstance(anchor, dict) and isinstance(anchor.get("seq"), int) and anchor.get("hash"):
            return anchor
    except ValueError:
        pass
    log.warning("anchor record at offset %d is not an audit head; ignored", offset)
    return {}
