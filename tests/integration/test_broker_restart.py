"""A Kafka broker restart while `purger run --no-scheduler` consumes is waited out.

Before the error policy, the offset commit raised KafkaConnectionError out of the
worker and the service exited with a traceback. The broker restarted here is the
shared one (`scripts/services.sh restart kafka` returns once it answers again);
the tests run one at a time, so no other test sees it away.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from purger.policy import RetentionPolicy
from purger.settings import Settings
from tests.integration.support import (
    REPO,
    committed_offsets,
    count_rows,
    settings_env,
    wait_until,
)
from tests.integration.test_ingest import message

pytestmark = pytest.mark.integration


def _restart_kafka() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "services.sh"), "restart", "kafka"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _produce(bootstrap: str, topic: str, prefix: str, n: int) -> None:
    # A producer of its own: it starts after the restart with fresh connections.
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=10)
    try:
        recent = datetime.now(UTC) - timedelta(hours=1)
        for i in range(n):
            producer.send(topic, message(f"{prefix}{i:04d}", recent), partition=i % 4)
        producer.flush(60)
    finally:
        producer.close()


@pytest.fixture
def quiet_topics(services: Any, policy: RetentionPolicy) -> Iterator[dict[str, str]]:
    """This test's topics, made and removed by admin clients that are closed meanwhile.

    A client left open across the restart reconnects in kafka-python's network thread
    and leaves the sockets of refused attempts to the garbage collector, whose
    ResourceWarning would surface at the end of the session.
    """
    names = [t for c in policy.categories.values() for t in (c.topic, c.dead_letter_topic)]
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap, request_timeout_ms=30000)
    try:
        admin.create_topics([NewTopic(t, 4, 1) for t in names])
    finally:
        admin.close()
    yield {name: c.topic for name, c in policy.categories.items()}
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap, request_timeout_ms=30000)
    try:
        admin.delete_topics(names)
    finally:
        admin.close()


def test_a_broker_restart_is_waited_out_and_loses_nothing(
    settings: Settings, quiet_topics: dict[str, str], services: Any
) -> None:
    topic = quiet_topics["cdr"]
    env = {**os.environ, **settings_env(settings)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "purger.cli", "run", "--no-scheduler"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = settings.conninfo()

    def committed() -> int:
        try:
            return sum(
                committed_offsets(services.kafka_bootstrap, settings.kafka_group_id, topic).values()
            )
        except Exception:  # the broker is away: nothing to read yet
            return -1

    try:
        _produce(services.kafka_bootstrap, topic, "before", 100)
        wait_until(lambda: committed() == 100, timeout=120, what="100 records committed")

        _restart_kafka()
        assert proc.poll() is None, "the service died with the broker"
        _produce(services.kafka_bootstrap, topic, "after", 100)

        wait_until(lambda: count_rows(url, "cdr") == 200, timeout=180, what="200 rows stored")
        wait_until(lambda: committed() == 200, timeout=180, what="200 records committed")
        assert proc.poll() is None, "the service died after the broker came back"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
