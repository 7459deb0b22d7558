"""Section 3, purge under load: insert latency while a pass drops partitions.

A writer thread stores small batches through ``Storage.store`` (the consumer's
own write path) at a steady rate. Latency is one ``store`` call, wall clock.
Samples before the pass (after a one-second warm-up) are compared with samples
whose call overlapped the pass.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.config import BenchConfig
from benchmarks.passes import checkpoint, timed_pass
from benchmarks.workspace import Workspace
from examples import samples
from purger.policy import RetentionPolicy
from purger.records import decode
from purger.storage import Envelope, Storage

log = logging.getLogger("benchmarks")

CATEGORY = "cdr"
WARM_UP = 1.0
TAIL = 1.0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(q * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def summarise(latencies: list[float]) -> dict[str, Any]:
    """Count, p50, p99 and max in milliseconds."""
    return {
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 2) if latencies else None,
    }


@dataclass
class Writer:
    """Stores ``batch`` records every ``batch / rate`` seconds until stopped."""

    url: str
    policy: RetentionPolicy
    rate: int
    batch: int
    run_id: str
    samples: list[tuple[float, float]] = field(default_factory=list)  # (start, seconds)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start writing in a thread."""
        self._thread = threading.Thread(target=self._run, name="bench-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current batch."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _envelopes(self, start: int, rng: random.Random) -> list[Envelope]:
        category = self.policy.category(CATEGORY)
        now = datetime.now(UTC)
        out = []
        for i in range(start, start + self.batch):
            message = samples.message(CATEGORY, f"load-{self.run_id}-{i}", now, rng)
            record = decode(samples.encode(message), now=now, future_tolerance=timedelta(days=1))
            expires = category.expires_at(record.tenant, record.occurred_at)
            out.append(Envelope(record, expires, category.topic, 0, i))
        return out

    def _run(self) -> None:
        rng = random.Random(7)
        interval = self.batch / self.rate
        with Storage(self.url, self.policy, application="bench-writer") as storage:
            due = time.perf_counter()
            i = 0
            while not self._stop.is_set():
                batch = self._envelopes(i, rng)
                i += self.batch
                if self._stop.wait(max(0.0, due - time.perf_counter())):
                    break
                started = time.perf_counter()
                try:
                    storage.store({CATEGORY: batch})
                except Exception:
                    self.errors += 1
                    log.exception("writer: store failed")
                self.samples.append((started, time.perf_counter() - started))
                # A steady rate: a late batch does not shift the schedule of the next.
                due += interval


def run(ws: Workspace, config: BenchConfig, label: str) -> dict[str, Any]:
    """Write steadily, run a pass in the middle, compare latencies."""
    url = config.database_url(ws.db_name(label))
    checkpoint(url)
    writer = Writer(url, ws.policy, config.load_rate, config.load_batch, ws.run_id)
    writer.start()
    began = time.perf_counter()
    try:
        time.sleep(WARM_UP + config.load_baseline_seconds)  # the baseline is wall-clock time
        result = timed_pass(url, ws.policy)
        time.sleep(TAIL)  # samples after the pass, so that the last overlapping one completes
    finally:
        writer.stop()
    ws.drop_database(label)
    pass_start, pass_end = result.pop("started"), result.pop("ended")
    before = [s for t, s in writer.samples if began + WARM_UP <= t and t + s < pass_start]
    during = [s for t, s in writer.samples if t < pass_end and t + s > pass_start]
    b, d = summarise(before), summarise(during)
    return {
        "rate_per_second": config.load_rate,
        "batch": config.load_batch,
        "pass": result,
        "before": b,
        "during": d,
        "writer_errors": writer.errors,
        "p99_during_vs_before": round(d["p99_ms"] / b["p99_ms"], 2)
        if d["p99_ms"] and b["p99_ms"]
        else None,
    }
