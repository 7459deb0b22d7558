"""What the purger CLI asks of the Kafka side: consume, check, create and configure topics.

Loaded by ``purger.cli`` through the ``purger.ingest`` entry point, so that the
core package never imports this one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)
from prometheus_client import multiprocess

from consumers.anchors import publish_anchor
from consumers.anchors import read_anchors as _read_anchors
from consumers.kafka_config import client_options
from consumers.summary import IngestSummary
from consumers.workers import run_inline, run_processes
from purger.errors import PurgerError
from purger.ingest import IngestPlugin
from purger.liveness import Liveness
from purger.metrics import Metrics
from purger.policy import RetentionPolicy
from purger.settings import Settings
from purger.topic_retention import (
    CONFIG_KEYS,
    DEAD_LETTER,
    TopicConfig,
    creation_configs,
    targets,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class KafkaUnavailable(PurgerError):
    """Kafka cannot be reached."""


def consume(
    settings: Settings,
    policy: RetentionPolicy,
    metrics: Metrics,
    stop: threading.Event,
    *,
    workers: int = 1,
    until_idle: bool = False,
    liveness: Liveness | None = None,
) -> dict[str, Any]:
    """Consume with ``workers`` group members; return the per-category summary.

    ``liveness`` receives one heartbeat slot per worker (for ``/healthz``).
    """
    try:
        if workers == 1:
            summary = run_inline(
                settings, policy, metrics, stop, until_idle=until_idle, liveness=liveness
            )
            errors: list[str] = []
            per_worker = [summary]
        else:
            summary, per_worker, errors = run_processes(
                settings, policy, workers, stop, until_idle=until_idle, liveness=liveness
            )
    except KafkaTimeoutError:
        raise KafkaUnavailable(
            f"no Kafka broker answers at {settings.kafka_bootstrap_servers}"
        ) from None
    out = summary.as_dict()
    out["workers"] = [
        {"messages": s.messages, "assigned_partitions": s.assigned_partitions} for s in per_worker
    ]
    out["errors"] = errors
    return out


def kafka_check(settings: Settings) -> Callable[[], None]:
    """A readiness check that really asks the brokers for their metadata."""
    state: dict[str, KafkaAdminClient | None] = {"admin": None}

    def check() -> None:
        try:
            admin = state["admin"]
            if admin is None:
                admin = state["admin"] = KafkaAdminClient(
                    **client_options(settings), request_timeout_ms=5000
                )
            admin.describe_cluster()
        except (KafkaError, OSError) as exc:
            admin, state["admin"] = state["admin"], None
            if admin is not None:
                admin.close()
            raise KafkaUnavailable(exc.__class__.__name__) from exc

    return check


def _admin(settings: Settings, timeout_ms: int = 15000) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(**client_options(settings), request_timeout_ms=timeout_ms)
    except (KafkaTimeoutError, KafkaConnectionError):
        raise KafkaUnavailable(
            f"no Kafka broker answers at {settings.kafka_bootstrap_servers}"
        ) from None


def ensure_topics(settings: Settings, policy: RetentionPolicy, partitions: int = 4) -> list[str]:
    """Create the category and dead-letter topics that do not exist yet.

    Each is created with ``retention.ms`` at the longest the policy allows it to keep
    a record and ``cleanup.policy=delete``; dead-letter topics with
    ``dead_letter_replication_factor`` replicas, source topics (normally the
    producers' own, created here for the demo and tests) with one. Existing topics
    are left as they are: ``purger topics check`` judges them.
    """
    admin = _admin(settings)
    created = []
    try:
        existing = set(admin.list_topics())
        for target in targets(policy):
            if target.topic in existing:
                continue
            replicas = settings.dead_letter_replication_factor if target.kind == DEAD_LETTER else 1
            topic = NewTopic(
                target.topic, partitions, replicas, topic_configs=creation_configs(target)
            )
            try:
                admin.create_topics([topic])
                created.append(target.topic)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    return created


def describe_topics(settings: Settings, topics: list[str]) -> dict[str, TopicConfig | None]:
    """The retention configs of ``topics`` as the broker applies them (None: no such topic)."""
    admin = _admin(settings)
    try:
        existing = set(admin.list_topics())
        present = [t for t in topics if t in existing]
        answer: dict[str, Any] = {}
        if present:
            resources = [
                ConfigResource(ConfigResourceType.TOPIC, t, configs=dict.fromkeys(CONFIG_KEYS))
                for t in present
            ]
            answer = admin.describe_configs(resources, config_filter="all").get("topic", {})
    except KafkaError as exc:
        raise KafkaUnavailable(f"describing topic configs: {exc.__class__.__name__}") from exc
    finally:
        admin.close()
    out: dict[str, TopicConfig | None] = {}
    for topic in topics:
        if topic not in existing:
            out[topic] = None
            continue
        entries = answer.get(topic, {})
        out[topic] = TopicConfig.from_values(
            {key: entries[key].get("value") for key in CONFIG_KEYS if key in entries}
        )
    return out


def alter_topics(settings: Settings, changes: dict[str, dict[str, str]]) -> dict[str, str | None]:
    """Set ``changes`` (topic -> {config: value}) incrementally; topic -> None or the error."""
    admin = _admin(settings)
    out: dict[str, str | None] = {}
    try:
        for topic, configs in changes.items():
            resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs=dict(configs))
            try:
                result = admin.alter_configs([resource]).get("topic", {}).get(topic, "no answer")
            except (KafkaError, ValueError) as exc:
                result = exc.__class__.__name__
            out[topic] = None if result == "OK" else str(result)
    finally:
        admin.close()
    return out


class MultiprocessMetrics:
    """A directory where worker processes write their metrics for the parent to serve."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="purger-metrics-")
        os.environ[MULTIPROC_ENV] = self.path

    def collector_into(self, registry: Any) -> None:
        """Serve the workers' metrics from ``registry``."""
        multiprocess.MultiProcessCollector(registry, path=self.path)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Remove the directory."""
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(self.path, ignore_errors=True)


def read_anchors(settings: Settings) -> list[dict[str, Any]]:
    """Every anchored audit head; KafkaUnavailable (a clear message) when the broker is away."""
    try:
        return _read_anchors(settings)
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"reading audit anchors from {settings.audit_anchor_topic}: {exc.__class__.__name__}"
        ) from exc


class KafkaIngest:
    """The ``purger.ingest`` plugin (``purger.ingest.IngestPlugin``) of this package."""

    consume = staticmethod(consume)
    kafka_check = staticmethod(kafka_check)
    ensure_topics = staticmethod(ensure_topics)
    describe_topics = staticmethod(describe_topics)
    alter_topics = staticmethod(alter_topics)
    publish_anchor = staticmethod(publish_anchor)
    read_anchors = staticmethod(read_anchors)

    def metrics_directory(self) -> MultiprocessMetrics:
        """A directory for the metrics of worker processes."""
        return MultiprocessMetrics()


# The object the entry point names; the annotation makes mypy check the protocol.
PLUGIN: IngestPlugin = KafkaIngest()

__all__ = [
    "PLUGIN",
    "IngestSummary",
    "KafkaIngest",
    "KafkaUnavailable",
    "MultiprocessMetrics",
    "alter_topics",
    "consume",
    "describe_topics",
    "ensure_topics",
    "kafka_check",
    "publish_anchor",
    "read_anchors",
]
