"""Where and on what a run happened: date, CPU, cores, memory, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (the platform's processor name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float:
    """Total RAM in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def commit() -> str:
    """``git rev-parse --short HEAD``, plus ``-dirty`` when the tree has any change."""
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{head}-dirty" if _git("status", "--porcelain") else head


def describe() -> dict[str, object]:
    """The machine and code a run measured."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 0,
        "ram_gib": memory_gib(),
        "commit": commit(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average_at_start": load_average(),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the figures."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


_TICKS = os.sysconf("SC_CLK_TCK")


def stat_cpu_seconds(stat: str, *, children: bool = False) -> float:
    """User plus system CPU seconds in a ``/proc/<pid>/stat`` text (and its reaped children's)."""
    # The command name (field 2) may hold spaces: count fields after its closing ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def service_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) that PostgreSQL and the Kafka broker have used so far.

    The difference over a run is their share of its work. PostgreSQL forks a backend
    per connection and reaps it when it exits, so the postmaster's reaped children
    count too (a backend alive at both ends counts by its own time). Anything else
    using them meanwhile counts as well: the benchmark runs alone.
    """
    out = {"postgresql": 0.0, "broker": 0.0}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if comm == "postgres":
            out["postgresql"] += stat_cpu_seconds(stat, children=True)
        elif b"kafka.Kafka" in argv:
            out["broker"] += stat_cpu_seconds(stat)
    return out


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Seconds each service used between two ``service_cpu_seconds`` readings."""
    return {name: round(after[name] - before[name], 2) for name in before}


def per_record(seconds: dict[str, float], records: int) -> dict[str, float]:
    """Each of ``seconds`` in µs a record."""
    return {k: round(v / records * 1e6, 1) for k, v in seconds.items()} if records else {}
