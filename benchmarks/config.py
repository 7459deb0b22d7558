"""Size knobs and service addresses, from ``BENCH_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from harness.loopback import require_loopback

SECTIONS = ("ingest", "purge", "load", "holds", "connect", "partman")
# The sizes the issues name; on 2 cores the whole run, comparisons included, takes about
# 17 minutes with them. Smaller knobs (e.g. BENCH_RECORDS=200000) give a quick look.
DEFAULT_RECORDS = 1_000_000
ISSUE_RECORDS = 1_000_000
ISSUE_EXPIRED = 5_000_000
# Issue 11's backlog for the comparison with Kafka Connect.
ISSUE_COMPARE_RECORDS = 500_000


class BenchConfigError(ValueError):
    """A knob or address the benchmarks refuse."""


def _int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BenchConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise BenchConfigError(f"{name}={value} is below its minimum {minimum}")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise BenchConfigError(f"{name}={raw!r} is not a number") from None


def _ints(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        values = tuple(int(v.strip().replace("_", "")) for v in raw.split(",") if v.strip())
    except ValueError:
        raise BenchConfigError(f"{name}={raw!r} is not a comma-separated list of numbers") from None
    if any(v < 0 for v in values):
        raise BenchConfigError(f"{name}: counts cannot be negative")
    return values


@dataclass(frozen=True)
class BenchConfig:
    """Everything a run is parameterised by."""

    records: int
    naive_records: int
    topic_partitions: int
    producers: int
    batch_max_records: int
    purge_expired: int
    purge_live: int
    purge_partitions: int
    load_rate: int
    load_batch: int
    load_baseline_seconds: float
    hold_counts: tuple[int, ...]
    sections: tuple[str, ...]
    # The comparisons with Kafka Connect and pg_partman (sections connect, partman).
    compare_records: int
    compare_rounds: int
    partman_expired: int
    server_url: str
    kafka_bootstrap: str
    results_dir: Path
    markdown: Path

    def database_url(self, name: str) -> str:
        """The URL of database ``name`` on the benchmark server."""
        return urlunsplit(urlsplit(self.server_url)._replace(path=f"/{name}"))

    def as_dict(self) -> dict[str, object]:
        """The knobs, for the result file (no addresses: they are loopback anyway)."""
        return {
            "records": self.records,
            "naive_records": self.naive_records,
            "topic_partitions": self.topic_partitions,
            "producers": self.producers,
            "batch_max_records": self.batch_max_records,
            "purge_expired": self.purge_expired,
            "purge_live": self.purge_live,
            "purge_partitions": self.purge_partitions,
            "load_rate": self.load_rate,
            "load_batch": self.load_batch,
            "load_baseline_seconds": self.load_baseline_seconds,
            "hold_counts": list(self.hold_counts),
            "sections": list(self.sections),
            "compare_records": self.compare_records,
            "compare_rounds": self.compare_rounds,
            "partman_expired": self.partman_expired,
        }


def load_config() -> BenchConfig:
    """Read the ``BENCH_*`` knobs; BenchConfigError names the one at fault."""
    # An empty variable (as `make` exports an unset knob) counts as unset.
    server = (
        os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("PURGER_TEST_DATABASE_URL")
        or "postgresql://purger:purger@127.0.0.1:5432/purger"
    )
    kafka = (
        os.environ.get("BENCH_KAFKA_BOOTSTRAP")
        or os.environ.get("PURGER_TEST_KAFKA_BOOTSTRAP")
        or "127.0.0.1:19092"
    )
    # Benchmarks never leave loopback.
    require_loopback(server, "BENCH_DATABASE_URL", BenchConfigError)
    require_loopback(kafka, "BENCH_KAFKA_BOOTSTRAP", BenchConfigError)
    raw_sections = os.environ.get("BENCH_SECTIONS", "").strip()
    sections = tuple(s.strip() for s in raw_sections.split(",") if s.strip()) or SECTIONS
    if "holds" in sections:
        # The hold cost is measured against the pass at M of the purge section.
        sections = (*sections, "purge")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise BenchConfigError(
            f"BENCH_SECTIONS: unknown {', '.join(unknown)}; known: {', '.join(SECTIONS)}"
        )
    config = BenchConfig(
        records=_int("BENCH_RECORDS", DEFAULT_RECORDS, 1000),
        naive_records=_int("BENCH_NAIVE_RECORDS", 20_000, 100),
        topic_partitions=_int("BENCH_TOPIC_PARTITIONS", 4, 1),
        producers=_int("BENCH_PRODUCERS", 2, 1),
        batch_max_records=_int("BENCH_BATCH_MAX_RECORDS", 5000, 1),
        purge_expired=_int("BENCH_PURGE_EXPIRED", ISSUE_EXPIRED, 3000),
        purge_live=_int("BENCH_PURGE_LIVE", 1_000_000, 0),
        purge_partitions=_int("BENCH_PURGE_PARTITIONS", 30, 1),
        load_rate=_int("BENCH_LOAD_RATE", 200, 1),
        load_batch=_int("BENCH_LOAD_BATCH", 5, 1),
        load_baseline_seconds=_float("BENCH_LOAD_BASELINE_SECONDS", 10.0),
        hold_counts=_ints("BENCH_HOLD_COUNTS", (0, 1000, 100_000)),
        sections=tuple(s for s in SECTIONS if s in sections),
        compare_records=_int("BENCH_CONNECT_RECORDS", ISSUE_COMPARE_RECORDS, 1000),
        compare_rounds=_int("BENCH_COMPARE_ROUNDS", 3, 1),
        partman_expired=_int("BENCH_PARTMAN_EXPIRED", ISSUE_EXPIRED, 3000),
        server_url=server,
        kafka_bootstrap=kafka,
        results_dir=Path(os.environ.get("BENCH_RESULTS_DIR") or "bench-results"),
        markdown=Path(os.environ.get("BENCH_MARKDOWN") or "BENCHMARKS.md"),
    )
    if config.naive_records > config.records:
        raise BenchConfigError("BENCH_NAIVE_RECORDS cannot exceed BENCH_RECORDS")
    if max(config.hold_counts, default=0) > config.purge_expired // 2:
        raise BenchConfigError("BENCH_HOLD_COUNTS: at most half of BENCH_PURGE_EXPIRED")
    return config
