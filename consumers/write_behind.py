"""One batch stored on a thread of its own while the worker polls and decodes the next.

The worker's loop is otherwise serial: while the database stores a batch, the worker
waits, and while the worker decodes, the database waits. Here the store of batch N
(its dead letters, the database transaction, the refused records' dead letters) runs
on a writer thread while the worker's thread polls and decodes batch N+1; psycopg and
the Kafka clients release the GIL while they wait on a socket. The batch's COPY rows are
encoded on the worker's thread with the decoding (``ConsumerWorker.prepare``), so that
the writer holds the GIL little. The Python work of both threads still shares one GIL
and the cores PostgreSQL needs: where the workers and the database already keep every
core busy, the overlap gains little or nothing, and ``write_behind: false`` may be the
faster setting (BENCHMARKS.md). A second batch in flight, on a second writer and
connection, was measured and gains nothing there either.

What does not change: at most one batch is in flight; batches are stored in the order
they were polled; a batch's offsets are advanced and committed by the worker's thread
only after :meth:`WriteBehind.settle` saw its store finish (the database commit and
every dead letter acknowledged), or, at a revocation, by the rebalance listener once
:meth:`WriteBehind.stored` gives the batch (``ConsumerWorker.await_in_flight``): the
listener waits a bounded time for the batch in flight, without blocking kafka-python's
I/O thread, so that the revoked partitions' offsets include it and their next owner
does not read it again. A batch not stored by then (a slow database, an outage) is
left as before: its offsets are not advanced for a partition revoked meanwhile
(``Checkpoint.epochs``), and the new owner's redelivery of it is deduplicated by the
database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar, cast

log = logging.getLogger("purger.consumer")

T = TypeVar("T")
R = TypeVar("R")

# How often a worker waiting for its writer looks at the stop flag.
_STOP_CHECK_SECONDS = 0.5


class _InFlight(Generic[T, R]):
    def __init__(self, batch: T) -> None:
        self.batch = batch
        self.done = threading.Event()
        self.result: R | None = None
        self.error: BaseException | None = None


class WriteBehind(Generic[T, R]):
    """Runs ``write(batch)`` on a writer thread, one batch at a time, in order.

    ``halt`` is the writer's own stop flag (its retrier waits on it): set when the
    worker stops, so that a writer retrying an outage gives up with ``Stopping``.
    ``waited`` is told how long each settle waited for the writer.
    """

    def __init__(
        self,
        write: Callable[[T], R],
        finish: Callable[[T, R], None],
        *,
        stop: threading.Event,
        halt: threading.Event,
        name: str,
        waited: Callable[[float], None] = lambda _seconds: None,
    ) -> None:
        self._write = write
        self._finish = finish
        self._stop = stop
        self._halt = halt
        self._name = name
        self._waited = waited
        self._in_flight: _InFlight[T, R] | None = None

    @property
    def busy(self) -> bool:
        """True while a batch is in flight or finished but not yet settled."""
        return self._in_flight is not None

    @property
    def storing(self) -> bool:
        """True while the writer thread is still storing the batch in flight."""
        job = self._in_flight
        return job is not None and not job.done.is_set()

    def stored(self) -> T | None:
        """The batch in flight once its store succeeded, until it is settled; else None.

        For the rebalance listener, which may advance its offsets before settle does:
        advancing twice is harmless (forward only), and settle still finishes it once.
        """
        job = self._in_flight
        if job is None or not job.done.is_set() or job.error is not None:
            return None
        return job.batch

    def submit(self, batch: T) -> None:
        """Settle the batch in flight, then start storing ``batch``."""
        self.settle()
        job: _InFlight[T, R] = _InFlight(batch)
        self._in_flight = job
        # A daemon thread a batch (tens of microseconds against a store of hundreds
        # of milliseconds): a writer stuck in a driver call never keeps the process up.
        threading.Thread(target=self._run, args=(job,), name=self._name, daemon=True).start()

    def _run(self, job: _InFlight[T, R]) -> None:
        try:
            job.result = self._write(job.batch)
        except BaseException as exc:  # handed to the worker's thread in settle
            job.error = exc
        finally:
            job.done.set()

    def settle(self) -> None:
        """Wait for the batch in flight and finish it; its store's exception is raised here."""
        job = self._in_flight
        if job is None:
            return
        started = time.perf_counter()
        while not job.done.wait(_STOP_CHECK_SECONDS):
            if self._stop.is_set():
                self._halt.set()
        self._waited(time.perf_counter() - started)
        self._in_flight = None
        if job.error is not None:
            raise job.error
        self._finish(job.batch, cast(R, job.result))

    def drain(self) -> None:
        """On the way out: stop a writer that retries, wait for it, finish what it stored.

        A batch whose store failed (stopped, or an error the worker is already raising)
        is dropped: none of its offsets moves, so it is redelivered.
        """
        if self._in_flight is None:
            return
        self._halt.set()
        try:
            self.settle()  # forgets the batch whatever its outcome
        except Exception as exc:
            # Named by class only: a driver's message may quote data.
            log.warning(
                "the batch in flight was not stored (%s); it will be redelivered",
                exc.__class__.__name__,
            )


__all__ = ["WriteBehind"]
