"""Cron schedules of purge passes: parsed the way the scheduler runs them.

A leaf module (APScheduler's trigger only), so that settings validate a schedule
with the scheduler's own parser without importing the scheduler.
"""

from __future__ import annotations

from datetime import UTC

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from purger.errors import ConfigError


def trigger_for(schedule: str) -> BaseTrigger:
    """A 5-field cron (minute precision) or 6-field cron (seconds first), in UTC."""
    fields = schedule.split()
    try:
        if len(fields) == 5:
            return CronTrigger.from_crontab(schedule, timezone=UTC)
        if len(fields) == 6:
            second, minute, hour, day, month, dow = fields
            return CronTrigger(
                second=second,
                minute=minute,
                hour=hour,
                day=day,
                month=month,
                day_of_week=dow,
                timezone=UTC,
            )
    except ValueError as exc:
        raise ConfigError(f"purge_schedule: not a cron expression ({exc})") from None
    raise ConfigError("purge_schedule: give 5 cron fields (or 6, seconds first)")
