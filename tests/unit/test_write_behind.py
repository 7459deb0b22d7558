"""WriteBehind: one batch in flight, stored in order, finished on the caller's thread.

And Checkpoint's epochs: a batch that finishes after its partition was revoked (and
perhaps assigned again) never advances that partition's offset.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka import TopicPartition

from consumers import io_thread
from consumers.checkpoint import Checkpoint
from consumers.failures import Stopping
from consumers.write_behind import WriteBehind

WAIT = 10.0


class Recorder:
    """A write and a finish that record what ran where, and whether writes overlapped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.written: list[int] = []
        self.finished: list[tuple[int, int]] = []
        self.finish_threads: set[str] = set()
        self.write_threads: set[str] = set()

    def write(self, batch: int) -> int:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.write_threads.add(threading.current_thread().name)
        try:
            self.written.append(batch)
            return batch * 10
        finally:
            with self.lock:
                self.running -= 1

    def finish(self, batch: int, result: int) -> None:
        self.finished.append((batch, result))
        self.finish_threads.add(threading.current_thread().name)


def behind_for(
    rec: Recorder, stop: threading.Event | None = None, halt: threading.Event | None = None
) -> WriteBehind[int, int]:
    return WriteBehind(
        rec.write,
        rec.finish,
        stop=stop or threading.Event(),
        halt=halt or threading.Event(),
        name="writer-test",
    )


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=40))
def test_batches_are_stored_one_at_a_time_in_order_and_finished_on_the_callers_thread(
    n: int,
) -> None:
    rec = Recorder()
    behind = behind_for(rec)
    for batch in range(n):
        behind.submit(batch)
        # The batch just submitted is in flight; every earlier one is finished.
        assert [b for b, _ in rec.finished] == list(range(batch))
    behind.settle()
    assert not behind.busy
    assert rec.written == list(range(n))
    assert rec.finished == [(b, b * 10) for b in range(n)]
    assert rec.most_running == 1
    assert rec.write_threads == {"writer-test"}
    assert rec.finish_threads == {threading.current_thread().name}


def test_a_failed_store_is_raised_on_the_callers_thread_and_never_finished() -> None:
    finished: list[int] = []

    def write(batch: int) -> int:
        if batch == 1:
            raise RuntimeError("refused")
        return batch

    behind: WriteBehind[int, int] = WriteBehind(
        write,
        lambda b, _r: finished.append(b),
        stop=threading.Event(),
        halt=threading.Event(),
        name="writer-test",
    )
    behind.submit(0)
    behind.submit(1)
    with pytest.raises(RuntimeError, match="refused"):
        behind.submit(2)  # settles batch 1 first: its failure stops batch 2 from starting
    assert finished == [0]
    assert not behind.busy


def test_stop_while_waiting_halts_a_writer_that_retries() -> None:
    # The writer's retrier waits on halt; the worker's stop flag must reach it even
    # while the worker's thread is blocked in settle().
    stop, halt = threading.Event(), threading.Event()
    started = threading.Event()
    finished: list[int] = []

    def write(batch: int) -> int:
        started.set()
        if halt.wait(WAIT):
            raise Stopping
        return batch

    behind: WriteBehind[int, int] = WriteBehind(
        write, lambda b, _r: finished.append(b), stop=stop, halt=halt, name="writer-test"
    )
    behind.submit(0)
    assert started.wait(WAIT)
    threading.Timer(0.05, stop.set).start()
    with pytest.raises(Stopping):
        behind.settle()
    assert halt.is_set()
    assert finished == []


def test_drain_finishes_a_stored_batch_and_drops_a_stopped_one() -> None:
    rec = Recorder()
    behind = behind_for(rec)
    behind.submit(7)
    behind.drain()
    assert rec.finished == [(7, 70)]
    assert not behind.busy

    halt = threading.Event()
    finished: list[int] = []

    def retrying(batch: int) -> int:
        # A writer waiting out an outage: gives up when halted.
        if halt.wait(WAIT):
            raise Stopping
        return batch

    stopped: WriteBehind[int, int] = WriteBehind(
        retrying,
        lambda b, _r: finished.append(b),
        stop=threading.Event(),
        halt=halt,
        name="writer-test",
    )
    stopped.submit(3)
    stopped.drain()  # sets halt, waits, raises nothing
    assert halt.is_set()
    assert finished == []
    assert not stopped.busy


