"""Fixtures of the integration tests: the real Kafka and the real PostgreSQL.

The services are found through ``PURGER_TEST_KAFKA_BOOTSTRAP`` and
``PURGER_TEST_DATABASE_URL`` (``make test`` starts them and sets both). Where those
are unset and a Docker engine answers, testcontainers starts both instead. Where
neither is available the run stops with one message: these tests never skip.

Each test gets a fresh database cloned from a migrated template and its own
uniquely named topics (through a policy file of its own), so tests share nothing.
"""

from __future__ import annotations

import gc
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import yaml
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from psycopg import sql

from purger.policy import RetentionPolicy, load_policy
from purger.settings import Settings
from purger.storage import Storage
from tests.integration.support import wait_until

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO / "config" / "retention.yaml"
KAFKA_ENV = "PURGER_TEST_KAFKA_BOOTSTRAP"
DATABASE_ENV = "PURGER_TEST_DATABASE_URL"

HOW_TO = (
    "integration tests need the real Kafka and PostgreSQL: run `make test` (it starts both "
    f"with scripts/services.sh and sets {KAFKA_ENV} and {DATABASE_ENV}), or set those two "
    "variables, or run a Docker engine for testcontainers"
)


@dataclass(frozen=True)
class Services:
    """Where the real services answer."""

    kafka_bootstrap: str
    database_url: str

    def database(self, name: str) -> str:
        """The URL of database ``name`` on the same server."""
        return urlunsplit(urlsplit(self.database_url)._replace(path=f"/{name}"))


def _docker_answers() -> bool:
    # A failed probe leaves the docker client's socket to the garbage collector; its
    # ResourceWarning (an error under filterwarnings) would bury the one clear message.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        client = None
        try:
            import docker  # type: ignore[import-untyped]  # noqa: PLC0415 - only without services

            client = docker.from_env(timeout=3)
            client.ping()
        except Exception:
            return False
        finally:
            if client is not None:
                client.close()
            gc.collect()
    return True


def _wait_for_kafka(bootstrap: str, deadline_seconds: float = 60) -> None:
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        except Exception as exc:
            if time.monotonic() > deadline:
                pytest.exit(f"Kafka at {bootstrap} does not answer ({exc!r}); {HOW_TO}", 3)
            time.sleep(0.5)  # polling a service that is not up yet: nothing to await
            continue
        admin.close()
        return


def _check_database(url: str) -> None:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        host = urlsplit(url).hostname
        pytest.exit(f"PostgreSQL at {host} does not answer ({exc.__class__.__name__}); {HOW_TO}", 3)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The real Kafka and PostgreSQL: from the environment, else testcontainers."""
    kafka = os.environ.get(KAFKA_ENV)
    database = os.environ.get(DATABASE_ENV)
    with ExitStack() as stack:
        if not (kafka and database):
            if not _docker_answers():
                pytest.exit(
                    f"no services: {KAFKA_ENV}/{DATABASE_ENV} unset, no Docker; {HOW_TO}", 3
                )
            from testcontainers.kafka import KafkaContainer  # noqa: PLC0415
            from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

            if not database:
                pg = stack.enter_context(PostgresContainer("postgres:16", driver=None))
                database = pg.get_connection_url()
            if not kafka:
                kc = stack.enter_context(KafkaContainer().with_kraft())
                kafka = kc.get_bootstrap_server()
        _check_database(database)
        _wait_for_kafka(kafka)
        yield Services(kafka_bootstrap=kafka, database_url=database)


@pytest.fixture(scope="session")
def template_database(services: Services) -> Iterator[str]:
    """A migrated database that every test's database is cloned from."""
    name = f"purger_tmpl_{os.getpid()}"
    admin = psycopg.connect(services.database_url, autocommit=True)
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with Storage(services.database(name), load_policy(DEFAULT_POLICY)) as storage:
        storage.migrate(partitions_ahead=0)
    try:
        yield name
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


@contextmanager
def cloned_database(services: Services, template: str, prefix: str = "purger_t") -> Iterator[str]:
    """A database of its own, cloned from the migrated template, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(services.database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
        try:
            yield services.database(name)
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def database(services: Services, template_database: str) -> Iterator[str]:
    """The URL of a fresh, migrated database of this test's own."""
    with cloned_database(services, template_database) as url:
        yield url


@pytest.fixture
def run_id() -> str:
    """A short id unique to this test, used in topic and group names."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def policy_file(tmp_path: Path, run_id: str) -> Path:
    """The default policy with topics of this test's own."""
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    for category in data["categories"].values():
        category["topic"] = f"t{run_id}.{category['topic']}"
    path = tmp_path / "retention.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def policy(policy_file: Path) -> RetentionPolicy:
    """The loaded policy of this test."""
    return load_policy(policy_file)


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(
    services: Services, database: str, policy_file: Path, run_id: str
) -> SettingsFactory:
    """``make_settings(**overrides)``: settings pointing at this test's database and topics."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database,
            "kafka_bootstrap_servers": services.kafka_bootstrap,
            "kafka_group_id": f"purger-{run_id}",
            "policy_file": policy_file,
            "http_port": 0,
            "poll_timeout_ms": 200,
            "db_retry_max_backoff_seconds": 1.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    """Default settings of this test."""
    return make_settings()


@pytest.fixture
def topics(services: Services, policy: RetentionPolicy) -> Iterator[dict[str, str]]:
    """Create this test's category and dead-letter topics (4 partitions each).

    Returns category name -> topic; deletes them afterwards.
    """
    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap, request_timeout_ms=30000)
    names = [t for c in policy.categories.values() for t in (c.topic, c.dead_letter_topic)]
    admin.create_topics([NewTopic(t, 4, 1) for t in names])
    try:
        # Created is not yet served: until every partition has a leader the broker answers
        # UNKNOWN_TOPIC_OR_PARTITION, and a test's first produce is retried on
        # NotLeaderForPartition.
        wait_until(lambda: _have_leaders(admin, names), what="leaders of the test's topics")
        yield {name: c.topic for name, c in policy.categories.items()}
    finally:
        try:
            admin.delete_topics(names)
        finally:
            admin.close()


def _have_leaders(admin: KafkaAdminClient, names: list[str]) -> bool:
    """True when every partition of every topic in ``names`` has a leader."""
    described = admin.describe_topics(names)
    return len(described) == len(names) and all(
        t["error_code"] == 0
        and len(t["partitions"]) == 4
        and all(p["error_code"] == 0 and p["leader_id"] >= 0 for p in t["partitions"])
        for t in described
    )


@pytest.fixture
def members(topics: dict[str, str]) -> Iterator[list[KafkaConsumer]]:
    """Consumers a test makes by hand (group members), closed without a commit after it.

    ``topics`` first: the members' topics exist before they subscribe, and are deleted
    only after the members are closed.
    """
    made: list[KafkaConsumer] = []
    yield made
    for consumer in made:
        consumer.close(autocommit=False)


@pytest.fixture
def producer(services: Services) -> Iterator[KafkaProducer]:
    """A producer that waits for every acknowledgement."""
    p = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all", linger_ms=5)
    try:
        yield p
    finally:
        p.close()
