"""How a purge pass names what happened: per category, and for the whole pass (pure)."""

from __future__ import annotations

import pytest
from psycopg import errors as pgerrors

from purger.errors import (
    DatabaseUnavailable,
    LockTimeout,
    NotOwnedError,
    StatementTimeout,
    StorageError,
)
from purger.held_storage import HeldStorageError
from purger.purge_report import (
    CATEGORY_OUTCOMES,
    PURGE_OUTCOMES,
    combine_outcomes,
    interruption,
)


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        (["success", "failure", "timed_out", "contended"], "failure"),
        (["contended", "timed_out", "success"], "timed_out"),
        (["nothing_to_do", "contended", "success"], "contended"),
        (["nothing_to_do", "success"], "success"),
        (["nothing_to_do", "nothing_to_do"], "nothing_to_do"),
        ([], "nothing_to_do"),
    ],
)
def test_a_pass_ends_with_the_worst_outcome_of_its_categories(
    outcomes: list[str], expected: str
) -> None:
    assert combine_outcomes(outcomes) == expected


def _wrapped(kind: type[StorageError], cause: Exception) -> StorageError:
    try:
        raise kind("drop partition records_cdr_p2026010100: ...") from cause
    except StorageError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (pgerrors.LockNotAvailable(), "contended"),
        (_wrapped(LockTimeout, pgerrors.LockNotAvailable()), "contended"),
        (pgerrors.DeadlockDetected(), "contended"),
        (_wrapped(DatabaseUnavailable, pgerrors.SerializationFailure()), "contended"),
        (pgerrors.QueryCanceled(), "timed_out"),
        (_wrapped(StatementTimeout, pgerrors.QueryCanceled()), "timed_out"),
        (_wrapped(DatabaseUnavailable, pgerrors.AdminShutdown()), None),
        (NotOwnedError("partition records_cdr_p2026010100 is not ours"), None),
        (pgerrors.UndefinedTable(), None),
        (HeldStorageError("held storage received 1 of 2"), None),
    ],
)
def test_only_lock_and_statement_timeouts_interrupt_rather_than_fail(
    exc: Exception, expected: str | None
) -> None:
    assert interruption(exc) == expected


def test_every_category_outcome_is_a_pass_outcome_too() -> None:
    assert set(CATEGORY_OUTCOMES) <= set(PURGE_OUTCOMES)
    assert "timed_out" in CATEGORY_OUTCOMES
