"""The processes of a soak run: purger workers kept alive, and one-shot commands.

Every child starts in a session of its own, so a Ctrl-C in the terminal reaches only the
runner, which then ends each child by its own id. A service restart is the exception: the
broker it starts lives in the restart script's process group, so it is waited for, never
killed as a group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("soak")

REPO = Path(__file__).resolve().parents[1]
SERVICES = REPO / "scripts" / "services.sh"
_EXCEPTION_LINE = re.compile(
    r"([A-Za-z_][\w.]*(?:Error|Exception|Unavailable|Timeout|Exit)\b:?.*|worker failed:.*"
    r"|purger: .*)"
)


def purger_command(*args: str) -> list[str]:
    """``python -m purger.cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "purger.cli", *args]


class Children:
    """Every process the run started, to end them all on the way out."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.protected: set[int] = set()
        self.serial = 0

    def start(
        self,
        args: list[str],
        *,
        env: dict[str, str],
        name: str,
        protect: bool = False,
    ) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``args`` with stdout and stderr into a log file of its own."""
        self.serial += 1
        path = self.log_dir / f"{self.serial:04d}-{name}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                args,
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        if protect:
            self.protected.add(proc.pid)
        self.procs = [p for p in self.procs if p.returncode is None]
        return proc, path

    def end_all(self, protected_wait: float = 180.0) -> None:
        """SIGKILL every child still running; service restarts get time to finish first."""
        for proc in list(self.procs):
            if proc.pid in self.protected:
                continue
            if proc.poll() is None:
                # Not reaped, so the pid (and its own process group) is still this child's.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for proc in list(self.procs):
            if proc.pid not in self.protected or proc.poll() is not None:
                continue
            log.warning("waiting for a service restart (pid %s) to finish", proc.pid)
            try:
                proc.wait(protected_wait)
            except subprocess.TimeoutExpired:
                # Only the script itself: the service it started stays up.
                proc.kill()
                proc.wait(10)


def last_error(path: Path) -> str:
    """The most telling line at the end of a log: the last exception or failure line."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines[-200:]):
        match = _EXCEPTION_LINE.search(line.strip())
        if match:
            text = match.group(1)
            # Offsets, pids and numbers differ between occurrences of one problem.
            return re.sub(r"\d+", "N", text)[:160]
    return (lines[-1].strip()[:160] if lines else "empty log") or "empty log"


@dataclass
class Worker:
    """One `purger run --no-scheduler` process in a slot of the pool."""

    slot: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float
    ended_by_us: bool = False
    paused_until: float | None = None


@dataclass
class WorkerPool:
    """Keeps ``size`` workers alive: a worker that dies is replaced after a short backoff."""

    children: Children
    env: dict[str, str]
    size: int
    workers: dict[int, Worker] = field(default_factory=dict)
    next_start: dict[int, float] = field(default_factory=dict)
    failures_in_row: dict[int, int] = field(default_factory=dict)
    started: int = 0
    kills: int = 0
    pauses: int = 0
    crashes: Counter[str] = field(default_factory=Counter)
    stopping: bool = False

    def tick(self, now: float) -> None:
        """Reap ended workers, resume paused ones that are due, fill empty slots."""
        for slot, worker in list(self.workers.items()):
            if worker.paused_until is not None and now >= worker.paused_until:
                self._signal(worker, signal.SIGCONT)
                worker.paused_until = None
            code = worker.proc.poll()
            if code is None:
                continue
            del self.workers[slot]
            if worker.ended_by_us:
                self.failures_in_row[slot] = 0
                self.next_start[slot] = now + 0.2
                continue
            reason = f"exit {code}: {last_error(worker.log_path)}"
            self.crashes[reason] += 1
            log.info("worker %s ended by itself (%s)", slot, reason)
            ran = now - worker.started
            self.failures_in_row[slot] = 0 if ran > 30 else self.failures_in_row.get(slot, 0) + 1
            self.next_start[slot] = now + min(0.5 * 2 ** self.failures_in_row[slot], 8.0)
        if self.stopping:
            return
        for slot in range(self.size):
            if slot not in self.workers and now >= self.next_start.get(slot, 0.0):
                self._start(slot, now)

    def _start(self, slot: int, now: float) -> None:
        self.started += 1
        env = {**self.env, "PURGER_KAFKA_CLIENT_ID": f"{self.env['PURGER_KAFKA_CLIENT_ID']}-{slot}"}
        proc, path = self.children.start(
            purger_command("run", "--no-scheduler"), env=env, name=f"worker{slot}"
        )
        self.workers[slot] = Worker(slot, proc, path, now)

    def alive(self) -> list[Worker]:
        """Workers running (paused ones included)."""
        return [w for w in self.workers.values() if w.proc.poll() is None]

    @staticmethod
    def _signal(worker: Worker, sig: signal.Signals) -> None:
        if worker.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.proc.pid, sig)

    def kill_one(self, rng: random.Random) -> bool:
        """SIGKILL a random running worker (paused or not); False when none runs."""
        candidates = self.alive()
        if not candidates:
            return False
        worker = rng.choice(candidates)
        worker.ended_by_us = True
        self._signal(worker, signal.SIGKILL)
        self.kills += 1
        log.info("SIGKILL worker %s (pid %s)", worker.slot, worker.proc.pid)
        return True

    def pause_one(self, rng: random.Random, seconds: float, now: float) -> bool:
        """SIGSTOP a random running, unpaused worker for ``seconds``; False when none."""
        candidates = [w for w in self.alive() if w.paused_until is None]
        if not candidates:
            return False
        worker = rng.choice(candidates)
        self._signal(worker, signal.SIGSTOP)
        worker.paused_until = now + seconds
        self.pauses += 1
        log.info("SIGSTOP worker %s (pid %s) for %.1f s", worker.slot, worker.proc.pid, seconds)
        return True

    def resume_all(self) -> None:
        """SIGCONT every paused worker now."""
        for worker in self.workers.values():
            if worker.paused_until is not None:
                self._signal(worker, signal.SIGCONT)
                worker.paused_until = None

    def stop_all(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (they finish their batch and commit), SIGKILL stragglers."""
        self.stopping = True
        self.resume_all()
        for worker in self.workers.values():
            worker.ended_by_us = True
            self._signal(worker, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            try:
                worker.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("worker %s ignored SIGTERM for %.0f s: SIGKILL", worker.slot, timeout)
                self._signal(worker, signal.SIGKILL)
                worker.proc.wait(10)
        self.workers.clear()


@dataclass
class Task:
    """A one-shot command of the chaos (purge pass, hold change, service restart)."""

    kind: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started: float
    kill_at: float | None = None  # SIGKILL it then (a purge pass killed half-way)
    hold_id: int | None = None
    digits: str | None = None

    def output(self) -> str:
        """Its stdout and stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
