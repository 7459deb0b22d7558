"""Connections to PostgreSQL, with driver errors wrapped in the project's own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import errors as pgerrors

from purger.errors import DatabaseUnavailable, StorageError

APPLICATION_NAME = "purger"

# SQLSTATE classes that mean "the server is not there right now": retry later.
_TRANSIENT_CLASSES = ("08", "57", "53")


def connect(
    conninfo: str, *, autocommit: bool = False, role: str = "main"
) -> psycopg.Connection[Any]:
    """Open a connection; DatabaseUnavailable when PostgreSQL does not answer."""
    try:
        return psycopg.connect(
            conninfo,
            autocommit=autocommit,
            application_name=f"{APPLICATION_NAME}:{role}",
            connect_timeout=10,
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL ({_describe(exc)})") from exc


def is_transient(exc: BaseException) -> bool:
    """True when the error means the database is unavailable, not that we did wrong."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, psycopg.OperationalError | pgerrors.AdminShutdown):
        return True
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        return state[:2] in _TRANSIENT_CLASSES
    return False


def _describe(exc: psycopg.Error) -> str:
    # libpq's messages name hosts and ports, never row data; keep the first line.
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


@contextlib.contextmanager
def wrap_errors(action: str) -> Iterator[None]:
    """Re-raise driver errors as StorageError/DatabaseUnavailable naming ``action``."""
    try:
        yield
    except psycopg.Error as exc:
        if is_transient(exc):
            raise DatabaseUnavailable(f"{action}: database unavailable ({_describe(exc)})") from exc
        state = f"SQLSTATE {exc.sqlstate}" if exc.sqlstate else exc.__class__.__name__
        raise StorageError(f"{action}: {state}: {_first_line(exc)}") from exc


def _first_line(exc: psycopg.Error) -> str:
    # The primary message of a server error names objects, not values; DETAIL
    # lines may quote row values, so they are never included.
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or _describe(exc)
