"""What the purger CLI asks of the Kafka side: consume, check, create topics.

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
from kafka.admin import NewTopic
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from prometheus_client import multiprocess

from consumers.kafka_config import client_options
from consumers.summary import IngestSummary
from consumers.workers import run_inline, run_processes
from purger.errors import PurgerError
from purger.ingest import IngestPlugin
from purger.liveness import Liveness
from purger.metrics import Metrics
from purger.policy import RetentionPolicy
from purger.settings import Settings

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


def ensure_topics(settings: Settings, policy: RetentionPolicy, partitions: int = 4) -> list[str]:
    """Create the category and dead-letter topics that do not exist yet."""
    try:
        admin = KafkaAdminClient(**client_options(settings), request_timeout_ms=15000)
    except KafkaTimeoutError:
        raise KafkaUnavailable(
            f"no Kafka broker answers at {settings.kafka_bootstrap_servers}"
        ) from None
    created = []
    try:
        existing = set(admin.list_topics())
        for category in policy.categories.values():
            for topic in (category.topic, category.dead_letter_topic):
                if topic in existing:
                    continue
                try:
                    admin.create_topics([NewTopic(topic, partitions, 1)])
                    created.append(topic)
                except TopicAlreadyExistsError:
                    pass
    finally:
        admin.close()
    return created


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


class KafkaIngest:
    """The ``purger.ingest`` plugin (``purger.ingest.IngestPlugin``) of this package."""

    consume = staticmethod(consume)
    kafka_check = staticmethod(kafka_check)

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
    "consume",
    "ensure_topics",
    "kafka_check",
]
