"""The versioned migrations produce exactly the documented schema (purger/sql/schema.sql)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from importlib import resources
from typing import Any

import psycopg
import pytest
from psycopg import sql

from purger import migrations
from purger.errors import MigrationError
from tests.integration.conftest import Services

pytestmark = pytest.mark.integration

# Everything a schema consists of, read from the catalog in a canonical order.
CATALOG = {
    "relations": """
        SELECT c.relname, c.relkind::text, coalesce(pg_get_partkeydef(c.oid), '')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'purger' ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity::text
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'purger' AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'purger'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'purger' ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'purger'::regnamespace AND NOT t.tgisinternal ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
        FROM pg_proc p WHERE p.pronamespace = 'purger'::regnamespace ORDER BY 1, 2""",
}


def describe(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The catalog description of the ``purger`` schema of a database."""
    with psycopg.connect(url) as conn:
        return {name: conn.execute(q).fetchall() for name, q in CATALOG.items()}  # type: ignore[arg-type]


def _empty_database(services: Services) -> Iterator[str]:
    name = f"purger_schema_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(services.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield services.database(name)
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def empty_database(services: Services) -> Iterator[str]:
    """A database with nothing in it."""
    yield from _empty_database(services)


@pytest.fixture
def other_empty_database(services: Services) -> Iterator[str]:
    """A second database with nothing in it."""
    yield from _empty_database(services)


def test_migrations_reproduce_the_documented_schema(
    empty_database: str, other_empty_database: str
) -> None:
    with psycopg.connect(empty_database) as conn:
        migrations.migrate(conn)
    documented = resources.files("purger.sql").joinpath("schema.sql").read_text()
    with psycopg.connect(other_empty_database, autocommit=True) as conn:
        conn.execute(documented.encode())

    migrated, expected = describe(empty_database), describe(other_empty_database)

    assert migrated["relations"], "the migrations created nothing"
    for part in CATALOG:
        assert migrated[part] == expected[part], (
            f"{part} differ between the migrations and purger/sql/schema.sql: "
            "run scripts/dump-schema.sh after adding a migration"
        )


def test_migrating_twice_changes_nothing(empty_database: str) -> None:
    with psycopg.connect(empty_database) as conn:
        first = migrations.migrate(conn)
        second = migrations.migrate(conn)
    assert [m.version for m in first] == [m.version for m in migrations.available()]
    assert second == []


def test_an_edited_applied_migration_is_refused(empty_database: str) -> None:
    with psycopg.connect(empty_database) as conn:
        migrations.migrate(conn)
        conn.execute("UPDATE purger.schema_migrations SET checksum = 'x' WHERE version = 1")
        conn.commit()
        with pytest.raises(MigrationError, match="0001"):
            migrations.migrate(conn)


def test_holds_released_before_0004_forget_their_identifiers_on_upgrade(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database) as conn:
        migrations.migrate(conn, up_to=3)
        conn.execute(
            "INSERT INTO purger.legal_holds (case_ref, reason, placed_by, subject_keys) VALUES "
            "('C-1', 'order', 'alice', ARRAY['msisdn:+31612345678', 'email:a@b.nl']), "
            "('C-2', 'order', 'alice', ARRAY['msisdn:+31687654321'])"
        )
        conn.execute(
            "UPDATE purger.legal_holds SET released_at = now(), released_by = 'bob', "
            "release_reason = 'closed' WHERE case_ref = 'C-1'"
        )
        conn.commit()
        applied = migrations.migrate(conn)
        rows = conn.execute(
            "SELECT case_ref, subject_keys, released_selectors FROM purger.legal_holds "
            "ORDER BY case_ref"
        ).fetchall()
    assert [m.version for m in applied] == [m.version for m in migrations.available()][3:]
    assert rows == [
        ("C-1", None, {"msisdn": 1, "email": 1}),
        ("C-2", ["msisdn:+31687654321"], None),
    ]
