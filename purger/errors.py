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
    """PostgreSQL cannot be reached right now; retrying may help."""


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