def test_drain_without_a_batch_in_flight_does_nothing() -> None:
    halt = threading.Event()
    behind = behind_for(Recorder(), halt=halt)
    behind.drain()
    assert not halt.is_set()


TP0 = TopicPartition("t", 0)
TP1 = TopicPartition("t", 1)


def test_a_batch_stamped_before_a_revocation_does_not_advance_that_partition() -> None:
    cp = Checkpoint()
    stamped = cp.stamp([TP0, TP1])
    cp.forget({TP0})  # revoked while the batch was in flight
    cp.advance({TP0: 41, TP1: 9}, stamped)
    assert cp.pending == {TP1: 10}


def test_a_partition_revoked_and_assigned_again_is_still_not_advanced_by_the_old_batch() -> None:
    cp = Checkpoint()
    old = cp.stamp([TP0])
    cp.forget({TP0})
    # Back with this member; another one may have committed past the old batch meanwhile.
    new = cp.stamp([TP0])
    cp.advance({TP0: 5}, old)
    assert cp.pending == {}
    cp.advance({TP0: 60}, new)
    assert cp.pending == {TP0: 61}


@given(
    st.lists(
        st.tuples(st.sampled_from(["advance", "forget"]), st.integers(0, 1), st.integers(0, 99)),
        max_size=30,
    )
)
def test_without_a_revocation_a_stamped_advance_is_a_plain_advance(
    steps: list[tuple[str, int, int]],
) -> None:
    plain, stamped = Checkpoint(), Checkpoint()
    for op, p, offset in steps:
        tp = TopicPartition("t", p)
        if op == "forget":
            plain.forget({tp})
            stamped.forget({tp})
            continue
        plain.advance({tp: offset})
        stamped.advance({tp: offset}, stamped.stamp([tp]))
    assert plain.pending == stamped.pending


class SeekingConsumer:
    """What Checkpoint asks of a consumer on a revocation and an assignment."""

    def __init__(self) -> None:
        self.sought: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}

    async def commit_async(self, offsets: dict[TopicPartition, Any]) -> None:
        self.committed.update({tp: meta.offset for tp, meta in offsets.items()})

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp] = offset


def _revoke(cp: Checkpoint, partitions: set[TopicPartition]) -> None:
    asyncio.run(cp.commit_revoked(partitions))


def test_a_partition_revoked_with_a_batch_in_flight_is_read_again_from_what_is_durable() -> None:
    cp, consumer = Checkpoint(), SeekingConsumer()
    cp.consumer = consumer  # type: ignore[assignment]
    cp.hand_out({TP0: (0, 99), TP1: (0, 49)})
    cp.advance({TP0: 99, TP1: 49}, cp.stamp([TP0, TP1]))
    # The next batch, 100-199 of TP0 and 50-79 of TP1, is in flight at the revocation.
    cp.hand_out({TP0: (100, 199), TP1: (50, 79)})
    in_flight = cp.stamp([TP0, TP1])
    _revoke(cp, {TP0, TP1})
    assert consumer.committed == {TP0: 100, TP1: 50}
    # Only TP0 comes back: kafka-python kept its position (200); it is sought to 100.
    assert cp.rewind_assigned({TP0}) == {TP0: 100}
    assert consumer.sought == {TP0: 100}
    cp.advance({TP0: 199, TP1: 79}, in_flight)
    assert cp.pending == {}
    # The records read again are advanced under the new epoch, and committed.
    cp.hand_out({TP0: (100, 199)})
    cp.advance({TP0: 199}, cp.stamp([TP0]))
    assert cp.pending == {TP0: 200}


