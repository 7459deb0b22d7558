"""The benchmark's watch of a consumer group: what it tells when a run's end is missed.

A run whose end is not observed has no time; the problem line must then say what the
watch saw (partitions committed to their end, failed offset reads), since that is how
the uncommitted offsets fixed in 851485c were found.
"""

from __future__ import annotations

from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaConnectionError
from kafka.structs import OffsetAndMetadata

from benchmarks.watch import ConsumerWatch

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class Admin:
    """Answers offset reads from a list: a mapping of offsets, or an error to raise."""

    def __init__(self, *answers: dict[TopicPartition, int] | Exception) -> None:
        self.answers = list(answers)

    def list_group_offsets(self, groups: dict[str, Any]) -> dict[str, Any]:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        group = next(iter(groups))
        return {group: {tp: OffsetAndMetadata(o, "", -1) for tp, o in answer.items()}}


def _watch() -> ConsumerWatch:
    return ConsumerWatch(root=0, bootstrap="unused", group="g", ends={TP0: 10, TP1: 20})


def test_the_end_is_observed_when_every_partition_is_committed_to_its_end() -> None:
    watch = _watch()
    admin = Admin({TP0: 10, TP1: 5}, {TP0: 10, TP1: 20})
    assert watch._sample_offsets(admin)  # type: ignore[arg-type]
    assert watch.first_commit_at is not None
    assert not watch.done.is_set()
    assert watch.unobserved(1.0) == ", end not observed: 1 of 2 partitions committed to their end"
    assert watch._sample_offsets(admin)  # type: ignore[arg-type]
    assert watch.done.is_set()
    assert watch.unobserved(1.0) == ""


def test_a_missed_end_names_the_failed_reads_and_a_missed_start_says_so() -> None:
    watch = _watch()
    admin = Admin({TP0: 10}, KafkaConnectionError("refused"))
    assert watch._sample_offsets(admin)  # type: ignore[arg-type]
    assert not watch._sample_offsets(admin)  # type: ignore[arg-type]
    assert watch.unobserved(1.0) == (
        ", end not observed: 1 of 2 partitions committed to their end;"
        " 1 offset reads failed (KafkaConnectionError)"
    )
    assert watch.unobserved(None) == ", start not observed"
