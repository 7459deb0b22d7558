"""Ingestion from the real Kafka into the real PostgreSQL."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry
from psycopg import sql

from consumers.service import consume
from purger.policy import RetentionPolicy
from purger.settings import Settings
from tests.integration.support import (
    REPO,
    committed_offsets,
    count_rows,
    ingest_metrics,
    purger_cli,
    read_topic,
    settings_env,
    stable_members,
    wait_until,
)
from tests.samples import BAD_REASONS, MESSAGES, recent_bad_sample

pytestmark = pytest.mark.integration


def message(record_id: str, occurred: datetime, **subjects: Any) -> bytes:
    """A valid message value."""
    body = {
        "record_id": record_id,
        "occurred_at": occurred.isoformat(),
        "tenant": "t1",
        "subjects": subjects or {"msisdn": "0612345678", "email": "Jan.Jansen@Example.NL"},
        "call": {"duration_s": 42},
    }
    return json.dumps(body).encode()


def rows(url: str, category: str) -> list[tuple[Any, ...]]:
    """(record_id, tenant, occurred_at, expires_at, subject_keys) of every stored record."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            sql.SQL(
                "SELECT record_id, tenant, occurred_at, expires_at, subject_keys "
                "FROM purger.{} ORDER BY record_id"
            ).format(sql.Identifier(f"records_{category}"))
        ).fetchall()


def test_each_category_is_stored_with_its_expiry(
    settings: Settings, policy: RetentionPolicy, topics: dict[str, str], producer: KafkaProducer
) -> None:
    # The good samples of every category, plus one record per category on the 31st of a
    # month whose expiry month is shorter (clamping) where the retention allows it.
    now = datetime.now(UTC)
    sent: dict[str, list[str]] = {}
    for name, topic in topics.items():
        sample = json.loads((MESSAGES / "good" / f"{name}.json").read_text())
        producer.send(topic, json.dumps(sample).encode())
        clamp = datetime(now.year, 8, 31, 12, tzinfo=UTC)
        if clamp > now or name == "call_recordings":
            clamp = now - timedelta(days=1)
        producer.send(topic, message(f"{name}-clamp", clamp))
        sent[name] = sorted([sample["record_id"], f"{name}-clamp"])
    producer.flush()

    summary = consume(settings, policy, ingest_metrics(policy), threading.Event(), until_idle=True)

    assert {n: c["stored"] for n, c in summary["categories"].items()} == {n: 2 for n in topics}
    for name in topics:
        stored = rows(settings.conninfo(), name)
        assert [r[0] for r in stored] == sent[name]
        for _record_id, tenant, occurred_at, expires_at, _keys in stored:
            assert expires_at == policy.category(name).expires_at(tenant, occurred_at)
    keys = {k for r in rows(settings.conninfo(), "cdr") for k in r[4]}
    # Normalised on ingest: the national number and the mixed-case e-mail.
    assert {"msisdn:+31612345678", "email:jan.jansen@example.nl"} <= keys


def test_tenant_override_sets_a_longer_expiry(
    settings: Settings, policy: RetentionPolicy, topics: dict[str, str], producer: KafkaProducer
) -> None:
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(days=100)
    body = json.loads(message("rec-override", occurred))
    body["tenant"] = "callcenter-noord"
    producer.send(topics["call_recordings"], json.dumps(body).encode())
    producer.send(topics["call_recordings"], message("rec-default", occurred))
    producer.flush()

    summary = consume(settings, policy, ingest_metrics(policy), threading.Event(), until_idle=True)

    counts = summary["categories"]["call_recordings"]
    # 100 days old: past the default 90 days, within the tenant's one year.
    assert (counts["stored"], counts["expired_on_arrival"]) == (1, 1)
    (stored,) = rows(settings.conninfo(), "call_recordings")
    assert stored[0] == "rec-override"
    assert stored[3] == occurred.replace(year=occurred.year + 1)


