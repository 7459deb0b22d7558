"""Realistic sample traffic for the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

TENANTS = ("bakkerij-de-vries", "transport-noord", "lenex-support", "zorggroep-west")


def _msisdn(rng: random.Random) -> str:
    # Producers write numbers differently; normalisation must make them equal.
    digits = f"6{rng.randrange(10**7, 10**8)}"
    return rng.choice((f"+31{digits}", f"0{digits}", f"0031{digits}"))


def message(
    category: str, record_id: str, occurred_at: datetime, rng: random.Random
) -> dict[str, Any]:
    """One contract-conforming message of ``category`` (about 300 bytes as JSON)."""
    base: dict[str, Any] = {
        "record_id": record_id,
        "occurred_at": occurred_at.isoformat(),
        "tenant": rng.choice(TENANTS),
    }
    if category == "cdr":
        base["subjects"] = {
            "msisdn": [_msisdn(rng), _msisdn(rng)],
            "imsi": [f"20408{rng.randrange(10**9, 10**10)}"],
            "imei": [f"35693803{rng.randrange(10**6, 10**7)}"],
        }
        base["call"] = {
            "direction": rng.choice(("incoming", "outgoing")),
            "duration_s": rng.randrange(1, 3600),
            "cell_id": f"20408-{rng.randrange(1000, 9999)}-{rng.randrange(10000, 99999)}",
            "service": rng.choice(("mobile", "voip")),
        }
    elif category == "call_recordings":
        base["subjects"] = {"msisdn": [_msisdn(rng)]}
        base["recording"] = {
            "uri": f"s3://recordings/{occurred_at:%Y/%m/%d}/{record_id}.opus",
            "duration_s": rng.randrange(30, 1800),
            "agent": f"agent-{rng.randrange(1, 60)}",
        }
    elif category == "interception":
        base["subjects"] = {
            "ip": [f"2a02:a45f:{rng.randrange(1, 999)}::{rng.randrange(1, 9999)}"],
            "email": [f"User{rng.randrange(1, 10**6)}@Example.NL"],
        }
        base["traffic"] = {
            "kind": rng.choice(("email", "voip", "internet")),
            "bytes": rng.randrange(100, 10**7),
            "request_ref": f"INFO-2026-{rng.randrange(1, 9999):04d}",
        }
    else:
        base["subjects"] = {
            "cookie_id": [f"{rng.getrandbits(64):016x}-{rng.getrandbits(32):08x}"],
            "ip": [f"192.0.2.{rng.randrange(1, 255)}"],
        }
        base["visit"] = {
            "path": rng.choice(("/zakelijk/internet", "/telefonie", "/contact", "/cloud")),
            "purpose": rng.choice(("functional", "statistical")),
        }
    return base


def encode(msg: dict[str, Any]) -> bytes:
    """UTF-8 JSON bytes."""
    return json.dumps(msg, separators=(",", ":")).encode()


def spread(now: datetime, rng: random.Random, within: timedelta) -> datetime:
    """A random instant in the ``within`` before ``now``."""
    return now - timedelta(seconds=rng.uniform(0, within.total_seconds()))


def produce(producer: KafkaProducer, topic: str, values: Iterator[bytes] | list[bytes]) -> int:
    """Send raw values to ``topic`` and wait for every acknowledgement."""
    futures = [producer.send(topic, value=v) for v in values]
    producer.flush()
    for f in futures:
        f.get(timeout=30)
    return len(futures)


# The instant the bad samples were written with. A broken record already past its
# expiry is counted as expired on arrival, not dead-lettered: tests that send the
# samples move this instant to a recent one, so that they stay bad, not expired.
SAMPLE_INSTANT = b"2026-11-01T09:14:07"


def recent_bad_sample(path: Path, now: datetime) -> bytes:
    """The bad sample at ``path`` with its timestamp moved to an hour before ``now``."""
    recent = (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S").encode()
    return path.read_bytes().replace(SAMPLE_INSTANT, recent)
