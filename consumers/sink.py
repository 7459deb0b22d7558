"""The database sink: a decoded batch stored in one transaction, refused records isolated.

Outages and systemic faults propagate to the caller's ``Retrier`` (the whole batch
is retried: writes are idempotent). A batch the database refuses is split in
halves until the refusing record stands alone; it is poison only if a canary with
its expiry is accepted (``Storage.probe``), else the fault is systemic.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from consumers.deadletter import DeadLetter, letter_for
from consumers.decoding import Coordinates
from purger.errors import RecordRefused, StorageError
from purger.policy import RetentionPolicy
from purger.records import REASON_STORAGE_REJECTED, Envelope
from purger.staging_rows import EncodedRows
from purger.storage import BatchResult, Storage

log = logging.getLogger("purger.consumer")


class DatabaseSink:
    """Stores batches through ``Storage`` and names the records it refuses."""

    def __init__(self, storage: Storage, policy: RetentionPolicy) -> None:
        self.storage = storage
        self.policy = policy

    def store(
        self,
        records: dict[str, list[Envelope]],
        messages: dict[Coordinates, Any],
        encoded: Mapping[str, EncodedRows] | None = None,
    ) -> tuple[dict[str, BatchResult], list[DeadLetter]]:
        """Store a batch; dead letters (not yet written) for the records the database refuses.

        ``encoded``: the batch's rows encoded beforehand (``staging_rows.encode_rows``).
        """
        try:
            return self.storage.store(records, encoded), []
        except StorageError as exc:
            if not _isolatable(exc):
                raise
        log.warning("batch refused by the database; isolating the refused records")
        results: dict[str, BatchResult] = {}
        refused: list[DeadLetter] = []
        for name, items in records.items():
            total = BatchResult(0, 0, 0)
            for result in self._isolate(name, items, refused, messages):
                total = _add(total, result)
            results[name] = total
        return results, refused

    def _isolate(
        self,
        name: str,
        items: Sequence[Envelope],
        refused: list[DeadLetter],
        messages: dict[Coordinates, Any],
    ) -> list[BatchResult]:
        # Bisection: a batch of 5,000 with one refused record costs about 26
        # transactions, not 5,000.
        if not items:
            return []
        try:
            return [self.storage.store_batch(name, items)]
        except StorageError as exc:
            if not _isolatable(exc):
                raise
            failure = exc
        if isinstance(failure, RecordRefused) and failure.index is not None:
            if len(items) > 1:
                # The client named the row: split around it.
                i = failure.index
                out = self._isolate(name, items[:i], refused, messages)
                out += self._isolate(name, items[i : i + 1], refused, messages)
                out += self._isolate(name, items[i + 1 :], refused, messages)
                return out
        elif len(items) > 1:
            half = len(items) // 2
            return self._isolate(name, items[:half], refused, messages) + self._isolate(
                name, items[half:], refused, messages
            )
        else:
            # Raises (SystemicFault) when the database refuses a blank record too.
            self.storage.probe(name, items[0])
        item = items[0]
        msg = messages[(item.topic or "", item.partition or 0, item.offset or 0)]
        refused.append(
            letter_for(
                self.policy.category(name),
                msg,
                REASON_STORAGE_REJECTED,
                f"the database refused the record ({failure})",
            )
        )
        return []


def _isolatable(exc: StorageError) -> bool:
    # A refused record, or a state no rule names: either may be one record's fault.
    # Outages, timeouts and systemic faults never are.
    return isinstance(exc, RecordRefused) or type(exc) is StorageError


def _add(a: BatchResult, b: BatchResult) -> BatchResult:
    return BatchResult(
        a.inserted + b.inserted,
        a.duplicates + b.duplicates,
        a.expired_on_arrival + b.expired_on_arrival,
        a.held + b.held,
    )
