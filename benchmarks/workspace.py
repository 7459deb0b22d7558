"""One run's own databases, topics, consumer groups and policy file, removed at the end."""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
import yaml
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from psycopg import sql

from benchmarks.config import BenchConfig
from purger.policy import RetentionPolicy, load_policy
from purger.storage import Storage

log = logging.getLogger("benchmarks")

REPO = Path(__file__).resolve().parents[1]
POLICY_TEMPLATE = REPO / "config" / "retention.yaml"


class Workspace:
    """Names everything after the run id and remembers it for ``close``."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.run_id = uuid.uuid4().hex[:8]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.run_id}-"))
        self.databases: list[str] = []
        self.topics: list[str] = []
        self.groups: list[str] = []
        self.policy_file = self._write_policy()
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

    def _write_policy(self) -> Path:
        # The project's policy with every topic renamed into this run's namespace.
        data: dict[str, Any] = yaml.safe_load(POLICY_TEMPLATE.read_text(encoding="utf-8"))
        for category in data["categories"].values():
            category["topic"] = f"bench.{self.run_id}.{category['topic']}"
        path = self.tmp / "retention.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

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
            with Storage(url, self.policy, role="bench-migrate") as storage:
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
        spec = {"num_partitions": self.config.topic_partitions, "replication_factor": 1}
        admin = self._kafka_admin()
        try:
            self.topics += names
            admin.create_topics({name: dict(spec) for name in names}, wait_for_metadata=True)
            admin.wait_for_topics(names, timeout_ms=30000)
        finally:
            admin.close()
        return names

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
            try:
                admin = self._kafka_admin()
            except KafkaError as exc:
                problems.append(f"kafka admin: {exc.__class__.__name__}")
            else:
                try:
                    problems += self._delete_kafka(admin)
                finally:
                    admin.close()
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
            try:
                response = admin.delete_topics(self.topics, timeout_ms=30000, raise_errors=False)
            except KafkaError as exc:
                problems.append(f"topics: {exc.__class__.__name__}")
            else:
                for topic in response.get("topics", []):
                    # 3: UNKNOWN_TOPIC_OR_PARTITION, already gone.
                    if topic.get("error_code") not in (0, 3):
                        problems.append(f"topic {topic.get('name')}: {topic.get('error_message')}")
        self.topics.clear()
        return problems
