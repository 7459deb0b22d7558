"""The ingest plugin: what the core asks of the Kafka side, and how it finds it.

The core never imports ``consumers``: the installed distribution registers an
object satisfying ``IngestPlugin`` under the ``purger.ingest`` entry point, so
that the dependency points one way only (consumers -> purger).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from purger.errors import ConfigError
from purger.liveness import Liveness
from purger.metrics import Metrics
from purger.policy import RetentionPolicy
from purger.settings import Settings
from purger.topic_retention import TopicConfig

ENTRY_POINT_GROUP = "purger.ingest"


class MetricsDirectory(Protocol):
    """Where worker processes write their metrics for the parent to serve."""

    def collector_into(self, registry: CollectorRegistry) -> None:
        """Serve the workers' metrics from ``registry``."""

    def close(self) -> None:
        """Remove the directory."""


class IngestPlugin(Protocol):
    """The Kafka side of the purger."""

    def consume(
        self,
        settings: Settings,
        policy: RetentionPolicy,
        metrics: Metrics,
        stop: threading.Event,
        *,
        workers: int = 1,
        until_idle: bool = False,
        liveness: Liveness | None = None,
    ) -> dict[str, Any]:
        """Consume with ``workers`` group members until ``stop`` (or caught up)."""

    def kafka_check(self, settings: Settings) -> Callable[[], None]:
        """A readiness check that asks the brokers for their metadata."""

    def metrics_directory(self) -> MetricsDirectory:
        """A directory for the metrics of worker processes."""

    def ensure_topics(
        self, settings: Settings, policy: RetentionPolicy, partitions: int = 4
    ) -> list[str]:
        """Create the missing source and dead-letter topics with the policy's retention.

        Returns the topics created.
        """

    def describe_topics(
        self, settings: Settings, topics: list[str]
    ) -> dict[str, TopicConfig | None]:
        """``retention.ms``, ``retention.bytes``, ``cleanup.policy`` per topic (None: absent)."""

    def alter_topics(
        self, settings: Settings, changes: dict[str, dict[str, str]]
    ) -> dict[str, str | None]:
        """Set the given configs of each topic (other configs untouched).

        Returns topic -> None when done, else the broker's error (e.g. not authorised).
        """

    def publish_anchor(self, settings: Settings, anchor: dict[str, Any]) -> None:
        """Publish an audit head (``audit.anchor_of``) to ``audit_anchor_topic``; raises."""

    def read_anchors(self, settings: Settings) -> list[dict[str, Any]]:
        """Every audit head published to ``audit_anchor_topic``, oldest first."""


def load_plugin(name: str = "kafka") -> IngestPlugin:
    """The installed ingest plugin ``name``; ConfigError if it is not installed."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            plugin: IngestPlugin = ep.load()
            return plugin
    raise ConfigError(
        f"the Kafka consumers are not installed (entry point {ENTRY_POINT_GROUP}:{name})"
    )
