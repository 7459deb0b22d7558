"""Dead-letter retention in the policy, the topics' retention verdict, expired poison messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kafka import TopicPartition
from prometheus_client import CollectorRegistry

from consumers.decoding import BatchDecoder, lenient_expiry
from purger.durations import parse_duration
from purger.errors import PolicyError
from purger.metrics import Metrics
from purger.policy import RetentionPolicy, load_policy, shortest_span
from purger.topic_retention import (
    DEAD_LETTER,
    SOURCE,
    TopicConfig,
    TopicTarget,
    assess,
    check_topics,
    targets,
)

REPO = Path(__file__).parents[2]
DEFAULT = (REPO / "config" / "retention.yaml").read_text()
DAY_MS = 86_400_000
NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def _policy(tmp_path: Path, text: str = DEFAULT) -> RetentionPolicy:
    path = tmp_path / "retention.yaml"
    path.write_text(text)
    return load_policy(path)


# ---------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("text", "days"),
    [("P6M", 181), ("P1Y", 365), ("P1M", 28), ("P90D", 90), ("P1M1D", 29), ("PT12H", 0.5)],
)
def test_the_shortest_span_of_a_duration(text: str, days: float) -> None:
    assert shortest_span(parse_duration(text)) == timedelta(days=days)


def test_dead_letter_retention_defaults_to_seven_days(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    for category in policy.categories.values():
        assert category.dead_letter_retention == timedelta(days=7)
    assert policy.category("cdr").topic_retention == timedelta(days=181)
    # The shortest of the category's retention and its tenant overrides (P90D, P1Y).
    assert policy.category("call_recordings").topic_retention == timedelta(days=90)


def test_dead_letter_retention_is_configurable(tmp_path: Path) -> None:
    text = DEFAULT.replace(
        "    retention: P6M\n", "    retention: P6M\n    dead_letter_retention: P30D\n", 1
    )
    assert _policy(tmp_path, text).category("cdr").dead_letter_retention == timedelta(days=30)


def test_a_dead_letter_retention_longer_than_the_category_is_refused(tmp_path: Path) -> None:
    text = DEFAULT.replace(
        "    retention: P90D\n", "    retention: P90D\n    dead_letter_retention: P91D\n", 1
    )
    with pytest.raises(PolicyError, match=r"line \d+.*call_recordings\.dead_letter_retention"):
        _policy(tmp_path, text)


def test_the_default_is_capped_at_a_shorter_retention(tmp_path: Path) -> None:
    text = DEFAULT.replace("    retention: P1Y\n", "    retention: P3D\n", 1)
    assert _policy(tmp_path, text).category("cookie_stats").dead_letter_retention == timedelta(
        days=3
    )


# ---------------------------------------------------------------------- verdict

TARGET = TopicTarget("telecom.cdr.dlq", "cdr", DEAD_LETTER, timedelta(days=7))


def test_a_topic_within_policy_is_no_finding() -> None:
    result = assess(TARGET, TopicConfig(7 * DAY_MS, -1, "delete"))
    assert not result.finding and result.excess_seconds == 0 and result.changes == {}
    assert not assess(TARGET, TopicConfig(DAY_MS, 10**9, "delete")).finding


def test_a_longer_retention_is_a_finding_by_its_excess() -> None:
    result = assess(TARGET, TopicConfig(9 * DAY_MS, -1, "delete"))
    assert result.finding
    assert result.excess_seconds == 2 * 86400
    assert result.changes == {"retention.ms": str(7 * DAY_MS)}


def test_unbounded_retention_counts_as_the_allowed_span() -> None:
    result = assess(TARGET, TopicConfig(-1, 10**9, "delete"))
    assert result.finding and result.excess_seconds == 7 * 86400
    assert result.changes == {"retention.ms": str(7 * DAY_MS)}


@pytest.mark.parametrize("cleanup", ["compact", "compact,delete", "delete, compact"])
def test_compaction_is_a_finding(cleanup: str) -> None:
    result = assess(TARGET, TopicConfig(DAY_MS, -1, cleanup))
    assert result.finding and result.excess_seconds == 7 * 86400
    assert result.changes == {"cleanup.policy": "delete"}


def test_a_missing_topic_keeps_nothing() -> None:
    result = assess(TARGET, None)
    assert not result.finding and not result.exists and result.as_dict()["exists"] is False


def test_check_exports_a_gauge_for_every_topic(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    names = [t.topic for t in targets(policy)]
    assert len(names) == 8
    assert {t.kind for t in targets(policy)} == {SOURCE, DEAD_LETTER}
    registry = CollectorRegistry()
    metrics = Metrics(registry, policy.categories, retention_topics=names)
    gauge = "purger_topic_retention_excess_seconds"
    assert registry.get_sample_value(gauge, {"topic": "telecom.cdr.dlq"}) == 0

    def describe(topics: list[str]) -> dict[str, TopicConfig | None]:
        out: dict[str, TopicConfig | None] = dict.fromkeys(
            topics, TopicConfig(DAY_MS, -1, "delete")
        )
        out["telecom.cdr.dlq"] = TopicConfig(-1, -1, "delete")
        out["web.cookie-stats.dlq"] = None
        return out

    checks = check_topics(policy, describe, metrics)
    assert [c.target.topic for c in checks if c.finding] == ["telecom.cdr.dlq"]
    assert registry.get_sample_value(gauge, {"topic": "telecom.cdr.dlq"}) == 7 * 86400
    assert registry.get_sample_value(gauge, {"topic": "telecom.cdr"}) == 0


# ---------------------------------------------------------------------- expired poison


def _msg(body: Any, offset: int = 0) -> SimpleNamespace:
    value = body if isinstance(body, bytes) else json.dumps(body).encode()
    return SimpleNamespace(
        topic="telecom.cdr", partition=0, offset=offset, key=None, value=value, headers=[]
    )


def _body(occurred: datetime, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "record_id": "r1",
        "occurred_at": occurred.isoformat(),
        "tenant": "t1",
        "subjects": {"msisdn": "not a number"},
    }
    body.update(fields)
    return body


def test_an_expired_poison_message_is_counted_not_dead_lettered(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    decoder = BatchDecoder(
        policy.by_topic(), future_tolerance=timedelta(days=1), default_country_code=31
    )
    old = NOW - timedelta(days=200)
    recent = NOW - timedelta(days=2)
    polled = {
        TopicPartition("telecom.cdr", 0): [
            _msg(_body(old), 0),  # invalid identifier, expired: counted
            _msg(_body(old, subjects="x"), 1),  # invalid field, expired: counted
            _msg(_body(recent), 2),  # invalid identifier, not expired: dead letter
            _msg(_body(old, tenant=""), 3),  # no tenant: no expiry, dead letter
        ]
    }
    decoded = decoder.decode(polled, NOW)
    assert decoded.expired == {"cdr": 2}
    assert [letter.source_offset for letter in decoded.letters] == [2, 3]
    assert decoded.last == {TopicPartition("telecom.cdr", 0): 3}


def test_the_lenient_expiry_reads_only_a_valid_timestamp_and_tenant(tmp_path: Path) -> None:
    cdr = _policy(tmp_path).category("cdr")
    old = NOW - timedelta(days=200)
    assert lenient_expiry(cdr, json.dumps(_body(old)).encode()) == cdr.expires_at("t1", old)
    assert lenient_expiry(cdr, None) is None
    assert lenient_expiry(cdr, b"{not json") is None
    assert lenient_expiry(cdr, b"[1, 2]") is None
    assert lenient_expiry(cdr, json.dumps(_body(old, occurred_at="yesterday")).encode()) is None
    naive = _body(old, occurred_at="2026-01-01T00:00:00")
    assert lenient_expiry(cdr, json.dumps(naive).encode()) is None
    # A repeated key has no one value.
    dup = (
        b'{"occurred_at": "2020-01-01T00:00:00Z", '
        b'"occurred_at": "2020-01-02T00:00:00Z", "tenant": "t"}'
    )
    assert lenient_expiry(cdr, dup) is None
    # A payload broken elsewhere (not UTF-8 outside the two fields) still has an expiry.
    broken = b'{"occurred_at": "2020-01-01T00:00:00Z", "tenant": "t", "x": "\xff"}'
    assert lenient_expiry(cdr, broken) is not None
