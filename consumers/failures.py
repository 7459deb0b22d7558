"""The ingestion error policy: every failure is a poison record, a systemic fault or an outage.

- A *poison record*: anything about one message. Decoding and validation
  (``InvalidMessage``), expiry arithmetic, the database refusing that one row
  (``RecordRefused``, or any other error the row reproduces alone while a canary
  row with the same expiry is accepted). The message goes to the dead-letter
  topic with a reason and the partition moves on; except a message that fails
  decoding but whose expiry (``occurred_at`` and ``tenant``, read leniently) is
  already past: it is counted as expired on arrival
  (``purger_records_rejected{reason="expired_on_arrival"}``), never dead-lettered
  with its payload, and the partition moves on all the same
  (``consumers.decoding``).
- A *systemic fault*: the database or the broker refuses everything, whatever
  the record: permissions, schema, disk, authorisation, a missing dead-letter
  topic. The worker stops committing and retries with backoff, with
  ``purger_ingest_faulted{kind="systemic"}`` at 1 so that an alert fires. It never
  dead-letters a record because of it.
- An *outage*: Kafka or PostgreSQL unreachable, a broker restart, a leader
  change, a coordinator that moved, a request or lock that timed out. Retried
  with backoff, never a crash, and no offset ever passes what the database holds.

``classify`` sorts every exception type that decoding, kafka-python and psycopg
(through ``purger.db``) raise; ``Retrier`` is the one place where the outage and
systemic kinds are waited out. Poison records are never retried: the consumer
loop isolates them (``consumers.loop``) and dead-letters them, or counts them as
expired on arrival when their expiry is known and past.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from kafka.errors import (
    AuthorizationError,
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from purger.errors import (
    DatabaseUnavailable,
    DeadLetterError,
    InvalidMessage,
    LockTimeout,
    PurgerError,
    RecordRefused,
    StatementTimeout,
    SystemicFault,
)
from purger.metrics import Metrics

log = logging.getLogger("purger.consumer")

T = TypeVar("T")


class Kind(enum.Enum):
    """What a failure means for the consumer."""

    POISON = "poison"
    SYSTEMIC = "systemic"
    OUTAGE = "outage"


class Stopping(Exception):
    """The stop flag was set while the worker waited."""


class KafkaOutage(PurgerError):
    """Kafka did not answer (or answered 'try again'); waiting it out helps."""


class KafkaFault(PurgerError):
    """Kafka refuses the request whatever we send: authorisation, configuration."""


# The group moved on (rebalance, fenced or expired member): the offsets of this
# generation cannot be committed; the new owner's redelivery is idempotent.
REBALANCED = (
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
)


def classify(exc: BaseException) -> Kind:
    """The kind of ``exc``: see the module docstring."""
    if isinstance(exc, InvalidMessage | RecordRefused):
        return Kind.POISON
    if isinstance(exc, DatabaseUnavailable | LockTimeout | StatementTimeout | KafkaOutage):
        return Kind.OUTAGE
    if isinstance(exc, SystemicFault | KafkaFault | DeadLetterError):
        return Kind.SYSTEMIC
    if isinstance(exc, KafkaError):
        if isinstance(exc, AuthorizationError):
            return Kind.SYSTEMIC
        if exc.retriable or isinstance(exc, REBALANCED):
            return Kind.OUTAGE
        return Kind.SYSTEMIC
    if isinstance(exc, OSError | TimeoutError):
        return Kind.OUTAGE
    # Anything else raised outside one record's processing (an unknown database
    # state, an unexpected library error) must never be blamed on a record.
    return Kind.SYSTEMIC


class Retrier:
    """Runs an action until it succeeds, waiting out outages and systemic faults.

    Backoff doubles from ``first`` up to ``longest`` seconds and is reset by a
    success. ``beat`` is called on every attempt, so that liveness sees a worker
    that waits on purpose as alive, and one stuck inside a call as not.
    """

    def __init__(
        self,
        metrics: Metrics,
        stop: threading.Event,
        *,
        longest: float,
        first: float = 0.2,
        beat: Callable[[], None] = lambda: None,
        worker: int = 0,
    ) -> None:
        self.metrics = metrics
        self.stop = stop
        self.longest = longest
        self.first = first
        self.beat = beat
        self.worker = worker

    def run(self, action: Callable[[], T], what: str) -> T:
        """``action()``, retried while it fails with an outage or a systemic fault."""
        delay = self.first
        faulted: Kind | None = None
        while True:
            self.beat()
            try:
                result = action()
            except Exception as exc:
                kind = classify(exc)
                if kind is Kind.POISON:
                    # A poison record reaching here escaped isolation: never skip it,
                    # never dead-letter good records for it. Treat it as systemic.
                    kind = Kind.SYSTEMIC
                self._report(kind, exc, what, delay)
                faulted = kind
                if self.stop.wait(delay):
                    raise Stopping from None
                delay = min(delay * 2, self.longest)
                continue
            if faulted is not None:
                self.metrics.ingest_faulted.labels(faulted.value).set(0)
                log.warning(
                    "%s succeeded after %s; resuming",
                    what,
                    faulted.value,
                    extra={"worker": self.worker},
                )
            return result

    def _report(self, kind: Kind, exc: BaseException, what: str, delay: float) -> None:
        self.metrics.ingest_faulted.labels(kind.value).set(1)
        self.metrics.ingest_retries.labels(kind.value).inc()
        if _is_database(exc):
            self.metrics.database_retries.inc()
        # Exceptions of this project name objects, never values; foreign ones are
        # named by class only, since their text may quote data.
        reason = str(exc) if isinstance(exc, PurgerError) else exc.__class__.__name__
        level = logging.WARNING if kind is Kind.OUTAGE else logging.ERROR
        log.log(
            level,
            "%s failed (%s: %s); retrying without committing offsets",
            what,
            kind.value,
            reason,
            extra={"seconds": round(delay, 2), "worker": self.worker},
        )


def _is_database(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseUnavailable | LockTimeout | StatementTimeout)
