"""Topics within retention on the real Kafka: dead-letter topics, expired poison, check/apply."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from prometheus_client import CollectorRegistry

from consumers.service import consume, ensure_topics
from purger.policy import RetentionPolicy
from purger.settings import Settings
from tests.integration.conftest import Services
from tests.integration.support import (
    committed_offsets,
    ingest_metrics,
    purger_cli,
    read_topic,
    settings_env,
)

pytestmark = pytest.mark.integration

KEYS = ("retention.ms", "retention.bytes", "cleanup.policy")


def _configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    """retention.ms, retention.bytes, cleanup.policy of each topic, read back from the broker."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        answer = admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, t, configs=dict.fromkeys(KEYS))
                for t in topics
            ],
            config_filter="all",
        )["topic"]
    finally:
        admin.close()
    return {t: {k: v["value"] for k, v in answer[t].items()} for t in topics}


def _alter(bootstrap: str, topic: str, **configs: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        configs = {k.replace("_", "."): v for k, v in configs.items()}
        result = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
        assert result["topic"][topic] == "OK", result
    finally:
        admin.close()


@pytest.fixture
def created(services: Services, settings: Settings, policy: RetentionPolicy) -> Iterator[list[str]]:
    """The policy's topics, created by the purger (ensure_topics); deleted afterwards."""
    names = ensure_topics(settings, policy, partitions=1)
    try:
        yield names
    finally:
        admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
        try:
            admin.delete_topics(names)
        finally:
            admin.close()


def test_dead_letter_topics_are_created_with_the_policy_retention(
    services: Services, policy: RetentionPolicy, created: list[str]
) -> None:
    everything = [t for c in policy.categories.values() for t in (c.topic, c.dead_letter_topic)]
    assert sorted(created) == sorted(everything)
    configs = _configs(services.kafka_bootstrap, created)
    for category in policy.categories.values():
        dlq = configs[category.dead_letter_topic]
        assert dlq["retention.ms"] == str(7 * 86_400_000), category.name
        assert int(dlq["retention.ms"]) == category.dead_letter_retention.total_seconds() * 1000
        assert dlq["cleanup.policy"] == "delete"
        source = configs[category.topic]
        assert int(source["retention.ms"]) == category.topic_retention.total_seconds() * 1000
    assert configs[policy.category("call_recordings").topic]["retention.ms"] == str(90 * 86_400_000)


def test_topics_create_command_reports_what_exists(
    settings: Settings, policy: RetentionPolicy, created: list[str]
) -> None:
    result = purger_cli("topics", "create", "--json", env=settings_env(settings))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"created": []}


def _record(record_id: str, occurred: datetime, msisdn: str) -> bytes:
    return json.dumps(
        {
            "record_id": record_id,
            "occurred_at": occurred.isoformat(),
            "tenant": "t1",
            "subjects": {"msisdn": msisdn},
            "call": {"duration_s": 42},
        }
    ).encode()


def test_an_expired_record_with_a_bad_identifier_is_counted_not_dead_lettered(
    services: Services,
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
) -> None:
    now = datetime.now(UTC)
    topic = topics["cdr"]
    values = [
        _record("expired-bad", now - timedelta(days=400), "not a phone number"),
        _record("fresh-bad", now - timedelta(hours=1), "not a phone number"),
        _record("expired-good", now - timedelta(days=400), "0612345678"),
    ]
    for value in values:
        producer.send(topic, value, partition=0)
    producer.flush()
    registry = CollectorRegistry()
    metrics = ingest_metrics(policy, registry)

    summary = consume(settings, policy, metrics, threading.Event(), until_idle=True)

    cdr = summary["categories"]["cdr"]
    assert cdr["expired_on_arrival"] == 2  # the bad one and the good one
    assert cdr["dead_lettered"] == 1
    assert cdr["stored"] == 0
    rejected = registry.get_sample_value(
        "purger_records_rejected_total", {"category": "cdr", "reason": "expired_on_arrival"}
    )
    assert rejected == 2
    letters = read_topic(services.kafka_bootstrap, policy.category("cdr").dead_letter_topic, 2, 10)
    assert [json.loads(letter.value)["record_id"] for letter in letters] == ["fresh-bad"]
    # The offset moved past all three.
    assert committed_offsets(services.kafka_bootstrap, settings.kafka_group_id, topic)[0] == 3


def _check(settings: Settings) -> tuple[int, dict[str, Any]]:
    result = purger_cli("topics", "check", "--json", env=settings_env(settings))
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_topics_check_finds_unbounded_and_compacted_topics_and_apply_fixes_them(
    services: Services, settings: Settings, policy: RetentionPolicy, created: list[str]
) -> None:
    bootstrap = services.kafka_bootstrap
    source = policy.category("cdr").topic
    dlq = policy.category("interception").dead_letter_topic
    code, report = _check(settings)
    assert code == 0 and report["findings"] == 0, report
    _alter(bootstrap, source, retention_ms="-1")
    _alter(bootstrap, dlq, cleanup_policy="compact")

    code, report = _check(settings)
    assert code == 1
    found = {t["topic"]: t for t in report["topics"] if t["finding"]}
    assert set(found) == {source, dlq}
    assert found[source]["retention_ms"] == -1
    assert found[source]["excess_seconds"] == 181 * 86400
    assert found[dlq]["cleanup_policy"] == "compact"
    assert found[dlq]["changes"] == {"cleanup.policy": "delete"}

    dry = purger_cli("topics", "apply", "--dry-run", env=settings_env(settings))
    assert dry.returncode == 0, dry.stderr
    assert _configs(bootstrap, [source])[source]["retention.ms"] == "-1"

    applied = purger_cli("topics", "apply", "--json", env=settings_env(settings))
    assert applied.returncode == 0, applied.stderr
    out = json.loads(applied.stdout)
    assert out["errors"] == {} and out["remaining_findings"] == 0

    configs = _configs(bootstrap, [source, dlq])
    assert configs[source]["retention.ms"] == str(181 * 86_400_000)
    assert configs[dlq]["cleanup.policy"] == "delete"
    assert configs[dlq]["retention.ms"] == str(7 * 86_400_000)
    code, report = _check(settings)
    assert code == 0 and report["findings"] == 0, report
