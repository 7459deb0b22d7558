"""What a purge pass reports, and the rules that name its outcomes.

Each category of a pass ends with one outcome: ``success`` (something was
destroyed), ``nothing_to_do``, ``contended`` (a lock not granted in time, or a
lost deadlock or serialization conflict), ``timed_out`` (a statement ran past
statement_timeout) or ``failure`` (anything else). The pass's outcome is the
worst of its categories' (failure, then timed_out, then contended). A scheduler
tick that did not lead ends ``not_leader``.

The outcomes are named here and nowhere else: the metrics pre-create their
series from these tuples, and the audit query for the last successful pass takes
``COMPLETED`` as a parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from purger.db import classify, wrap_errors
from purger.errors import LockTimeout, PurgerError, StatementTimeout, StorageError

log = logging.getLogger("purger.purge")

OUTCOME_SUCCESS = "success"
OUTCOME_NOTHING = "nothing_to_do"
OUTCOME_CONTENDED = "contended"
OUTCOME_TIMED_OUT = "timed_out"
OUTCOME_FAILURE = "failure"
OUTCOME_NOT_LEADER = "not_leader"

CATEGORY_OUTCOMES = (
    OUTCOME_SUCCESS,
    OUTCOME_NOTHING,
    OUTCOME_CONTENDED,
    OUTCOME_TIMED_OUT,
    OUTCOME_FAILURE,
)
# A scheduler tick that did not lead ends not_leader: a pass outcome, never a category's.
PURGE_OUTCOMES = (*CATEGORY_OUTCOMES, OUTCOME_NOT_LEADER)
# A pass that ran to completion: what the last-success gauge and its alert follow.
COMPLETED = (OUTCOME_SUCCESS, OUTCOME_NOTHING)
# Worst first: a pass (or a category) ends with the first of these that any part had.
SEVERITY = (OUTCOME_FAILURE, OUTCOME_TIMED_OUT, OUTCOME_CONTENDED)


def combine_outcomes(outcomes: list[str]) -> str:
    """The outcome of a pass from its categories': the worst one, else success or nothing."""
    for outcome in SEVERITY:
        if outcome in outcomes:
            return outcome
    return OUTCOME_SUCCESS if OUTCOME_SUCCESS in outcomes else OUTCOME_NOTHING


def interruption(exc: BaseException) -> str | None:
    """``contended`` or ``timed_out`` when ``exc`` only means "not now", else None.

    A lost deadlock or serialization conflict (SQLSTATE class 40) is contention
    too: the other transaction won, the work is retried on a later pass.
    """
    kind = classify(exc)
    if kind is LockTimeout or _sqlstate(exc).startswith("40"):
        return OUTCOME_CONTENDED
    if kind is StatementTimeout:
        return OUTCOME_TIMED_OUT
    return None


def _sqlstate(exc: BaseException | None) -> str:
    # Project errors keep the driver's error as their cause.
    while exc is not None:
        if isinstance(exc, psycopg.Error) and exc.sqlstate:
            return exc.sqlstate
        exc = exc.__cause__
    return ""


def error_text(exc: BaseException) -> str:
    """What a report says about ``exc``: safe to log, print and audit."""
    # Project errors name partitions, categories and SQLSTATEs, never row data
    # (wrap_errors keeps a driver error's DETAIL out); anything else by its class.
    return str(exc) if isinstance(exc, PurgerError) else exc.__class__.__name__


@dataclass
class PartitionAction:
    """What a pass did (or, dry, would do) to one partition."""

    partition: str
    action: str  # "drop" or "delete_rows"
    rows: int
    range_start: datetime
    range_end: datetime
    status: str  # "done", "contended", "timed_out", "planned"
    held: int = 0  # covered rows moved to held storage instead
    # Wall time of its statements: a drop's detach and transaction, the row deletes.
    seconds: float = 0.0
    detach_seconds: float = 0.0  # of a drop's seconds, the DETACH CONCURRENTLY
    vacuum_seconds: float = 0.0  # after the row deletes, not in their seconds

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "partition": self.partition,
            "action": self.action,
            "rows": self.rows,
            "held": self.held,
            "range_start": self.range_start.isoformat(),
            "range_end": self.range_end.isoformat(),
            "status": self.status,
            "seconds": round(self.seconds, 4),
            "detach_seconds": round(self.detach_seconds, 4),
            "vacuum_seconds": round(self.vacuum_seconds, 4),
        }


