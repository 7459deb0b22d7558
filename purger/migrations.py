"""Versioned schema migrations (``purger/sql/migrations/NNNN_name.sql``)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from purger.db import wrap_errors
from purger.errors import MigrationError

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('purger.migrate', 0))"
_BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS purger;
CREATE TABLE IF NOT EXISTS purger.schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        """sha256 of the file, to catch an applied migration edited afterwards."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def available() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    folder = resources.files("purger.sql.migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must be 1..n without gaps, found {versions}")
    return found


def migrate(conn: psycopg.Connection[Any], *, up_to: int | None = None) -> list[Migration]:
    """Apply the pending migrations (up to version ``up_to``, default all) in one transaction.

    Returns those applied.
    """
    applied: list[Migration] = []
    with wrap_errors("migrate"), conn.transaction():
        conn.execute(_LOCK)
        conn.execute(_BOOKKEEPING)
        done = {
            row[0]: row[1]
            for row in conn.execute("SELECT version, checksum FROM purger.schema_migrations")
        }
        for migration in available():
            if up_to is not None and migration.version > up_to:
                break
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} was changed after "
                        "it was applied; add a new migration instead"
                    )
                continue
            conn.execute(migration.text.encode())
            conn.execute(
                "INSERT INTO purger.schema_migrations (version, name, checksum) "
                "VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
            applied.append(migration)
    return applied


RUNTIME_ROLE = "purger_runtime"


def grant_runtime(conn: psycopg.Connection[Any], member: str) -> None:
    """Make the login role ``member`` a member of ``purger_runtime`` (migration 0006)."""
    with wrap_errors(f"grant {RUNTIME_ROLE} to {member}"), conn.transaction():
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(RUNTIME_ROLE), sql.Identifier(member))
        )