def test_a_first_batch_in_flight_rewinds_to_its_own_first_offset() -> None:
    cp, consumer = Checkpoint(), SeekingConsumer()
    cp.consumer = consumer  # type: ignore[assignment]
    cp.hand_out({TP0: (40, 59)})
    cp.stamp([TP0])
    _revoke(cp, {TP0})
    assert cp.rewind_assigned({TP0, TP1}) == {TP0: 40}


def test_a_rewind_applies_only_to_the_assignment_right_after_the_revocation() -> None:
    cp, consumer = Checkpoint(), SeekingConsumer()
    cp.consumer = consumer  # type: ignore[assignment]
    cp.hand_out({TP0: (0, 9)})
    _revoke(cp, {TP0})
    # TP0 went to another member; when it comes back later its position is fresh.
    assert cp.rewind_assigned({TP1}) == {}
    assert cp.rewind_assigned({TP0}) == {}
    assert consumer.sought == {}
    # Never handed out since its assignment: nothing to read again.
    _revoke(cp, {TP1})
    assert cp.rewind_assigned({TP1}) == {}


def test_a_partition_revoked_with_nothing_in_flight_keeps_its_position() -> None:
    cp, consumer = Checkpoint(), SeekingConsumer()
    cp.consumer = consumer  # type: ignore[assignment]
    cp.hand_out({TP0: (0, 99), TP1: (0, 49)})
    cp.advance({TP0: 99, TP1: 49}, cp.stamp([TP0, TP1]))
    # TP1's next batch is in flight; all that TP0 handed out is durable.
    cp.hand_out({TP1: (50, 79)})
    _revoke(cp, {TP0, TP1})
    assert cp.rewind_assigned({TP0, TP1}) == {TP1: 50}
    assert consumer.sought == {TP1: 50}


class _Gated(Recorder):
    """Stores only once its gate opens; batch 1 fails."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def write(self, batch: int) -> int:
        self.gate.wait(WAIT)
        if batch == 1:
            raise RuntimeError("refused")
        return super().write(batch)


def test_stored_gives_the_batch_in_flight_only_once_its_store_succeeded() -> None:
    rec = _Gated()
    behind = behind_for(rec)
    assert not behind.storing and behind.stored() is None
    behind.submit(0)
    assert behind.storing and behind.stored() is None
    rec.gate.set()
    job = behind._in_flight
    assert job is not None and job.done.wait(WAIT)
    assert not behind.storing and behind.stored() == 0
    # Advanced by the listener or not, settle still finishes it, once.
    behind.settle()
    assert rec.finished == [(0, 0)] and behind.stored() is None
    behind.submit(1)
    job = behind._in_flight
    assert job is not None and job.done.wait(WAIT)
    assert not behind.storing and behind.stored() is None  # its store failed
    with pytest.raises(RuntimeError, match="refused"):
        behind.settle()
    assert rec.finished == [(0, 0)]


def test_wait_until_pauses_on_kafkas_loop_until_done() -> None:
    # Driven by hand as kafka-python's loop drives it: each pause is its sleep event.
    assert io_thread.CAN_PAUSE
    state = {"done": False}
    waiting = io_thread.wait_until(lambda: state["done"], WAIT, threading.Event())
    for _ in range(3):
        event = waiting.send(None)
        assert (event.method, event.args) == ("_sleep", (0.005,))
    state["done"] = True
    with pytest.raises(StopIteration) as stopped:
        waiting.send(None)
    assert stopped.value.value is True


def test_wait_until_gives_up_at_its_deadline_or_the_stop_flag() -> None:
    out = io_thread.wait_until(lambda: False, 0.0, threading.Event())
    with pytest.raises(StopIteration) as stopped:
        out.send(None)
    assert stopped.value.value is False
    stop = threading.Event()
    stop.set()
    out = io_thread.wait_until(lambda: False, WAIT, stop)
    with pytest.raises(StopIteration) as stopped:
        out.send(None)
    assert stopped.value.value is False
