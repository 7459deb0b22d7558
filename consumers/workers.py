"""Running N consumer processes in one group, so that ingestion uses every core."""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import queue
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from consumers.loop import ConsumerWorker
from consumers.summary import IngestSummary
from purger import logs
from purger.liveness import Liveness, beater
from purger.metrics import Metrics
from purger.policy import RetentionPolicy
from purger.settings import Settings

log = logging.getLogger("purger.workers")


def _tune_gc() -> None:
    # Decoding allocates a few dozen short-lived containers a record, and with the
    # default thresholds (700, 10, 10) the collector ran a full collection every ten
    # thousand records or so, 65 ms each over the whole heap: 3-5 µs a record, about a
    # tenth of a worker's CPU. Records hold no reference cycles, so rarer collections
    # free the same; what lives as long as the process (modules, policy, metrics) is
    # moved out of the collector's way.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


# With write-behind the writer thread gives up the GIL at every write of its COPY
# and waits, each time, for the decoding thread to be made to release it: after 5 ms
# by default, which left one worker's writer twice as slow as without write-behind.
# 1 ms: one worker 22,100 records/s against 20,700 (medians of 3 runs of the
# benchmark's backlog); 0.5 ms gained no more.
WRITE_BEHIND_SWITCH_INTERVAL = 0.001


def _tune_switching(write_behind: bool) -> None:
    if write_behind:
        sys.setswitchinterval(WRITE_BEHIND_SWITCH_INTERVAL)


def run_inline(
    settings: Settings,
    policy: RetentionPolicy,
    metrics: Metrics,
    stop: threading.Event,
    *,
    until_idle: bool,
    liveness: Liveness | None = None,
) -> IngestSummary:
    """One worker in this process."""
    _tune_gc()
    _tune_switching(settings.write_behind)
    beat: Callable[[], None] = lambda: None  # noqa: E731 - a no-op heartbeat
    if liveness is not None:
        beat = beater(liveness.slot("worker-0"))
    try:
        return ConsumerWorker(
            settings, policy, metrics, stop, until_idle=until_idle, beat=beat
        ).run()
    finally:
        if liveness is not None:
            liveness.remove("worker-0")


def _child(
    settings: Settings,
    policy: RetentionPolicy,
    worker_id: int,
    *,
    until_idle: bool,
    stop: Any,
    results: Any,
    heartbeat: Any = None,
) -> None:
    logs.configure(settings.log_format, settings.log_level)
    local_stop = threading.Event()

    def watch() -> None:
        stop.wait()
        local_stop.set()

    threading.Thread(target=watch, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: local_stop.set())
    signal.signal(signal.SIGINT, lambda *_: local_stop.set())
    metrics = Metrics(categories=policy.categories, topics=policy.by_topic())
    _tune_gc()
    _tune_switching(settings.write_behind)
    worker = ConsumerWorker(
        settings,
        policy,
        metrics,
        local_stop,
        until_idle=until_idle,
        worker_id=worker_id,
        beat=beater(heartbeat) if heartbeat is not None else (lambda: None),
    )
    try:
        summary = worker.run()
    except BaseException as exc:
        results.put((worker_id, None, f"{exc.__class__.__name__}: {exc}"))
        raise
    results.put((worker_id, summary, None))


def run_processes(
    settings: Settings,
    policy: RetentionPolicy,
    workers: int,
    stop: threading.Event,
    *,
    until_idle: bool,
    liveness: Liveness | None = None,
) -> tuple[IngestSummary, list[IngestSummary], list[str]]:
    """Run ``workers`` processes; return the total, each worker's summary and errors."""
    ctx = mp.get_context("spawn")
    mp_stop = ctx.Event()
    results = ctx.Queue()
    slots = [liveness.slot(f"worker-{i}", ctx) if liveness else None for i in range(workers)]
    procs = [
        ctx.Process(
            target=_child,
            args=(settings, policy, i),
            kwargs={
                "until_idle": until_idle,
                "stop": mp_stop,
                "results": results,
                "heartbeat": slots[i],
            },
            name=f"purger-consumer-{i}",
        )
        for i in range(workers)
    ]
    for proc in procs:
        proc.start()
    summaries: list[IngestSummary] = []
    errors: list[str] = []
    pending = workers
    while pending:
        if stop.is_set():
            mp_stop.set()
        try:
            worker_id, summary, error = results.get(timeout=0.5)
        except queue.Empty:
            if all(not p.is_alive() for p in procs) and results.empty():
                dead = [p.name for p in procs if p.exitcode not in (0, None)]
                errors.extend(f"{name} exited without a result" for name in dead)
                break
            continue
        pending -= 1
        if liveness is not None:
            liveness.remove(f"worker-{worker_id}")
        if error is not None:
            errors.append(f"worker {worker_id}: {error}")
            mp_stop.set()
        else:
            summaries.append(summary)
    for proc in procs:
        proc.join(timeout=60)
    total = IngestSummary()
    for s in summaries:
        total.add(s)
    return total, summaries, errors
