"""The storage API the consumers use: migrate, store a batch (reads are in purger/stats.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from purger import applied_rules, held_storage, migrations, policy_versions
from purger.applied_rules import AppliedRules
from purger.db import connect, wrap_errors
from purger.errors import (
    DatabaseUnavailable,
    LockTimeout,
    StatementTimeout,
    StorageError,
    SystemicFault,
)
from purger.partitions import (
    PartitionManager,
    ensure_category_table,
    is_missing_partition,
    keys_table,
)
from purger.partitions import parent_table as parent_of
from purger.policy import RetentionPolicy
from purger.queries import query, template
from purger.records import Envelope, Record
from purger.staging_rows import EncodedRows, copy_rows

# Envelope is re-exported: the storage API takes them (it moved to purger.records).
__all__ = ["BatchResult", "Envelope", "Storage"]

log = logging.getLogger("purger.storage")


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What became of a batch: inserted, already stored (redelivery), expired on arrival.

    ``held``: arrived already expired but covered by an active legal hold, so
    stored in held storage (not counted as expired on arrival nor as inserted).
    """

    inserted: int
    duplicates: int
    expired_on_arrival: int
    held: int = 0


class Storage:
    """One connection's worth of storage operations; not thread-safe."""

    def __init__(
        self,
        conninfo: str,
        policy: RetentionPolicy,
        granularity: timedelta = timedelta(days=1),
        application: str = "storage",
    ) -> None:
        self.conninfo = conninfo
        self.policy = policy
        self.partitions = PartitionManager(granularity)
        self.application = application
        self._conn: psycopg.Connection[Any] | None = None
        self._staging: set[str] = set()
        # The applied rules each category's records were last tagged with (None:
        # no version applied yet, the process's own policy tags them).
        self._applied: dict[str, AppliedRules | None] = {}
        # Categories that met a row stored without its key: their inserts are guarded.
        self._guarded: set[str] = set()
        # The rows of the batch being stored, encoded beforehand (store's ``encoded``).
        self._encoded: Mapping[str, EncodedRows] = {}

    # -- connection -------------------------------------------------------------
    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The open connection, (re)connecting when needed."""
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.conninfo, application=self.application)
            self._staging.clear()
        return self._conn

    def reset(self) -> None:
        """Forget the connection (after an outage); the next call reconnects."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self._staging.clear()

    def close(self) -> None:
        """Close the connection."""
        self.reset()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless PostgreSQL answers."""
        with wrap_errors("ping"):
            self.conn.execute("SELECT 1")
            self.conn.rollback()

    # -- schema -----------------------------------------------------------------
    def migrate(
        self,
        partitions_ahead: int = 3,
        now: datetime | None = None,
        runtime_user: str | None = None,
        *,
        applied_by: str = "purger migrate",
        allow_bound_change: bool = False,
    ) -> list[str]:
        """Apply migrations and the policy, create category tables and the partitions needed soon.

        ``runtime_user`` (a login role) is made a member of ``purger_runtime``.
        The policy is applied (purger/policy_versions.py) before any category table
        is created, so a refused policy changes nothing; PolicyError says why.
        """
        applied = migrations.migrate(self.conn)
        if runtime_user:
            migrations.grant_runtime(self.conn, runtime_user)
        policy_versions.apply(
            self.conn, self.policy, applied_by=applied_by, allow_bound_change=allow_bound_change
        )
        self._applied.clear()
        for category in self.policy.categories.values():
            ensure_category_table(self.conn, category)
            self.partitions.ensure_ahead(
                self.conn, category, now or datetime.now(UTC), partitions_ahead
            )
        return [f"{m.version:04d}_{m.name}" for m in applied]

    # -- ingestion --------------------------------------------------------------
    def store_batch(self, category: str, items: Sequence[Envelope]) -> BatchResult:
        """Store the records of one category; see ``store``."""
        return self.store({category: items})[category]

    def store(
        self,
        batch: Mapping[str, Sequence[Envelope]],
        encoded: Mapping[str, EncodedRows] | None = None,
    ) -> dict[str, BatchResult]:
        """Store a polled batch (records by category) in one transaction, idempotently.

        A record whose expiry has passed by the database clock is not stored and
        is counted as expired on arrival, unless an active legal hold covers it:
        then it goes to the category's held storage and is counted as held.
        Raises DatabaseUnavailable on an outage (nothing committed) and
        StorageError on other database errors. ``encoded``: rows of the batch's
        categories encoded beforehand (``staging_rows.encode_rows``), sent as they are.
        """
        batch = {c: items for c, items in batch.items() if items}
        for category in batch:
            self.policy.category(category)
        horizon = datetime.now(UTC) - timedelta(minutes=1)
        missed = False
        # One more try per category, for a row without its key (once per process).
        for _attempt in range(4 + len(batch)):
            for category in batch:
                if category not in self._applied:
                    self._applied[category] = self._read_rules(category)
            tagged = {c: self._tag(c, items) for c, items in batch.items()}
            for category, items in tagged.items():
                applied = self._applied.get(category)
                if applied is not None and applied.retired_at is not None:
                    continue  # keeps nothing: no partition is needed
                live_guess = [i.expires_at for i in items if i.expires_at > horizon]
                self.partitions.ensure(self.conn, category, live_guess)
            try:
                self._encoded = encoded or {}
                return self._store(tagged)
            except (_RulesChanged, _KeylessRow):
                continue
            except StorageError as exc:
                if not missed and is_missing_partition(exc.__cause__ or exc):
                    # A partition we believed in is gone (dropped by a purge or by hand).
                    missed = True
                    for category in batch:
                        self.partitions.forget(category)
                    continue
                raise
            finally:
                self._encoded = {}
        raise SystemicFault("the applied policy kept changing while a batch was stored")

    def _read_rules(self, category: str) -> AppliedRules | None:
        with wrap_errors("read the applied policy"), self.conn.transaction():
            return applied_rules.read(self.conn, category)

    def _tag(self, category: str, items: Sequence[Envelope]) -> Sequence[Envelope]:
        """The items with the expiry the applied rules give them."""
        applied = self._applied.get(category)
        if applied is None:
            return items
        if applied.retired_at is not None:
            # A retired category keeps nothing: its records expire at the retirement
            # (so they are counted as expired on arrival, or held by a legal hold).
            return [dataclasses.replace(i, expires_at=applied.retired_at) for i in items]
        if applied.digest == self.policy.category(category).rule_digest:
            return items
        expiries = applied.expiries(category, [i.record for i in items])
        return [dataclasses.replace(i, expires_at=e) for i, e in zip(items, expiries, strict=True)]

    def _store(self, batch: Mapping[str, Sequence[Envelope]]) -> dict[str, BatchResult]:
        conn = self.conn
        results: dict[str, BatchResult] = {}
        try:
            with wrap_errors("store batch"), conn.transaction():
                now_db: datetime | None = None
                # Sorted, so that two workers never wait for each other's locks in a cycle.
                for category in sorted(batch):
                    row = conn.execute(
                        query("ingest_lock_shared"), {"category": category}
                    ).fetchone()
                    assert row is not None
                    now_db = now_db or row[1]
                for category in sorted(batch):
                    assert now_db is not None
                    version = self._check_rules(conn, category)
                    results[category] = self._insert(
                        conn, category, batch[category], now_db, version
                    )
        except BaseException:
            # Staging tables created in the rolled-back transaction are gone with it.
            self._staging.clear()
            raise
        return results

    def _check_rules(self, conn: psycopg.Connection[Any], category: str) -> int:
        """The rule version to stamp, checked under the ingest lock (``policy apply``
        takes it exclusively): no batch tagged by old rules commits after a new version."""
        current = applied_rules.read(conn, category)
        known = self._applied.get(category)
        if (current and (current.rule_version, current.retired_at)) != (
            known and (known.rule_version, known.retired_at)
        ):
            self._applied[category] = current
            if current is not None and current.digest != self.policy.category(category).rule_digest:
                log.warning(
                    "this process's policy differs from the applied one; records are tagged "
                    "by the applied rules",
                    extra={"category": category, "count": current.rule_version},
                )
            raise _RulesChanged
        return current.rule_version if current is not None else 0

    def probe(self, category: str, item: Envelope) -> None:
        """Store a canary like ``item`` (same expiry, no data) and roll it back.

        Tells a record the database refuses (the canary is accepted) from a
        database that refuses everything (the canary fails too: the error is
        raised, as a SystemicFault unless it is an outage or a timeout).
        """
        canary = Envelope(
            Record(
                record_id="purger-canary",
                occurred_at=item.record.occurred_at,
                tenant="purger-canary",
                subjects={},
                payload={},
            ),
            item.expires_at,
        )
        self.policy.category(category)
        if item.expires_at > datetime.now(UTC) - timedelta(minutes=1):
            self.partitions.ensure(self.conn, category, [item.expires_at])
        try:
            for _attempt in range(3):
                try:
                    with wrap_errors("probe"), self.conn.transaction(force_rollback=True):
                        self._store({category: [canary]})
                    break
                except (_RulesChanged, _KeylessRow):
                    continue
        except (DatabaseUnavailable, SystemicFault, LockTimeout, StatementTimeout):
            raise
        except StorageError as exc:
            raise SystemicFault(f"the database refuses a canary record too ({exc})") from exc
        finally:
            # A staging table created inside the rolled-back transaction is gone.
            self._staging.clear()

    def _insert(
        self,
        conn: psycopg.Connection[Any],
        category: str,
        items: Sequence[Envelope],
        now_db: datetime,
        rule_version: int,
    ) -> BatchResult:
        encoded = self._encoded.get(category)
        applied = self._applied.get(category)
        if applied is not None and applied.dropped_at is not None:
            # Retired and its tables dropped: nothing of it is kept any more.
            return BatchResult(0, 0, len(items))
        live = [i for i in items if i.expires_at > now_db]
        expired = [i for i in items if i.expires_at <= now_db]
        positions = {id(item): n for n, item in enumerate(items)}
        parent = sql.Identifier(parent_of(category))
        staging_name = f"staging_{category}"
        staging = sql.Identifier(staging_name)
        if category not in self._staging:
            conn.execute(template("create_staging", staging=staging, parent=parent))
            self._staging.add(category)
        inserted = 0
        if live:
            copy_rows(conn, staging, live, category, positions, encoded=encoded)
            guarded = category in self._guarded
            statement = template(
                "insert_from_staging",
                staging=staging,
                parent=parent,
                keys=sql.Identifier(keys_table(category)),
                guard=sql.SQL("ON CONFLICT DO NOTHING" if guarded else ""),
            )
            params = {"category": category, "rule_version": rule_version}
            with conn.cursor() as cur:
                try:
                    result = cur.execute(statement, params).fetchone()
                except psycopg.errors.UniqueViolation as exc:
                    if guarded:
                        raise
                    log.warning(
                        "a stored record has no key in the registry; inserts skip such rows",
                        extra={"category": category},
                    )
                    self._guarded.add(category)
                    raise _KeylessRow from exc
            inserted = int(result[0]) if result else 0
        covered = held = 0
        if expired:
            # Staged after the live rows were inserted; the held insert takes only
            # rows expired at now_db, so the live rows still staged are ignored.
            copy_rows(conn, staging, expired, category, positions, encoded=encoded)
            covered, held = held_storage.store_expired(
                conn, category, staging_name, now_db, rule_version
            )
        return BatchResult(
            inserted,
            len(live) - inserted + covered - held,
            len(expired) - covered,
            held,
        )


class _KeylessRow(Exception):
    """A batch met a row stored without its key, the only one to get past the registry.

    The transaction is rolled back; the batch is stored again, its category guarded.
    """


class _RulesChanged(Exception):
    """The applied rules changed since the batch was tagged: tag it again."""
