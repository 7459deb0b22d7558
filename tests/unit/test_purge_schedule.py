"""The purge schedule: what the settings accept, the scheduler runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from purger.errors import ConfigError
from purger.schedules import trigger_for
from purger.settings import Settings, load_settings


@pytest.mark.parametrize("schedule", ["0 * * * *", "*/5 * * * *", "*/3 * * * * *", "0 30 2 * * *"])
def test_settings_accept_every_schedule_the_scheduler_runs(schedule: str) -> None:
    assert Settings(purge_schedule=schedule).purge_schedule == schedule
    trigger_for(schedule)


def test_a_six_field_schedule_counts_seconds_first() -> None:
    trigger = trigger_for("*/3 * * * * *")
    start = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    fires = []
    previous = None
    now = start
    for _ in range(4):
        fire = trigger.get_next_fire_time(previous, now)
        assert fire is not None
        fires.append(fire)
        previous, now = fire, fire + timedelta(microseconds=1)
    assert [f.second for f in fires] == [3, 6, 9, 12]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("* * *", "give 5 cron fields (or 6, seconds first)"),
        ("99 * * * *", "not a cron expression"),
        ("*/3 * * * * * *", "give 5 cron fields"),
    ],
)
def test_a_bad_schedule_names_the_variable(
    schedule: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PURGER_PURGE_SCHEDULE", schedule)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "environment variable PURGER_PURGE_SCHEDULE" in str(caught.value)
    assert message in str(caught.value)