def test_bad_messages_are_dead_lettered_and_the_partition_keeps_flowing(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    services: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = topics["cdr"]
    bad = sorted(p for p in (MESSAGES / "bad").iterdir())
    assert {p.name for p in bad} == set(BAD_REASONS), "a bad sample without an expected reason"
    recent = datetime.now(UTC) - timedelta(hours=1)
    values = (
        [message("before", recent)]
        + [recent_bad_sample(p, recent) for p in bad]
        + [message("after", recent)]
    )
    for value in values:
        producer.send(topic, value, partition=0)
    producer.flush()
    registry = CollectorRegistry()
    metrics = ingest_metrics(policy, registry)

    with caplog.at_level(logging.DEBUG):
        summary = consume(settings, policy, metrics, threading.Event(), until_idle=True)

    cdr = summary["categories"]["cdr"]
    assert cdr["stored"] == 2
    assert cdr["dead_lettered"] == len(bad)
    assert [r[0] for r in rows(settings.conninfo(), "cdr")] == ["after", "before"]
    letters = read_topic(
        services.kafka_bootstrap, policy.category("cdr").dead_letter_topic, len(bad)
    )
    assert len(letters) == len(bad)
    by_offset = {}
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers["purger.source.topic"] == topic
        assert headers["purger.source.partition"] == "0"
        assert headers["purger.category"] == "cdr"
        by_offset[int(headers["purger.source.offset"])] = (headers["purger.reason"], letter.value)
    # Offsets 1..len(bad) are the bad samples, in order; each keeps its original bytes.
    for offset, path in enumerate(bad, start=1):
        reason, value = by_offset[offset]
        assert reason == BAD_REASONS[path.name], path.name
        assert value == recent_bad_sample(path, recent)
        sample = f'purger_records_dead_lettered_total{{category="cdr",reason="{reason}"}}'
        assert registry.get_sample_value(
            "purger_records_dead_lettered_total", {"category": "cdr", "reason": reason}
        ) == sum(1 for r in BAD_REASONS.values() if r == reason), sample
    # The partition flowed past every bad message: everything is committed.
    assert committed_offsets(services.kafka_bootstrap, settings.kafka_group_id, topic)[0] == len(
        values
    )
    # No personal data of the payloads in any log line of ours (kafka-python's own
    # DEBUG output is silenced by purger.logs outside DEBUG level).
    ours = "\n".join(
        f"{r.getMessage()} {r.__dict__}" for r in caplog.records if r.name.startswith("purger")
    ).lower()
    assert "dead-lettered" in ours
    for secret in ("+31612345678", "0612345678", "jan.jansen", "not-a-number", "cdr-x"):
        assert secret not in ours


def test_expired_on_arrival_is_counted_not_stored(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    services: Any,
) -> None:
    now = datetime.now(UTC)
    producer.send(topics["cdr"], message("old", now - timedelta(days=200)), partition=1)
    producer.send(topics["cdr"], message("fresh", now - timedelta(days=2)), partition=1)
    producer.flush()
    registry = CollectorRegistry()
    metrics = ingest_metrics(policy, registry)

    summary = consume(settings, policy, metrics, threading.Event(), until_idle=True)

    cdr = summary["categories"]["cdr"]
    assert (cdr["stored"], cdr["expired_on_arrival"], cdr["dead_lettered"]) == (1, 1, 0)
    assert [r[0] for r in rows(settings.conninfo(), "cdr")] == ["fresh"]
    labels = {"category": "cdr", "reason": "expired_on_arrival"}
    assert registry.get_sample_value("purger_records_rejected_total", labels) == 1
    assert committed_offsets(services.kafka_bootstrap, settings.kafka_group_id, topics["cdr"]) == {
        1: 2
    }


def test_a_batch_redelivered_after_sigkill_is_stored_once(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    services: Any,
) -> None:
    recent = datetime.now(UTC) - timedelta(hours=1)
    total = 200
    for i in range(total):
        producer.send(topics["cdr"], message(f"r{i:04d}", recent), partition=i % 4)
    producer.flush()
    env = settings_env(settings)

    crashed = subprocess.run(
        [sys.executable, "-m", "tests.integration.crash_worker"],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    stored_before = count_rows(settings.conninfo(), "cdr")
    assert stored_before > 0, "the crash came before the database commit"
    assert committed_offsets(services.kafka_bootstrap, settings.kafka_group_id, topics["cdr"]) == {}

    summary = consume(settings, policy, ingest_metrics(policy), threading.Event(), until_idle=True)

    cdr = summary["categories"]["cdr"]
    # Kafka redelivered the stored batch; the database kept one row per record.
    assert cdr["duplicates"] == stored_before
    assert cdr["stored"] == total - stored_before
    assert count_rows(settings.conninfo(), "cdr") == total


def test_two_workers_share_the_partitions_and_store_each_record_once(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    services: Any,
) -> None:
    stop = threading.Event()
    result: dict[str, Any] = {}

    def run() -> None:
        result.update(consume(settings, policy, ingest_metrics(policy), stop, workers=2))

    consumer = threading.Thread(target=run)
    consumer.start()
    try:
        # Both members in a stable group before the traffic starts: each owns half.
        wait_until(
            lambda: stable_members(services.kafka_bootstrap, settings.kafka_group_id) == 2,
            what="a stable group of two workers",
        )
        recent = datetime.now(UTC) - timedelta(hours=1)
        per_category = 500
        for name, topic in topics.items():
            for i in range(per_category):
                producer.send(topic, message(f"{name}-{i:05d}", recent), partition=i % 4)
        producer.flush()
        wait_until(
            lambda: all(count_rows(settings.conninfo(), n) == per_category for n in topics),
            what="every record stored",
        )
    finally:
        stop.set()
        consumer.join(timeout=60)
    assert not consumer.is_alive()

    assert result["errors"] == []
    assert len(result["workers"]) == 2
    assert all(w["messages"] > 0 for w in result["workers"]), result["workers"]
    for name in topics:
        assert count_rows(settings.conninfo(), name) == per_category
        assert result["categories"][name]["stored"] == per_category
        assert result["categories"][name]["duplicates"] == 0


def test_sigterm_finishes_the_batch_and_commits(
    settings: Settings, topics: dict[str, str], producer: KafkaProducer, services: Any
) -> None:
    recent = datetime.now(UTC) - timedelta(hours=1)
    for i in range(300):
        producer.send(topics["interception"], message(f"i{i:04d}", recent), partition=i % 4)
    producer.flush()
    env = {**os.environ, **settings_env(settings), "PURGER_BATCH_MAX_RECORDS": "50"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "purger.cli", "consume", "--json"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: count_rows(settings.conninfo(), "interception") > 0,
            what="the first stored batch",
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    stored = count_rows(settings.conninfo(), "interception")
    committed = committed_offsets(
        services.kafka_bootstrap, settings.kafka_group_id, topics["interception"]
    )
    # Whatever the database holds is committed, and nothing beyond it.
    assert sum(committed.values()) == stored
    assert json.loads(out)["categories"]["interception"]["stored"] == stored


def test_stats_reports_each_category(
    settings: Settings, policy: RetentionPolicy, topics: dict[str, str], producer: KafkaProducer
) -> None:
    recent = datetime.now(UTC) - timedelta(hours=1)
    producer.send(topics["cookie_stats"], message("c1", recent))
    producer.send(topics["cookie_stats"], message("c2", recent - timedelta(days=3)))
    producer.flush()
    consume(settings, policy, ingest_metrics(policy), threading.Event(), until_idle=True)

    result = purger_cli("stats", "--json", env=settings_env(settings))

    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    cookie = stats["categories"]["cookie_stats"] if "categories" in stats else stats["cookie_stats"]
    assert cookie["records"] == 2
    assert cookie["partitions"] >= 2
    expiry = policy.category("cookie_stats").expires_at("t1", recent - timedelta(days=3))
    assert datetime.fromisoformat(cookie["oldest_expiry"]) == expiry


def test_config_error_names_the_file_and_line(tmp_path: Path, settings: Settings) -> None:
    config = tmp_path / "purger.yaml"
    config.write_text("log_level: INFO\nbatch_max_records: many\n")

    result = purger_cli("--config", str(config), "stats", env={})

    assert result.returncode == 2
    assert f"{config}, line 2, key batch_max_records" in result.stderr
    assert "Traceback" not in result.stderr
