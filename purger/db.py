"""Connections to PostgreSQL, with driver errors wrapped in the project's own.

Every driver error is sorted into one of the kinds the callers act on (see
``classify``): an outage (``DatabaseUnavailable``: wait it out), a systemic
fault (``SystemicFault``: the database refuses everything; stop and retry), a
refused record (``RecordRefused``: this row's data; dead-letter it), a lock or
statement timeout (``LockTimeout``/``StatementTimeout``: contended or slow), or,
for a state no rule names, a plain ``StorageError`` that the caller must isolate
before it may blame one record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import errors as pgerrors

from purger.errors import (
    DatabaseUnavailable,
    LockTimeout,
    RecordRefused,
    StatementTimeout,
    StorageError,
    SystemicFault,
)

APPLICATION_NAME = "purger"

# Client and server TCP keepalives: a half-open connection (a node or NAT gone
# without a FIN) is noticed within about IDLE + INTERVAL * COUNT seconds instead of
# the kernel's two hours, so that locks held by a vanished session are released.
KEEPALIVES_IDLE_SECONDS = 30
KEEPALIVES_INTERVAL_SECONDS = 10
KEEPALIVES_COUNT = 3
# Unacknowledged data on a dead peer is given up after this long (Linux only).
TCP_USER_TIMEOUT_MS = 60_000

# SQLSTATEs by what they mean for the caller. Classes (two characters) or codes.
_OUTAGE = (
    "08",  # connection exception
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, shutting down, recovery)
    "53300",  # too_many_connections
    "40001",  # serialization_failure: retry the transaction
    "40P01",  # deadlock_detected: retry the transaction
    "25006",  # read_only_sql_transaction: a failover in progress
)
_SYSTEMIC = (
    "28",  # invalid authorization (wrong password, pg_hba)
    "3D",  # invalid catalog name: the database does not exist
    "3F",  # invalid schema name
    "42",  # syntax error or access rule violation: permissions, missing tables, overlap
    "53",  # insufficient resources: disk full, out of memory
    "58",  # system error: I/O errors
    "XX",  # internal error, data corrupted
    "F0",  # configuration file error
    "0A",  # feature not supported
    "25",  # invalid transaction state
    "55",  # object not in prerequisite state (55P03 is a lock timeout, see below)
    "2B",  # dependent objects still exist
    "57P04",  # database_dropped
)
_RECORD = (
    "22",  # data exception: out of range, invalid text, untranslatable character
    "23",  # integrity constraint violation (a missing partition is handled before)
    "54",  # program limit exceeded: index row too large, value too long
)


def _matches(state: str, table: tuple[str, ...]) -> bool:
    return any(state.startswith(prefix) for prefix in table)


def _options(conninfo: str) -> dict[str, Any]:
    # Keepalives are set only where the URL does not set them itself.
    given = pg_conninfo.conninfo_to_dict(conninfo)
    extra: dict[str, Any] = {}
    defaults = {
        "keepalives": 1,
        "keepalives_idle": KEEPALIVES_IDLE_SECONDS,
        "keepalives_interval": KEEPALIVES_INTERVAL_SECONDS,
        "keepalives_count": KEEPALIVES_COUNT,
        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
    }
    for key, value in defaults.items():
        if key not in given:
            extra[key] = value
    server = (
        f"-c tcp_keepalives_idle={KEEPALIVES_IDLE_SECONDS} "
        f"-c tcp_keepalives_interval={KEEPALIVES_INTERVAL_SECONDS} "
        f"-c tcp_keepalives_count={KEEPALIVES_COUNT} "
        f"-c tcp_user_timeout={TCP_USER_TIMEOUT_MS}"
    )
    extra["options"] = f"{given['options']} {server}" if given.get("options") else server
    return extra


def connect(
    conninfo: str, *, autocommit: bool = False, application: str = "main"
) -> psycopg.Connection[Any]:
    """Open a connection with keepalives; DatabaseUnavailable or SystemicFault if refused."""
    try:
        return psycopg.connect(
            conninfo,
            autocommit=autocommit,
            application_name=f"{APPLICATION_NAME}:{application}",
            connect_timeout=10,
            **_options(conninfo),
        )
    except psycopg.Error as exc:
        kind = classify(exc)
        if kind is SystemicFault:
            raise SystemicFault(f"PostgreSQL refuses the connection ({_describe(exc)})") from exc
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL ({_describe(exc)})") from exc


def classify(exc: BaseException) -> type[StorageError]:
    """The project error class that ``exc`` (a driver error) stands for."""
    if isinstance(exc, StorageError):
        return type(exc)
    if not isinstance(exc, psycopg.Error):
        return StorageError
    state = exc.sqlstate or ""
    if isinstance(exc, pgerrors.LockNotAvailable) or state == "55P03":
        return LockTimeout
    if isinstance(exc, pgerrors.QueryCanceled) or state == "57014":
        return StatementTimeout
    if not state:
        # No SQLSTATE: the connection broke (server gone, socket closed, timeout).
        return (
            DatabaseUnavailable
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
            else StorageError
        )
    if _matches(state, _OUTAGE):
        return DatabaseUnavailable
    if _matches(state, _SYSTEMIC):
        return SystemicFault
    if _matches(state, _RECORD):
        return RecordRefused
    return StorageError


def is_transient(exc: BaseException) -> bool:
    """True when the error means the database is unavailable, not that we did wrong."""
    return classify(exc) is DatabaseUnavailable


def _describe(exc: psycopg.Error) -> str:
    # libpq's messages name hosts and ports, never row data; keep the first line.
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


@contextlib.contextmanager
def wrap_errors(action: str) -> Iterator[None]:
    """Re-raise driver errors as the project's error of their kind, naming ``action``."""
    try:
        yield
    except psycopg.Error as exc:
        kind = classify(exc)
        if kind is DatabaseUnavailable:
            raise DatabaseUnavailable(f"{action}: database unavailable ({_describe(exc)})") from exc
        state = f"SQLSTATE {exc.sqlstate}" if exc.sqlstate else exc.__class__.__name__
        if kind is RecordRefused or kind is StorageError:
            # A data exception's primary message may quote the refused value
            # ('invalid input syntax for type ...: "<value>"'), and so may a trigger's
            # RAISE of an unknown state: name the condition only.
            raise kind(f"{action}: {state}: {exc.__class__.__name__}") from exc
        raise kind(f"{action}: {state}: {_first_line(exc)}") from exc


def _first_line(exc: psycopg.Error) -> str:
    # The primary message of a server error names objects, not values; DETAIL
    # lines may quote row values, so they are never included.
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or _describe(exc)
