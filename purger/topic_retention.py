"""The topics' retention against the policy: which topic may keep a record too long (pure).

Every category has two topics: its source topic and its dead-letter topic. Each
may keep a record for at most an allowed span: the source topic the category's
``topic_retention`` (the shortest of its retention and of every tenant override),
the dead-letter topic its ``dead_letter_retention``. A topic breaks that when:

- ``retention.ms`` is ``-1`` (kept forever, whatever ``retention.bytes`` says: a
  size bound is no time bound);
- ``retention.ms`` is longer than allowed;
- ``cleanup.policy`` contains ``compact`` (the last record of each key is kept
  forever, whatever ``retention.ms`` says).

The excess (``purger_topic_retention_excess_seconds``) is how much longer than
allowed the topic may keep a record: ``retention.ms`` minus the allowed span, and,
for a topic that keeps records without a time bound (``-1`` or compaction), the
allowed span itself: a finite stand-in for "unbounded" that is always above zero.
The reading of the broker's configs and the writing of corrections belong to the
ingest plugin (``purger.ingest``); this module only judges them and sets the gauge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from purger.metrics import Metrics
from purger.policy import RetentionPolicy

SOURCE = "source"
DEAD_LETTER = "dead_letter"
RETENTION_MS = "retention.ms"
RETENTION_BYTES = "retention.bytes"
CLEANUP_POLICY = "cleanup.policy"
# The topic configs read from the broker.
CONFIG_KEYS = (RETENTION_MS, RETENTION_BYTES, CLEANUP_POLICY)


@dataclass(frozen=True, slots=True)
class TopicTarget:
    """One topic the policy governs, and the longest it may keep a record."""

    topic: str
    category: str
    kind: str  # SOURCE or DEAD_LETTER
    allowed: timedelta

    @property
    def allowed_ms(self) -> int:
        """``allowed`` in milliseconds, as ``retention.ms`` writes it."""
        return int(self.allowed.total_seconds() * 1000)


@dataclass(frozen=True, slots=True)
class TopicConfig:
    """The configs of one topic as the broker reports them (effective values)."""

    retention_ms: int | None
    retention_bytes: int | None
    cleanup_policy: str | None

    @classmethod
    def from_values(cls, values: dict[str, str | None]) -> TopicConfig:
        """From ``{config key: value}`` as the admin API answers."""

        def number(key: str) -> int | None:
            value = values.get(key)
            return int(value) if value not in (None, "") else None

        return cls(
            retention_ms=number(RETENTION_MS),
            retention_bytes=number(RETENTION_BYTES),
            cleanup_policy=values.get(CLEANUP_POLICY),
        )

    @property
    def compacted(self) -> bool:
        """True when ``cleanup.policy`` contains ``compact``."""
        policies = (self.cleanup_policy or "").split(",")
        return "compact" in (p.strip() for p in policies)


@dataclass(frozen=True)
class TopicCheck:
    """The verdict on one topic: its problems, excess and the changes that fix it."""

    target: TopicTarget
    config: TopicConfig | None  # None: the topic does not exist
    problems: list[str] = field(default_factory=list)
    excess_seconds: float = 0.0
    changes: dict[str, str] = field(default_factory=dict)

    @property
    def exists(self) -> bool:
        """False when the broker has no such topic (it keeps nothing)."""
        return self.config is not None

    @property
    def finding(self) -> bool:
        """True when the topic may keep a record longer than allowed."""
        return bool(self.problems)

    def as_dict(self) -> dict[str, Any]:
        """For ``--json``."""
        config = self.config
        return {
            "topic": self.target.topic,
            "category": self.target.category,
            "kind": self.target.kind,
            "exists": self.exists,
            "allowed_ms": self.target.allowed_ms,
            "retention_ms": config.retention_ms if config else None,
            "retention_bytes": config.retention_bytes if config else None,
            "cleanup_policy": config.cleanup_policy if config else None,
            "finding": self.finding,
            "problems": list(self.problems),
            "excess_seconds": self.excess_seconds,
            "changes": dict(self.changes),
        }


def targets(policy: RetentionPolicy) -> list[TopicTarget]:
    """Every source and dead-letter topic of the policy, with its allowed span."""
    out = []
    for category in policy.categories.values():
        out.append(TopicTarget(category.topic, category.name, SOURCE, category.topic_retention))
        out.append(
            TopicTarget(
                category.dead_letter_topic,
                category.name,
                DEAD_LETTER,
                category.dead_letter_retention,
            )
        )
    return out


def assess(target: TopicTarget, config: TopicConfig | None) -> TopicCheck:
    """Judge one topic's configs against its allowed span (see the module docstring)."""
    if config is None:
        return TopicCheck(target, None)
    allowed_ms = target.allowed_ms
    allowed_seconds = target.allowed.total_seconds()
    problems: list[str] = []
    changes: dict[str, str] = {}
    excess = 0.0
    ms = config.retention_ms
    if ms is None or ms < 0:
        problems.append(f"retention.ms is {ms if ms is not None else 'unknown'}: no time bound")
        changes[RETENTION_MS] = str(allowed_ms)
        excess = allowed_seconds
    elif ms > allowed_ms:
        problems.append(f"retention.ms {ms} is longer than the allowed {allowed_ms}")
        changes[RETENTION_MS] = str(allowed_ms)
        excess = (ms - allowed_ms) / 1000
    if config.compacted:
        problems.append(
            f"cleanup.policy {config.cleanup_policy!r} compacts: the last record of each key "
            "is kept forever"
        )
        changes[CLEANUP_POLICY] = "delete"
        excess = max(excess, allowed_seconds)
    return TopicCheck(target, config, problems, excess, changes)


def check(policy: RetentionPolicy, configs: dict[str, TopicConfig | None]) -> list[TopicCheck]:
    """Every target of ``policy`` judged on ``configs`` (topic -> configs, None: absent)."""
    return [assess(t, configs.get(t.topic)) for t in targets(policy)]


def check_topics(
    policy: RetentionPolicy,
    describe: Callable[[list[str]], dict[str, TopicConfig | None]],
    metrics: Metrics | None = None,
) -> list[TopicCheck]:
    """Read the topics' configs through ``describe``, judge them, export the excess."""
    checks = check(policy, describe([t.topic for t in targets(policy)]))
    if metrics is not None:
        for c in checks:
            metrics.topic_retention_excess.labels(c.target.topic).set(c.excess_seconds)
    return checks


def creation_configs(target: TopicTarget) -> dict[str, str]:
    """The configs the purger creates a topic with: the allowed span, deletion."""
    return {RETENTION_MS: str(target.allowed_ms), CLEANUP_POLICY: "delete"}
