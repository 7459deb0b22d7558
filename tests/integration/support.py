"""Helpers of the integration tests: read topics, await conditions, run the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry
from psycopg import sql

from consumers.kafka_config import consumer_options
from purger.metrics import Metrics
from purger.policy import RetentionPolicy
from purger.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 60) -> list[Any]:
    """Every message of ``topic`` once at least ``expected`` are there (or the timeout passed)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=1000
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
        return out
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (missing: nothing committed)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {
        tp.partition: om.offset
        for tp, om in offsets.items()
        if tp.topic == topic and om.offset >= 0
    }


def wait_until(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)  # the condition is external state; polling is the only wait


def purger_cli(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m purger.cli ARGS`` with ``env`` added; never raises on exit codes."""
    return subprocess.run(
        [sys.executable, "-m", "purger.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The PURGER_* variables that reproduce ``settings`` in a child process."""
    env = {}
    for name in (
        "kafka_bootstrap_servers",
        "kafka_group_id",
        "policy_file",
        "http_port",
        "poll_timeout_ms",
        "db_retry_max_backoff_seconds",
        "purge_schedule",
        "batch_max_records",
        "lock_timeout_ms",
        "log_format",
        "log_level",
    ):
        env[f"PURGER_{name.upper()}"] = str(getattr(settings, name))
    env["PURGER_DATABASE_URL"] = settings.conninfo()
    return env


def count_rows(url: str, category: str) -> int:
    """Rows stored for ``category``."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM purger.{}").format(sql.Identifier(f"records_{category}"))
        ).fetchone()
    assert row is not None
    return int(row[0])


def stable_members(bootstrap: str, group: str) -> int:
    """How many members the group has once it is stable (0 while it rebalances)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_groups([group]).get(group) or {}
    finally:
        admin.close()
    if str(described.get("group_state", "")).lower() != "stable":
        return 0
    return len(described.get("members") or [])


def ingest_metrics(policy: RetentionPolicy, registry: CollectorRegistry | None = None) -> Metrics:
    """Metrics of every category and topic of ``policy`` on ``registry`` (else a private one)."""
    return Metrics(
        registry or CollectorRegistry(),
        list(policy.categories),
        [c.topic for c in policy.categories.values()],
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; (0, "") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@contextmanager
def running_purger(
    settings: Settings,
    *args: str,
    env: dict[str, str] | None = None,
    stop: Callable[[subprocess.Popen[str]], None] = _kill,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`purger run ARGS` on a free HTTP port, once /readyz answers 200: its base URL and process.

    ``stop`` ends it afterwards (by default: SIGKILL if it still runs).
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "purger.cli", "run", *args],
        env={**os.environ, **settings_env(settings), "PURGER_HTTP_PORT": str(port), **(env or {})},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: proc.poll() is not None or http_get(f"{base}/readyz")[0] == 200,
            what="/readyz to answer 200",
        )
        assert proc.poll() is None, proc.communicate()[1]
        yield base, proc
    finally:
        stop(proc)


def second_member(
    settings: Settings, topic: str, first: KafkaConsumer, members: list[KafkaConsumer]
) -> KafkaConsumer:
    """A second member of ``first``'s group, returned once both own part of ``topic``.

    Both are polled meanwhile, so that ``first`` runs its rebalance (and listener).
    The new member is appended to ``members`` first, for the caller to close.
    """
    second = KafkaConsumer(**consumer_options(settings))
    members.append(second)
    second.subscribe(topics=[topic])

    def shared() -> bool:
        first.poll(timeout_ms=100)
        second.poll(timeout_ms=100)
        return bool(first.assignment()) and bool(second.assignment())

    wait_until(shared, what="the partitions shared by both members")
    return second
