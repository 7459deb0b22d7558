"""The chaos of a soak run: a random schedule that guarantees the minimums, and its state.

Events fall in the first 85% of the run, so the services and workers are back before the
traffic stops. Service restarts are spread over the window one at a time; worker kills,
pauses, purge passes and hold changes fall at uniformly random moments. An event that cannot
happen when it is due (no worker running, a hold command refused during an outage) is
retried a little later; whatever has not happened when the traffic stops counts against the
minimums.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass, field

from soak.config import SoakConfig

RESTART_KAFKA = "restart_kafka"
RESTART_POSTGRES = "restart_postgres"
KILL = "kill_worker"
PAUSE = "pause_worker"
PURGE = "purge"
PURGE_KILL = "purge_killed"
HOLD = "hold_change"
# `purger purge` exit codes (purger/exits.py).
PASS_EXITS = {0: "done", 1: "failed", 3: "nothing to do", 4: "contended", 5: "timed out"}


@dataclass(order=True)
class Event:
    """An action due ``at`` seconds after the traffic started."""

    at: float
    action: str = field(compare=False)


def plan(config: SoakConfig, rng: random.Random) -> list[Event]:
    """The run's events, at least the configured minimum of each kind."""
    duration = config.seconds
    lo, hi = 0.08 * duration, 0.85 * duration
    events: list[Event] = []
    restarts = [RESTART_KAFKA] * config.broker_restarts + [
        RESTART_POSTGRES
    ] * config.postgres_restarts
    rng.shuffle(restarts)
    if restarts:
        segment = (hi - lo) / len(restarts)
        for i, action in enumerate(restarts):
            events.append(Event(lo + segment * i + rng.uniform(0, 0.4 * segment), action))

    def uniform(action: str, count: int) -> None:
        events.extend(Event(rng.uniform(lo, hi), action) for _ in range(count))

    def count(minimum: int, per_second: float) -> int:
        return max(minimum, round(duration * per_second)) if minimum else 0

    # A SIGKILLed member holds up the whole group until its session times out (45 s by
    # kafka-python's default), so kills beyond the minimum are few.
    uniform(KILL, count(config.worker_kills, 1 / 24))
    uniform(PAUSE, count(config.pauses, 1 / 40))
    purges = count(config.purge_passes, 1 / 15)
    uniform(PURGE, purges)
    uniform(PURGE_KILL, round(purges / 5))
    uniform(HOLD, count(config.hold_changes, 1 / 30))
    heapq.heapify(events)
    return events


@dataclass
class ChaosLog:
    """What the chaos did, for the report and the minimum checks."""

    broker_restarts: int = 0
    postgres_restarts: int = 0
    restart_failures: int = 0
    worker_kills: int = 0
    pauses: int = 0
    holds_placed: int = 0
    holds_released: int = 0
    hold_failures: int = 0
    purge_exits: Counter[int] = field(default_factory=Counter)
    purge_killed: int = 0
    purge_rows: int = 0

    @property
    def purge_passes(self) -> int:
        """Passes that ran to an answer (done, nothing to do, contended, failed)."""
        return sum(n for code, n in self.purge_exits.items() if code >= 0)

    def shortfalls(self, config: SoakConfig) -> list[str]:
        """Each minimum the run did not reach."""
        out = []
        for what, done, minimum in (
            ("broker restarts", self.broker_restarts, config.broker_restarts),
            ("PostgreSQL restarts", self.postgres_restarts, config.postgres_restarts),
            ("worker SIGKILLs", self.worker_kills, config.worker_kills),
            ("SIGSTOP pauses", self.pauses, config.pauses),
            ("hold changes", self.holds_placed + self.holds_released, config.hold_changes),
            ("purge passes", self.purge_passes, config.purge_passes),
        ):
            if done < minimum:
                out.append(f"{what} {done} < {minimum}")
        return out

    def summary(self, config: SoakConfig) -> str:
        """One paragraph: what happened, against the minimums."""
        codes = ", ".join(
            f"{n} {PASS_EXITS.get(code, f'exit {code}')}"
            for code, n in sorted(self.purge_exits.items())
        )
        failed = (
            f", {self.restart_failures} service restarts FAILED" if self.restart_failures else ""
        )
        return (
            f"broker restarts {self.broker_restarts} (min {config.broker_restarts}), "
            f"PostgreSQL restarts {self.postgres_restarts} (min {config.postgres_restarts}), "
            f"worker SIGKILLs {self.worker_kills} (min {config.worker_kills}), "
            f"SIGSTOP pauses {self.pauses} (min {config.pauses}), "
            f"holds placed {self.holds_placed} / released {self.holds_released} "
            f"(min {config.hold_changes} changes; {self.hold_failures} refused during outages), "
            f"purge passes {self.purge_passes} (min {config.purge_passes}: {codes or 'none'}), "
            f"{self.purge_killed} purge passes SIGKILLed half-way{failed}"
        )
