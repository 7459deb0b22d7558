"""A run's own Kafka topics and consumer groups: created with a run, deleted after it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError


def create_topics(
    admin_for: Callable[[], KafkaAdminClient],
    names: list[str],
    partitions: int,
    created: list[str],
) -> None:
    """Create ``names`` with ``partitions`` partitions each and wait until they are there.

    ``created`` (the run's topics to delete at the end) gets ``names`` once an admin client
    is up, before the brokers are asked: a half-made creation is cleaned up too.
    """
    spec = {"num_partitions": partitions, "replication_factor": 1}
    admin = admin_for()
    try:
        created.extend(names)
        admin.create_topics({name: dict(spec) for name in names}, wait_for_metadata=True)
        admin.wait_for_topics(names, timeout_ms=30000)
    finally:
        admin.close()


def with_admin(
    admin_for: Callable[[], KafkaAdminClient], work: Callable[[KafkaAdminClient], list[str]]
) -> list[str]:
    """``work``'s problems with a fresh admin client, closed after; or why there was none."""
    try:
        admin = admin_for()
    except KafkaError as exc:
        return [f"kafka admin: {exc.__class__.__name__}"]
    try:
        return work(admin)
    finally:
        admin.close()


def delete_topics(admin: KafkaAdminClient, topics: list[str]) -> list[str]:
    """Delete ``topics`` (those already gone count as deleted); problems, if any."""
    problems: list[str] = []
    try:
        response: Any = admin.delete_topics(topics, timeout_ms=30000, raise_errors=False)
    except KafkaError as exc:
        problems.append(f"topics: {exc.__class__.__name__}")
    else:
        for topic in response.get("topics", []):
            # 3: UNKNOWN_TOPIC_OR_PARTITION, already gone.
            if topic.get("error_code") not in (0, 3):
                problems.append(f"topic {topic.get('name')}: {topic.get('error_message')}")
    return problems
