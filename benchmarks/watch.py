"""Watching a consumer run from outside: peak memory of its processes, committed offsets."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaAdminClient, TopicPartition
from kafka.errors import KafkaError

from benchmarks.machine import stat_cpu_seconds


def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text(encoding="utf-8").split()]
        except (OSError, ValueError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def role_of(pid: int, root: int) -> str:
    """``main`` for the command itself, ``worker`` for a spawned consumer, else ``helper``."""
    if pid == root:
        return "main"
    return "worker" if "spawn_main" in _cmdline(pid) else "helper"


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid`` so far."""
    try:
        return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text(encoding="utf-8"))
    except OSError:
        return None


@dataclass
class ProcessPeak:
    """The high-water mark of one process's resident memory (VmHWM), and its CPU time."""

    pid: int
    role: str
    peak_kib: int = 0
    cpu_seconds: float = 0.0


@dataclass
class ConsumerWatch:
    """Samples memory of a process tree and a group's committed offsets every ``interval``."""

    root: int
    bootstrap: str
    group: str
    ends: dict[TopicPartition, int]
    interval: float = 0.1
    processes: dict[int, ProcessPeak] = field(default_factory=dict)
    first_commit_at: float | None = None
    all_committed_at: float | None = None
    # What the last offsets sample saw: partitions committed to their end, and failed reads.
    partitions_at_end: int = 0
    offset_read_errors: int = 0
    last_offset_error: str | None = None
    # Set once every partition's committed offset reached its end.
    done: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sampling in a thread."""
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (after one last sample)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap.split(","),
            client_id="bench-watch",
            request_timeout_ms=10000,
        )
        try:
            while True:
                self._sample_memory()
                if self.all_committed_at is None:
                    self._sample_offsets(admin)
                if self._stop.wait(self.interval):
                    break
            self._sample_memory()
            # A last commit just before the process exited, between two samples: seen
            # now, after the exit (a later end, never an earlier one). Retried, so that
            # a read failing just then is not taken for offsets left uncommitted.
            for _ in range(20):
                if self.all_committed_at is not None or self._sample_offsets(admin):
                    break
                time.sleep(0.5)
        finally:
            admin.close()

    def _sample_memory(self) -> None:
        for pid in [self.root, *descendants(self.root)]:
            hwm = _status_kib(pid, "VmHWM")
            if hwm is None:
                continue
            peak = self.processes.get(pid)
            if peak is None:
                peak = self.processes[pid] = ProcessPeak(pid, role_of(pid, self.root))
            peak.peak_kib = max(peak.peak_kib, hwm)
            cpu = _cpu_seconds(pid)
            if cpu is not None:
                peak.cpu_seconds = max(peak.cpu_seconds, cpu)

    def _sample_offsets(self, admin: KafkaAdminClient) -> bool:
        """One read of the group's committed offsets; False when the read failed."""
        try:
            offsets = admin.list_group_offsets({self.group: None}).get(self.group, {})
        except KafkaError as exc:
            self.offset_read_errors += 1
            self.last_offset_error = exc.__class__.__name__
            return False
        now = time.time()
        committed = {tp: meta.offset for tp, meta in offsets.items() if tp in self.ends}
        if self.first_commit_at is None and any(v > 0 for v in committed.values()):
            self.first_commit_at = now
        self.partitions_at_end = sum(committed.get(tp, -1) >= end for tp, end in self.ends.items())
        if self.partitions_at_end == len(self.ends):
            self.all_committed_at = now
            self.done.set()
        return True

    def unobserved(self, first: float | None) -> str:
        """What a run's problem line adds when its start (``first``) or end is unknown."""
        if first is None:
            return ", start not observed"
        if self.all_committed_at is not None:
            return ""
        why = f"{self.partitions_at_end} of {len(self.ends)} partitions committed to their end"
        if self.offset_read_errors:
            why += f"; {self.offset_read_errors} offset reads failed ({self.last_offset_error})"
        return f", end not observed: {why}"

    def cpu_seconds(self) -> float:
        """CPU seconds used by the whole process tree (as last sampled, up to 0.1 s early)."""
        return round(sum(p.cpu_seconds for p in self.processes.values()), 2)

    def peaks_mb(self, role: str) -> list[float]:
        """Peak RSS in MB (10^6 bytes) of every process of ``role`` seen."""
        return [
            round(p.peak_kib * 1024 / 1e6, 1) for p in self.processes.values() if p.role == role
        ]
