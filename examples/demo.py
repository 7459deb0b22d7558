"""`make demo`: sample traffic of all four categories in, a purge pass, the proof out."""

from __future__ import annotations

import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaProducer

from consumers.kafka_config import producer_options
from consumers.service import consume, ensure_topics
from examples import samples
from purger import audit, logs
from purger.db import connect
from purger.durations import add_months
from purger.errors import PurgerError
from purger.metrics import Metrics
from purger.policy import load_policy
from purger.purge import Purger
from purger.purge_report import COMPLETED
from purger.settings import load_settings
from purger.stats import Stats
from purger.storage import Storage

GOOD_PER_CATEGORY = 250
EXPIRED_PER_CATEGORY = 5
SOON_PER_CATEGORY = 3
SOON = timedelta(seconds=45)

# The bad samples the tests use: each must end in the dead-letter topic with a reason.
BAD_SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "data" / "messages" / "bad"


def _say(text: str) -> None:
    print(text, flush=True)


def main() -> int:
    """Run the demo; 0 when every step worked."""
    settings = load_settings()
    logs.configure(settings.log_format, "WARNING")
    policy = load_policy(settings.policy_file, settings.dead_letter_suffix)
    rng = random.Random()
    run = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    now = datetime.now(UTC)

    _say("1. schema")
    with Storage(settings.conninfo(), policy, settings.granularity) as storage:
        storage.migrate(settings.partitions_ahead)
    ensure_topics(settings, policy)

    _say("2. sample traffic")
    soon_until = now
    producer = KafkaProducer(**producer_options(settings))
    try:
        for name, category in policy.categories.items():
            values = []
            for i in range(GOOD_PER_CATEGORY):
                occurred = samples.spread(now, rng, timedelta(days=30))
                values.append(samples.message(name, f"demo-{run}-{name}-{i}", occurred, rng))
            for i in range(EXPIRED_PER_CATEGORY):
                occurred = now - category.policy.retention.approx_timedelta() - timedelta(days=2)
                values.append(samples.message(name, f"demo-{run}-{name}-old-{i}", occurred, rng))
            retention = category.policy.retention
            for i in range(SOON_PER_CATEGORY):
                # Occurred one retention minus a few seconds ago: expires during the demo.
                target = now + SOON + timedelta(seconds=i)
                occurred = add_months(target, -retention.months) - retention.exact
                soon_until = max(soon_until, category.expires_at("", occurred))
                values.append(samples.message(name, f"demo-{run}-{name}-soon-{i}", occurred, rng))
            sent = samples.produce(producer, category.topic, [samples.encode(v) for v in values])
            bad = [samples.recent_bad_sample(p, now) for p in sorted(BAD_SAMPLES.iterdir())]
            extra = samples.produce(producer, category.topic, bad) if name == "cdr" else 0
            _say(
                f"   {category.topic:<30} {sent} valid messages"
                + (f", {extra} bad ones" if extra else "")
            )
    finally:
        producer.close()

    _say("3. the purger consumes (until caught up)")
    metrics = Metrics(categories=policy.categories, topics=policy.by_topic())
    summary = consume(settings, policy, metrics, threading.Event(), until_idle=True)
    _say(f"   {'category':<16} {'stored':>7} {'expired on arrival':>19} {'dead-lettered':>14}")
    for name, c in summary["categories"].items():
        _say(
            f"   {name:<16} {c['stored']:>7} {c['expired_on_arrival']:>19} {c['dead_lettered']:>14}"
        )

    purger = Purger(settings.conninfo(), policy, metrics)
    stats = Stats(settings.conninfo(), policy, metrics)
    wait = (soon_until - datetime.now(UTC)).total_seconds() + 1
    if wait > 0:
        _say(f"4. waiting {wait:.0f} s until the records that expire during the demo have expired")
        time.sleep(wait)  # the demo waits for wall-clock expiry; nothing to poll for
    overdue = stats.overdue()
    _say(f"   overdue before the pass: {sum(overdue.values())} records")
    report = purger.run_pass()
    _say(f"5. purge pass {report.pass_id}: {report.outcome}")
    for name, cat in report.categories.items():
        _say(
            f"   {name:<16} removed {cat.rows_purged} records, {cat.partitions_dropped} partitions"
        )
    overdue = stats.overdue()
    _say(f"   overdue after the pass: {sum(overdue.values())} records")
    with connect(settings.conninfo(), autocommit=True) as conn:
        result = audit.verify(conn)
    _say(
        f"6. audit verify: {'intact' if result.ok else 'BROKEN: ' + str(result.problem)} "
        f"({result.entries} entries, head {result.head_hash[:16]}...)"
    )
    return 0 if result.ok and report.outcome in COMPLETED else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PurgerError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        sys.exit(1)
