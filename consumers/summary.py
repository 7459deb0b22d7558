"""What became of the messages a worker consumed, per category."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CategoryCounts:
    """What became of one category's messages."""

    stored: int = 0
    duplicates: int = 0
    expired_on_arrival: int = 0
    # Arrived expired but covered by a legal hold: stored in held storage.
    held: int = 0
    dead_lettered: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, other: CategoryCounts) -> None:
        """Add ``other`` into this."""
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.expired_on_arrival += other.expired_on_arrival
        self.held += other.held
        for reason, n in other.dead_lettered.items():
            self.dead_lettered[reason] += n

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "stored": self.stored,
            "duplicates": self.duplicates,
            "expired_on_arrival": self.expired_on_arrival,
            "held": self.held,
            "dead_lettered": sum(self.dead_lettered.values()),
            "dead_lettered_by_reason": dict(sorted(self.dead_lettered.items())),
        }


# Where a worker's time went: polling Kafka (polls that returned records), decoding,
# storing (dead letters and the database; on the writer thread with write-behind),
# waiting for the writer, committing offsets. Of several workers, the sum.
STAGES = ("poll", "decode", "store", "wait", "commit")


@dataclass
class IngestSummary:
    """Per-category counts of one worker (or of several, added up)."""

    categories: dict[str, CategoryCounts] = field(default_factory=dict)
    messages: int = 0
    assigned_partitions: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def clock(self, stage: str, seconds: float) -> None:
        """Add ``seconds`` to ``stage`` (each stage is clocked by one thread only)."""
        self.seconds[stage] += seconds

    def counts(self, category: str) -> CategoryCounts:
        """The counts of ``category``, created on first use."""
        return self.categories.setdefault(category, CategoryCounts())

    def add(self, other: IngestSummary) -> None:
        """Add ``other`` into this."""
        self.messages += other.messages
        self.assigned_partitions = max(self.assigned_partitions, other.assigned_partitions)
        for stage, seconds in other.seconds.items():
            self.clock(stage, seconds)
        for name, counts in other.categories.items():
            self.counts(name).add(counts)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {
            "messages": self.messages,
            "categories": {n: c.as_dict() for n, c in sorted(self.categories.items())},
            "seconds": {stage: round(s, 3) for stage, s in self.seconds.items()},
        }
