"""One run's own databases, topics, consumer groups and policy file, removed at the end."""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from psycopg import sql

from benchmarks.config import BenchConfig
from harness import kafka_cleanup
from harness.run_policy import write_run_policy
from purger.policy import RetentionPolicy, load_policy
from purger.storage import Storage

log = logging.getLogger("benchmarks")

REPO = Path(__file__).resolve().parents[1]


class Workspace:
    """Names everything after the run id and remembers it for ``close``."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.run_id = uuid.uuid4().hex[:8]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.run_id}-"))
        self.databases: list[str] = []
        self.topics: list[str] = []
        self.groups: list[str] = []
        self.policy_file = write_run_policy(self.tmp, f"bench.{self.run_id}")
        self.policy: RetentionPolicy = load_policy(self.policy_file)

    # -- names -------------------------------------------------------------------------
    def db_name(self, label: str) -> str:
        """``bench_<run>_<label>``."""
        return f"bench_{self.run_id}_{label}"

    def group(self, label: str) -> str:
        """A consumer group of this run, remembered for deletion."""
        name = f"bench.{self.run_id}.{label}"
        self.groups.append(name)
        return name

    # -- databases -----------------------------------------------------------------------
    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.config.database_url("postgres"), autocommit=True)

    def create_database(self, label: str, *, migrate: bool = True) -> str:
        """A fresh database (migrated with the project's own ``Storage.migrate``); its URL."""
        name = self.db_name(label)
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.databases.append(name)
        url = self.config.database_url(name)
        if migrate:
            with Storage(url, self.policy, application="bench-migrate") as storage:
                storage.migrate()
        return url

    def clone_database(self, source_label: str, label: str) -> str:
        """A file-level copy of another database of this run (nobody may be connected to it)."""
        name = self.db_name(label)
        log.info("copying database %s to %s", source_label, label)
        with self._admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(self.db_name(source_label))
                )
            )
        self.databases.append(name)
        return self.config.database_url(name)

    def drop_database(self, label: str) -> None:
        """Drop one database of this run now (frees its disk early)."""
        self._drop(self.db_name(label))

    def _drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        if name in self.databases:
            self.databases.remove(name)

    # -- topics ----------------------------------------------------------------------------
    def _kafka_admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(
            bootstrap_servers=self.config.kafka_bootstrap.split(","),
            client_id=f"bench-{self.run_id}",
            request_timeout_ms=30000,
        )

    def create_topics(self) -> list[str]:
        """The category topics and their dead-letter topics, ``topic_partitions`` each."""
        names: list[str] = []
        for category in self.policy.categories.values():
            names += [category.topic, category.dead_letter_topic]
        kafka_cleanup.create_topics(
            self._kafka_admin, names, self.config.topic_partitions, self.topics
        )
        return names

    def create_extra_topics(self, names: list[str]) -> None:
        """More topics of this run (``topic_partitions`` each), removed at the end."""
        kafka_cleanup.create_topics(
            self._kafka_admin, names, self.config.topic_partitions, self.topics
        )

    # -- cleanup ---------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Drop every database, topic and consumer group of the run; problems, if any."""
        problems: list[str] = []
        for name in list(self.databases):
            try:
                self._drop(name)
            except psycopg.Error as exc:
                problems.append(f"database {name}: {exc.__class__.__name__}")
        if self.topics or self.groups:
            problems += kafka_cleanup.with_admin(self._kafka_admin, self._delete_kafka)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems

    def _delete_kafka(self, admin: KafkaAdminClient) -> list[str]:
        problems: list[str] = []
        if self.groups:
            try:
                for group, outcome in dict(admin.delete_groups(self.groups)).items():
                    if outcome not in ("OK", "GroupIdNotFoundError"):
                        problems.append(f"consumer group {group}: {outcome}")
            except KafkaError as exc:
                problems.append(f"consumer groups: {exc.__class__.__name__}")
        self.groups.clear()
        if self.topics:
            problems += kafka_cleanup.delete_topics(admin, self.topics)
        self.topics.clear()
        return problems