@dataclass
class CategoryReport:
    """One category's part of a pass."""

    partitions_dropped: int = 0
    rows_purged: int = 0
    contended: int = 0
    actions: list[PartitionAction] = field(default_factory=list)
    rows_held: int = 0  # expired but covered: moved to held storage by this pass
    held_purged: int = 0  # held records no hold covers any more (part of rows_purged)
    outcome: str = OUTCOME_NOTHING
    error: str | None = None  # why it was not a success: partitions, SQLSTATEs, no row data

    def conclude(self, notes: list[str], *, timed_out: bool = False) -> None:
        """Name the outcome of a category that ran to its end (or to its first timeout)."""
        if timed_out:
            self.outcome = OUTCOME_TIMED_OUT
        elif self.contended:
            self.outcome = OUTCOME_CONTENDED
        elif self.partitions_dropped or self.rows_purged:
            self.outcome = OUTCOME_SUCCESS
        else:
            self.outcome = OUTCOME_NOTHING
        self.error = "; ".join(notes) or None

    def _fields(self, *, held_purged: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "outcome": self.outcome,
            "error": self.error,
            "partitions_dropped": self.partitions_dropped,
            "rows_purged": self.rows_purged,
            "rows_held": self.rows_held,
        }
        if held_purged:
            out["held_purged"] = self.held_purged
        out["contended"] = self.contended
        return out

    def summary(self) -> dict[str, Any]:
        """The counts the pass's audit entry keeps (no per-partition actions)."""
        return self._fields(held_purged=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**self._fields(held_purged=True), "actions": [a.as_dict() for a in self.actions]}


@dataclass
class PassReport:
    """The result of one pass."""

    pass_id: str
    instant: datetime
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    outcome: str = OUTCOME_NOTHING
    categories: dict[str, CategoryReport] = field(default_factory=dict)
    error: str | None = None
    # The audit head this pass published outside PostgreSQL, or why it was not.
    anchor: dict[str, Any] | None = None
    anchor_error: str | None = None

    @property
    def rows_purged(self) -> int:
        """Rows removed (or, dry, removable) in all categories."""
        return sum(c.rows_purged for c in self.categories.values())

    def conclude(self) -> None:
        """Name the pass's outcome from its categories' and gather their problems."""
        self.outcome = combine_outcomes([c.outcome for c in self.categories.values()])
        problems = [
            f"{n} {c.outcome}: {c.error}"
            for n, c in self.categories.items()
            if c.outcome in SEVERITY and c.error
        ]
        self.error = "; ".join(problems) or None

    def not_run(self, names: list[str], outcome: str, reason: str) -> None:
        """Report the categories the pass never reached, with the reason."""
        # Reported (and counted), so that each category of a pass has exactly one outcome.
        for name in names:
            if name not in self.categories:
                self.categories[name] = CategoryReport(outcome=outcome, error=f"not run: {reason}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "pass_id": self.pass_id,
            "instant": self.instant.isoformat(),
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "outcome": self.outcome,
            "error": self.error,
            "rows_purged": self.rows_purged,
            "categories": {n: c.as_dict() for n, c in self.categories.items()},
            "anchor": self.anchor,
            "anchor_error": self.anchor_error,
        }


def attempt(
    action: PartitionAction, what: str, work: Callable[[], None], *, category: str, pass_id: str
) -> str | None:
    """Run ``work`` (``what`` names it in errors) and mark ``action`` done.

    Returns what interrupted it (the action is then contended or timed_out); any other
    error propagates and fails the category.
    """
    try:
        with wrap_errors(what):
            work()
        action.status = "done"
    except StorageError as exc:
        status = interruption(exc)
        if status is None:
            raise
        action.status = status
        log.warning(
            "partition not purged (%s); retried on a later pass",
            status,
            extra={"category": category, "pass_id": pass_id, "outcome": status},
        )
        return error_text(exc)
    return None
