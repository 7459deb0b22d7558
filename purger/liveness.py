"""Liveness from progress: a worker that has neither polled nor finished a batch is dead.

Each consumer worker gets a heartbeat, a shared slot holding the monotonic time
of its last poll, finished batch or deliberate retry. ``/healthz`` fails when any
slot is older than the timeout: a worker stuck inside a call (a half-open
socket, a deadlock) is restarted by Kubernetes, one that waits out an outage
with backoff is not. The slots are ``multiprocessing`` values, so that worker
processes report to the parent that serves ``/healthz``; ``time.monotonic`` is
system-wide on Linux, so their clocks agree.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from typing import Any


class Liveness:
    """The heartbeats of this process's workers, and the verdict on them."""

    def __init__(self, timeout_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self._slots: dict[str, Any] = {}
        self._lock = threading.Lock()

    def slot(self, name: str, context: Any = None) -> Any:
        """A new heartbeat slot (a shared double) named ``name``, beaten now."""
        value = (context or mp.get_context("spawn")).Value("d", self.clock(), lock=False)
        with self._lock:
            self._slots[name] = value
        return value

    def remove(self, name: str) -> None:
        """Stop watching ``name`` (its worker stopped on purpose)."""
        with self._lock:
            self._slots.pop(name, None)

    def stale(self) -> list[str]:
        """The workers whose last heartbeat is older than the timeout."""
        now = self.clock()
        with self._lock:
            slots = dict(self._slots)
        return sorted(n for n, v in slots.items() if now - v.value > self.timeout_seconds)

    def __call__(self) -> bool:
        """True while every worker made progress within the timeout."""
        return not self.stale()


def beater(slot: Any, clock: Callable[[], float] = time.monotonic) -> Callable[[], None]:
    """The heartbeat function that a worker calls on progress."""

    def beat() -> None:
        slot.value = clock()

    return beat
