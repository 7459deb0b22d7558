"""One soak run's own database, topics, consumer group, policy file and logs.

The database gets one addition the purger knows nothing about: an insert witness. A row
trigger on every category table and held table writes each inserted record (with its source
offset and the clock of the insert) to ``soak.witness``, in the inserting transaction. A
partition drop or a DELETE fires nothing, so the witness keeps every record that was ever
stored; the checker compares it with what is left and with the audit trail.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from psycopg import sql

from harness import kafka_cleanup
from harness.run_policy import write_run_policy
from purger.partitions import held_table, parent_table
from purger.policy import RetentionPolicy, load_policy
from soak.config import SoakConfig, SoakError

log = logging.getLogger("soak")

REPO = Path(__file__).resolve().parents[1]

WITNESS_DDL = """
CREATE SCHEMA soak;
CREATE TABLE soak.witness (
    category         text NOT NULL,
    storage          text NOT NULL,
    record_id        text NOT NULL,
    expires_at       timestamptz NOT NULL,
    ingested_at      timestamptz,
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    at               timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION soak.witness() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO soak.witness (category, storage, record_id, expires_at, ingested_at,
                              source_topic, source_partition, source_offset)
    VALUES (TG_ARGV[0], TG_ARGV[1], NEW.record_id, NEW.expires_at, NEW.ingested_at,
            NEW.source_topic, NEW.source_partition, NEW.source_offset);
    RETURN NULL;
END;
$$;
"""


class Workspace:
    """Names everything after the run id and removes it all in ``close``."""

    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.run_id = uuid.uuid4().hex[:8]
        self.dir = Path(tempfile.mkdtemp(prefix=f"soak-{self.run_id}-"))
        self.db_name = f"purger_soak_{self.run_id}"
        self.group = f"soak.{self.run_id}"
        self.policy_file = write_run_policy(self.dir, f"soak.{self.run_id}")
        self.policy: RetentionPolicy = load_policy(self.policy_file)
        self.database_created = False
        self.topics: list[str] = []

    # -- names and environment -------------------------------------------------------------
    def database_url(self, name: str | None = None) -> str:
        """The URL of this run's database (or of ``name``) on the configured server."""
        parts = urlsplit(self.config.database_url)
        return urlunsplit(parts._replace(path=f"/{name or self.db_name}"))

    def purger_env(self, client: str = "soak") -> dict[str, str]:
        """The PURGER_* variables of every purger process of the run."""
        return {
            "PURGER_DATABASE_URL": self.database_url(),
            "PURGER_KAFKA_BOOTSTRAP_SERVERS": self.config.kafka_bootstrap,
            "PURGER_KAFKA_GROUP_ID": self.group,
            "PURGER_KAFKA_CLIENT_ID": f"soak-{self.run_id}-{client}",
            "PURGER_POLICY_FILE": str(self.policy_file),
            "PURGER_PARTITION_GRANULARITY": self.config.partition_granularity,
            "PURGER_HTTP_PORT": "0",
            "PURGER_POLL_TIMEOUT_MS": "200",
            "PURGER_BATCH_MAX_RECORDS": "500",
            "PURGER_DB_RETRY_MAX_BACKOFF_SECONDS": "1",
            "PURGER_LOCK_TIMEOUT_MS": "2000",
            "PURGER_LAG_REFRESH_SECONDS": "5",
            "PURGER_LOG_FORMAT": "text",
            "PURGER_LOG_LEVEL": "INFO",
        }

    def child_env(self, client: str = "soak") -> dict[str, str]:
        """This process's environment without foreign PURGER_* settings, plus the run's own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PURGER_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(self.purger_env(client))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # -- database ---------------------------------------------------------------------------
    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.config.database_url, autocommit=True, connect_timeout=10)

    def create_database(self) -> None:
        """Create and migrate (with ``purger migrate``) the run's database; add the witness."""
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db_name)))
        self.database_created = True
        done = subprocess.run(
            [sys.executable, "-m", "purger.cli", "migrate"],
            env=self.child_env("migrate"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise SoakError(f"purger migrate failed ({done.returncode}): {done.stderr[-2000:]}")
        with psycopg.connect(self.database_url(), autocommit=True) as conn, conn.transaction():
            conn.execute(WITNESS_DDL)
            for name in self.policy.categories:
                for storage, table in (("records", parent_table(name)), ("held", held_table(name))):
                    conn.execute(
                        sql.SQL(
                            "CREATE TRIGGER soak_witness AFTER INSERT ON purger.{} "
                            "FOR EACH ROW EXECUTE FUNCTION soak.witness({}, {})"
                        ).format(sql.Identifier(table), sql.Literal(name), sql.Literal(storage))
                    )

    # -- Kafka ------------------------------------------------------------------------------
    def kafka_admin(self) -> KafkaAdminClient:
        """An admin client of the run."""
        return KafkaAdminClient(
            bootstrap_servers=self.config.kafka_bootstrap.split(","),
            client_id=f"soak-{self.run_id}-admin",
            request_timeout_ms=30000,
        )

    def source_topics(self) -> list[str]:
        """The four category topics."""
        return [c.topic for c in self.policy.categories.values()]

    def dead_letter_topics(self) -> list[str]:
        """The four dead-letter topics."""
        return [c.dead_letter_topic for c in self.policy.categories.values()]

    def create_topics(self) -> None:
        """The category and dead-letter topics, ``topic_partitions`` partitions each."""
        names = self.source_topics() + self.dead_letter_topics()
        kafka_cleanup.create_topics(
            self.kafka_admin, names, self.config.topic_partitions, self.topics
        )

    # -- cleanup ----------------------------------------------------------------------------
    def close(self, *, keep_logs: bool) -> list[str]:
        """Drop the database, topics and group (unless SOAK_KEEP); problems, if any."""
        if self.config.keep:
            return []
        problems: list[str] = []
        if self.database_created:
            try:
                with self._admin() as conn:
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(self.db_name)
                        )
                    )
                self.database_created = False
            except psycopg.Error as exc:
                problems.append(f"database {self.db_name}: {exc.__class__.__name__}: {exc}")
        if self.topics:
            problems += kafka_cleanup.with_admin(self.kafka_admin, self._delete_kafka)
        if not keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems

    def _delete_kafka(self, admin: KafkaAdminClient) -> list[str]:
        problems: list[str] = []
        # A member killed without leaving keeps the group non-empty until its session times
        # out (45 s): ask again until then.
        deadline = time.monotonic() + 60
        while True:
            try:
                outcome = str(dict(admin.delete_groups([self.group])).get(self.group, "OK"))
            except KafkaError as exc:
                outcome = exc.__class__.__name__
            if outcome in ("OK", "GroupIdNotFoundError"):
                break
            if "NonEmptyGroup" not in outcome or time.monotonic() > deadline:
                problems.append(f"consumer group {self.group}: {outcome}")
                break
            time.sleep(2)  # the broker evicts dead members on its own clock: poll
        problems += kafka_cleanup.delete_topics(admin, self.topics)
        self.topics.clear()
        return problems
