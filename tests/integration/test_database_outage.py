"""A PostgreSQL restart in the middle of ingestion loses nothing.

The restart must not disturb the other tests, so this one runs its own PostgreSQL
server (the same Debian binaries as the shared one) in a temporary directory.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from consumers.service import consume
from purger.policy import RetentionPolicy
from purger.settings import Settings
from purger.storage import Storage
from tests.integration.support import (
    committed_offsets,
    count_rows,
    free_port,
    ingest_metrics,
    wait_until,
)
from tests.integration.test_ingest import message

pytestmark = pytest.mark.integration


def _bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    found = shutil.which("initdb")
    path = Path(candidates[-1]) if candidates else Path(found) if found else None
    if path is None:
        pytest.fail(
            "the PostgreSQL server binaries (initdb, pg_ctl) are missing: "
            "scripts/services.sh up installs them",
            pytrace=False,
        )
    return path.parent


@dataclass
class PrivateServer:
    """A throw-away PostgreSQL server on a port of its own."""

    bindir: Path
    root: Path
    port: int

    @property
    def url(self) -> str:
        """libpq URL of its ``postgres`` database."""
        return f"postgresql://purger@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        # initdb and postgres refuse to run as root: drop to the postgres user.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        """Create the cluster."""
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.root / "data"),
            "-U",
            "purger",
            "-A",
            "trust",
            "--no-sync",
        )

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Stop (fast: open sessions are terminated, as in a real restart)."""
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"
        )


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    """A running private PostgreSQL server, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="purger-pg-"))
    root.chmod(0o777)  # the postgres user writes its socket and log here
    server = PrivateServer(_bindir(), root, free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        subprocess.run(
            [
                *(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []),
                str(server.bindir / "pg_ctl"),
                "-D",
                str(root / "data"),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_a_postgres_restart_during_ingestion_loses_nothing(
    private_server: PrivateServer,
    make_settings: Any,
    policy: RetentionPolicy,
    topics: dict[str, str],
    producer: KafkaProducer,
    services: Any,
) -> None:
    settings: Settings = make_settings(database_url=private_server.url, batch_max_records=100)
    with Storage(settings.conninfo(), policy) as storage:
        storage.migrate()
    total = 3000
    recent = datetime.now(UTC) - timedelta(hours=1)
    for i in range(total):
        producer.send(topics["cdr"], message(f"r{i:05d}", recent), partition=i % 4)
    producer.flush()
    registry = CollectorRegistry()
    metrics = ingest_metrics(policy, registry)
    result: dict[str, Any] = {}
    consumer = threading.Thread(
        target=lambda: result.update(
            consume(settings, policy, metrics, threading.Event(), until_idle=True)
        )
    )

    consumer.start()
    try:
        wait_until(lambda: count_rows(settings.conninfo(), "cdr") > 0, what="a first batch")
        private_server.stop()
        wait_until(
            lambda: (registry.get_sample_value("purger_database_retries_total") or 0) > 0,
            what="the consumer retrying against the stopped database",
        )
        private_server.start()
    finally:
        consumer.join(timeout=180)
    assert not consumer.is_alive()

    assert count_rows(settings.conninfo(), "cdr") == total
    cdr = result["categories"]["cdr"]
    assert cdr["dead_lettered"] == 0
    assert cdr["stored"] + cdr["duplicates"] >= total
    committed = committed_offsets(services.kafka_bootstrap, settings.kafka_group_id, topics["cdr"])
    assert sum(committed.values()) == total
