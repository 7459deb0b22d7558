"""The premise of the workers' collector tuning: decoding a batch makes no reference cycles.

``consumers.workers._tune_gc`` freezes what lives as long as the process and raises
the collector's thresholds so that full collections are rare. That frees the same
memory only while what a batch allocates is freed by reference counting, i.e. holds
no reference cycle; one cycle a record (an exception kept with its traceback, say)
would grow a worker's memory between collections. Good and poison messages alike.
The workers' other tuning, the GIL switch interval with write-behind, is checked last.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from consumers.decoding import BatchDecoder
from consumers.workers import WRITE_BEHIND_SWITCH_INTERVAL, _tune_gc, _tune_switching
from purger.policy import load_policy

ROOT = Path(__file__).parents[2]
MESSAGES = ROOT / "tests" / "data" / "messages"
NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The collector disabled for the test, and left as it was found."""
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        if enabled:
            gc.enable()


def _polled() -> dict[TopicPartition, list[SimpleNamespace]]:
    policy = load_policy(ROOT / "config" / "retention.yaml")
    polled: dict[TopicPartition, list[SimpleNamespace]] = {}
    for name, category in policy.categories.items():
        good = (MESSAGES / "good" / f"{name}.json").read_bytes().splitlines()
        # Every poison sample on every topic: dead letters and their reasons too.
        bad = [p.read_bytes() for p in sorted((MESSAGES / "bad").iterdir())]
        tp = TopicPartition(category.topic, 0)
        polled[tp] = [
            SimpleNamespace(
                topic=category.topic, partition=0, offset=i, key=None, value=v, headers=[]
            )
            for i, v in enumerate([line for line in good if line.strip()] + bad)
        ]
    return polled


def test_decoding_good_and_poison_messages_leaves_no_reference_cycles(
    collector_off: None,
) -> None:
    policy = load_policy(ROOT / "config" / "retention.yaml")
    decoder = BatchDecoder(
        policy.by_topic(), future_tolerance=timedelta(days=1), default_country_code=31
    )
    polled = _polled()
    # The first round fills the caches (identifiers, timestamps); they live on.
    decoder.decode(polled, NOW)
    gc.collect()
    decoded = decoder.decode(polled, NOW)
    assert sum(map(len, decoded.records.values())) > 0
    assert len(decoded.letters) > 0
    del decoded
    assert gc.collect() == 0, "decoding a batch left objects only a collection frees"


def test_the_tuning_freezes_the_heap_and_raises_the_thresholds(collector_off: None) -> None:
    _tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] >= 10_000


@pytest.fixture
def switch_interval() -> Iterator[float]:
    # A worker run in this process earlier (an integration test) may have tuned it.
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield 0.005
    sys.setswitchinterval(before)


def test_write_behind_shortens_the_switch_interval_and_storing_in_turn_keeps_it(
    switch_interval: float,
) -> None:
    _tune_switching(False)
    assert sys.getswitchinterval() == switch_interval
    _tune_switching(True)
    assert sys.getswitchinterval() == pytest.approx(WRITE_BEHIND_SWITCH_INTERVAL)
    assert switch_interval > WRITE_BEHIND_SWITCH_INTERVAL
