"""A pause for the rebalance listener, on kafka-python's I/O thread, that blocks nothing.

kafka-python 3 runs the listener's coroutines on its I/O thread, the thread that also
sends the group's requests and heartbeats: a blocking wait there stalls them, and a
blocking consumer call raises. Its own coroutines wait with its event loop's sleep
event, which lets the loop's other tasks run meanwhile. kafka-python has no public name
for that event, so it is looked up: a release without it leaves ``CAN_PAUSE`` False,
and the listener then does not wait (a batch in flight at a revocation is then read
again by the partitions' next owner, and deduplicated by the database).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

try:
    from kafka.net.selector import KernelEvent as _KernelEvent
    from kafka.net.selector import NetworkSelector as _NetworkSelector
except ImportError:  # pragma: no cover - a kafka-python release without them
    _KernelEvent = _NetworkSelector = None

# The loop runs a KernelEvent by calling its own method of that name.
_SLEEP = "_sleep"

CAN_PAUSE: bool = _KernelEvent is not None and hasattr(_NetworkSelector, _SLEEP)


async def wait_until(
    done: Callable[[], bool], seconds: float, stop: threading.Event, every: float = 0.005
) -> bool:
    """Pause until ``done()``, the stop flag or ``seconds`` passed; returns ``done()``.

    Without the pause (``CAN_PAUSE`` False) it does not wait at all.
    """
    deadline = time.monotonic() + seconds
    while CAN_PAUSE and not done() and not stop.is_set() and time.monotonic() < deadline:
        await _KernelEvent(_SLEEP, every)
    return done()


__all__ = ["CAN_PAUSE", "wait_until"]
