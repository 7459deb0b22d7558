"""Knobs of ``make soak``: ``SOAK_*`` environment variables, or the same as flags."""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import dataclass

from harness.loopback import require_loopback

DEFAULT_KAFKA = "127.0.0.1:19092"
DEFAULT_DATABASE = "postgresql://purger:purger@127.0.0.1:5432/purger"


class SoakConfigError(ValueError):
    """A knob or address the soak run refuses."""


class SoakError(Exception):
    """The run cannot go on (services missing, setup failed)."""


@dataclass(frozen=True)
class SoakConfig:
    """Everything one soak run is parameterised by."""

    seconds: float  # traffic and chaos; the drain and the checks come after
    seed: int
    workers: int  # `purger run --no-scheduler` processes kept alive
    rate: int  # messages per second, all topics together
    drain_seconds: float  # longest wait for the consumer group to catch up
    broker_restarts: int  # minimums of the chaos, all guaranteed within `seconds`
    postgres_restarts: int
    worker_kills: int
    pauses: int
    hold_changes: int  # holds placed plus holds released during the run
    purge_passes: int
    topic_partitions: int
    partition_granularity: str
    keep: bool  # keep the database, topics, group and logs
    self_test: bool  # plant known faults after the final pass; the checker must find them
    kafka_bootstrap: str
    database_url: str  # an admin URL: the run creates and drops its own database there

    @property
    def hard_deadline(self) -> float:
        """Seconds after the start at which the run stops itself, whatever it is doing."""
        return self.seconds + self.drain_seconds + 300


# knob -> (flag, default, minimum, help); floats where the default is a float.
_KNOBS: dict[str, tuple[str, float | int | None, float, str]] = {
    "SOAK_SECONDS": ("--seconds", 240.0, 5, "traffic and chaos duration in seconds"),
    "SOAK_SEED": ("--seed", None, 0, "random seed (default: a random one, printed)"),
    "SOAK_WORKERS": ("--workers", 2, 1, "consumer processes kept alive"),
    "SOAK_RATE": ("--rate", 80, 1, "messages per second over all four topics"),
    "SOAK_DRAIN_SECONDS": ("--drain-seconds", 240.0, 10, "longest wait for consumer lag 0"),
    "SOAK_BROKER_RESTARTS": ("--broker-restarts", 2, 0, "minimum Kafka broker restarts"),
    "SOAK_POSTGRES_RESTARTS": ("--postgres-restarts", 2, 0, "minimum PostgreSQL restarts"),
    "SOAK_WORKER_KILLS": ("--worker-kills", 10, 0, "minimum worker SIGKILLs"),
    "SOAK_PAUSES": ("--pauses", 4, 0, "minimum worker SIGSTOP/SIGCONT pauses"),
    "SOAK_HOLD_CHANGES": ("--hold-changes", 4, 0, "minimum holds placed + released"),
    "SOAK_PURGE_PASSES": ("--purge-passes", 8, 0, "minimum purge passes during the run"),
    "SOAK_TOPIC_PARTITIONS": ("--topic-partitions", 4, 1, "partitions per topic"),
}


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _raw(args: argparse.Namespace, knob: str) -> str | None:
    flag = _KNOBS[knob][0]
    value: str | None = getattr(args, _dest(flag))
    if value is None:
        value = os.environ.get(knob, "").strip() or None
    return value


def _number(args: argparse.Namespace, knob: str) -> float | None:
    flag, default, minimum, _help = _KNOBS[knob]
    raw = _raw(args, knob)
    if raw is None:
        return None if default is None else float(default)
    try:
        value = float(raw.replace("_", ""))
    except ValueError:
        raise SoakConfigError(f"{knob} ({flag}) = {raw!r} is not a number") from None
    if value < minimum:
        raise SoakConfigError(f"{knob} ({flag}) = {raw} is below its minimum {minimum:g}")
    return value


def _int(args: argparse.Namespace, knob: str) -> int:
    value = _number(args, knob)
    assert value is not None
    if value != int(value):
        raise SoakConfigError(f"{knob} ({_KNOBS[knob][0]}) must be a whole number")
    return int(value)


