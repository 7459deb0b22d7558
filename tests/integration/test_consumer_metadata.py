"""A worker's start-up metadata read: the subscribed topics only, and never unbounded.

The worker reads its topics' metadata after subscribing and before its first poll
joins the group (``consumers.loop``), so that the first assignment sees every
partition. kafka-python's ``topics()`` did that by fetching every topic of the
cluster and waiting with no deadline: a broker lost at that moment held the worker
with SIGTERM unseen. ``read_subscribed_metadata`` asks for the subscription only
and gives up after its timeout, which the retrier treats as an outage.
"""

from __future__ import annotations

import json
import subprocess
import sys

from kafka import KafkaConsumer

from consumers.failures import Kind
from consumers.kafka_config import consumer_options
from consumers.loop import read_subscribed_metadata
from purger.policy import RetentionPolicy
from purger.settings import Settings


def test_the_metadata_read_fetches_every_subscribed_partition_and_no_other_topic(
    settings: Settings,
    policy: RetentionPolicy,
    topics: dict[str, str],
    members: list[KafkaConsumer],
) -> None:
    consumer = KafkaConsumer(**consumer_options(settings))
    members.append(consumer)
    subscribed = sorted(topics.values())
    consumer.subscribe(topics=subscribed)

    read_subscribed_metadata(consumer)

    cluster = consumer._cluster
    for topic in subscribed:
        assert cluster.partitions_for_topic(topic) == {0, 1, 2, 3}, topic
    # The dead-letter topics exist on the broker (the fixture made them) but are not
    # subscribed: an all-topics read, as topics() does, would have cached them too.
    dead_letter = {c.dead_letter_topic for c in policy.categories.values()}
    assert dead_letter.isdisjoint(cluster.topics()), "the read asked for unsubscribed topics"


def test_a_metadata_read_without_a_broker_gives_up_after_its_timeout() -> None:
    # In a process of its own: kafka-python leaves the sockets of its refused
    # connection attempts to the garbage collector, and their ResourceWarning, an
    # error under filterwarnings, would surface at the end of this session.
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_A_BROKER],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    # Bounded by its timeout (plus scheduling slack), where topics() waited forever.
    assert outcome["raised"] == "KafkaTimeoutError"
    assert outcome["waited"] < 5, f"the read took {outcome['waited']:.1f} s"
    # Waited out by the retrier with backoff and stop-flag checks, never a crash.
    assert outcome["kind"] == Kind.OUTAGE.value


_WITHOUT_A_BROKER = """
import json, socket, time
from kafka import KafkaConsumer
from consumers.failures import classify
from consumers.loop import read_subscribed_metadata

with socket.socket() as probe:
    # A port nothing listens on: bound, then closed, so connecting is refused.
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
# api_version given: the constructor does not wait for a bootstrap of its own.
consumer = KafkaConsumer(
    bootstrap_servers=f"127.0.0.1:{port}",
    group_id="nobody",
    enable_auto_commit=False,
    api_version=(3, 0),
)
consumer.subscribe(topics=["absent"])
started = time.monotonic()
try:
    read_subscribed_metadata(consumer, timeout_ms=300)
    outcome = {"raised": None, "kind": None}
except Exception as exc:
    outcome = {"raised": type(exc).__name__, "kind": classify(exc).value}
outcome["waited"] = time.monotonic() - started
consumer.close(autocommit=False)
print(json.dumps(outcome))
"""
