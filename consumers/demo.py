"""`make demo`: sample traffic of all four categories in, a purge pass, the proof out."""

from __future__ import annotations

import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

from kafka import KafkaProducer

from consumers import samples
from consumers.kafka_config import producer_options
from consumers.service import consume, ensure_topics
from purger import audit, logs
from purger.db import connect
from purger.durations import add_months
from purger.errors import PurgerError
from purger.metrics import Metrics
from purger.policy import load_policy
from purger.purge import Purger
from purger.settings import load_settings
from purger.storage import Storage

GOOD_PER_CATEGORY = 250
EXPIRED_PER_CATEGORY = 5
SOON_PER_CATEGORY = 3
SOON = timedelta(seconds=45)

# Copies of the bad samples: each must end in the dead-letter topic with a reason.
BAD = [
    b"\xff\xfe {not json at all",
    b'{"record_id": "", "occurred_at": "2026-11-01T09:14:07Z", "tenant": "t1", "subjects": {}}',
    b'{"record_id": "cdr-x4", "occurred_at": "2126-11-01T09:14:07Z", "tenant": "t1", '
    b'"subjects": {"msisdn": ["+31612345678"]}}',
    b'{"record_id": "cdr-x5", "occurred_at": "2026-11-01T09:14:07Z", "tenant": "t1", '
    b'"subjects": {"msisdn": ["not-a-number"]}}',
    b'{"occurred_at": "2026-11-01T09:14:07Z", "tenant": "t1", "subjects": {}}',
    b'{"record_id": "cdr-x1", "occurred_at": "2026-11-01T09:14:07", "tenant": "t1", '
    b'"subjects": {}}',
    b"[1, 2, 3]",
    b'{"record_id": "cdr-x3", "occurred_at": "2026-11-01T09:14:07Z", "tenant": "t1", '
    b'"subjects": {"msisdn": "+31612345678"',
    b'{"record_id": "cdr-x2", "occurred_at": "yesterday", "tenant": "t1", "subjects": {}}',
]


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
            extra = samples.produce(producer, category.topic, BAD) if name == "cdr" else 0
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
    wait = (soon_until - datetime.now(UTC)).total_seconds() + 1
    if wait > 0:
        _say(f"4. waiting {wait:.0f} s until the records that expire during the demo have expired")
        time.sleep(wait)  # the demo waits for wall-clock expiry; nothing to poll for
    overdue = purger.overdue()
    _say(f"   overdue before the pass: {sum(overdue.values())} records")
    report = purger.run_pass()
    _say(f"5. purge pass {report.pass_id}: {report.outcome}")
    for name, cat in report.categories.items():
        _say(
            f"   {name:<16} removed {cat.rows_purged} records, {cat.partitions_dropped} partitions"
        )
    overdue = purger.overdue()
    _say(f"   overdue after the pass: {sum(overdue.values())} records")
    with connect(settings.conninfo(), autocommit=True) as conn:
        result = audit.verify(conn)
    _say(
        f"6. audit verify: {'intact' if result.ok else 'BROKEN: ' + str(result.problem)} "
        f"({result.entries} entries, head {result.head_hash[:16]}...)"
    )
    return 0 if result.ok and report.outcome in ("success", "nothing_to_do") else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PurgerError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        sys.exit(1)