def _float(args: argparse.Namespace, knob: str) -> float:
    value = _number(args, knob)
    assert value is not None
    return value


def parser() -> argparse.ArgumentParser:
    """Flags; each defaults to its SOAK_* variable, then to the built-in default."""
    p = argparse.ArgumentParser(
        prog="python -m soak",
        description=(
            "Chaos soak of the purger on the real Kafka and PostgreSQL: traffic to all four "
            "topics while workers are killed and paused, the broker and PostgreSQL restart, "
            "holds come and go and purge passes run; then a checker proves that nothing was "
            "lost, duplicated, wrongly destroyed or wrongly kept. Addresses: SOAK_KAFKA_BOOTSTRAP "
            "and SOAK_DATABASE_URL (else PURGER_TEST_KAFKA_BOOTSTRAP / PURGER_TEST_DATABASE_URL), "
            "loopback only."
        ),
    )
    for knob, (flag, default, _minimum, help_) in _KNOBS.items():
        shown = "random" if default is None else f"{default:g}"
        p.add_argument(flag, dest=_dest(flag), default=None, help=f"{help_} [{knob}, {shown}]")
    p.add_argument(
        "--partition-granularity",
        default=None,
        help="PURGER_PARTITION_GRANULARITY of the run [SOAK_PARTITION_GRANULARITY, P1D]",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the database, topics, consumer group and logs afterwards [SOAK_KEEP=1]",
    )
    p.add_argument(
        "--self-test",
        action="store_true",
        help=(
            "plant four known faults after the final pass and pass only if the checker finds "
            "exactly them [SOAK_SELF_TEST=1]"
        ),
    )
    return p


def load_config(argv: list[str] | None = None) -> SoakConfig:
    """The run's configuration from flags, then SOAK_* variables, then the defaults."""
    args = parser().parse_args(argv)
    seed = _number(args, "SOAK_SEED")
    kafka = (
        os.environ.get("SOAK_KAFKA_BOOTSTRAP")
        or os.environ.get("PURGER_TEST_KAFKA_BOOTSTRAP")
        or DEFAULT_KAFKA
    )
    database = (
        os.environ.get("SOAK_DATABASE_URL")
        or os.environ.get("PURGER_TEST_DATABASE_URL")
        or DEFAULT_DATABASE
    )
    # The soak run never leaves loopback.
    require_loopback(kafka, "the Kafka bootstrap servers", SoakConfigError)
    require_loopback(database, "the PostgreSQL URL", SoakConfigError)
    return SoakConfig(
        seconds=_float(args, "SOAK_SECONDS"),
        seed=int(seed) if seed is not None else random.SystemRandom().randrange(10**9),
        workers=_int(args, "SOAK_WORKERS"),
        rate=_int(args, "SOAK_RATE"),
        drain_seconds=_float(args, "SOAK_DRAIN_SECONDS"),
        broker_restarts=_int(args, "SOAK_BROKER_RESTARTS"),
        postgres_restarts=_int(args, "SOAK_POSTGRES_RESTARTS"),
        worker_kills=_int(args, "SOAK_WORKER_KILLS"),
        pauses=_int(args, "SOAK_PAUSES"),
        hold_changes=_int(args, "SOAK_HOLD_CHANGES"),
        purge_passes=_int(args, "SOAK_PURGE_PASSES"),
        topic_partitions=_int(args, "SOAK_TOPIC_PARTITIONS"),
        partition_granularity=(
            args.partition_granularity
            or os.environ.get("SOAK_PARTITION_GRANULARITY", "").strip()
            or "P1D"
        ),
        keep=bool(args.keep) or os.environ.get("SOAK_KEEP", "").strip() not in ("", "0"),
        self_test=bool(args.self_test)
        or os.environ.get("SOAK_SELF_TEST", "").strip() not in ("", "0"),
        kafka_bootstrap=kafka,
        database_url=database,
    )
