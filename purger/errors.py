"""The project's exceptions: one root, small subclasses.

Messages never carry personal data: they name files, keys, topics, partitions,
offsets and reason codes, never identifiers or payloads.
"""

from __future__ import annotations


class PurgerError(Exception):
    """Root of every error the purger raises on purpose."""


class ConfigError(PurgerError):
    """A settings or policy file (or env var) is invalid; the process refuses to start."""


class PolicyError(ConfigError):
    """The retention policy is invalid."""


class DurationError(PurgerError):
    """An ISO-8601 duration could not be parsed."""


class InvalidMessage(PurgerError):
    """A Kafka message breaks the contract; it goes to the dead-letter topic.

    ``reason`` is a short, bounded code used as a metric label and a DLQ header.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StorageError(PurgerError):
    """A database operation failed."""


class DatabaseUnavailable(StorageError):
    """An outage: PostgreSQL cannot be reached right now; waiting it out helps."""


class SystemicFault(StorageError):
    """The database refuses everything, whatever the record: permissions, schema, disk.

    Never the fault of one message: the caller stops committing and retries with
    backoff, and never dead-letters a record because of it.
    """


class RecordRefused(StorageError):
    """The database refused the data of a record (a data exception, a size limit).

    ``category`` and ``index`` locate the refused record in the batch, when known
    (an encoding error on the client side); a server error names no row.
    """

    def __init__(self, message: str, *, category: str | None = None, index: int | None = None):
        super().__init__(message)
        self.category = category
        self.index = index


class LockTimeout(StorageError):
    """A lock was not granted within ``lock_timeout``: contended, try again later."""


class StatementTimeout(StorageError):
    """A statement ran past ``statement_timeout`` (or was cancelled)."""


class MigrationError(StorageError):
    """The schema migrations could not be applied or are inconsistent."""


class NotOwnedError(StorageError):
    """A table is not one the purger created; it is never touched."""


class DeadLetterError(PurgerError):
    """A dead-letter write was not acknowledged; the consumer must stop rather than skip."""


class AuditError(PurgerError):
    """The audit chain could not be written or read."""


class HoldError(PurgerError):
    """A legal hold request is invalid or refers to an unknown hold."""


class RequestError(PurgerError):
    """A data-subject request is invalid, unknown, closed, or refused what was asked."""
