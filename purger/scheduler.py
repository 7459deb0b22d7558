"""The purge scheduler: APScheduler ticks, one leader among replicas.

Leadership is a session-level advisory lock held on a dedicated connection for
as long as the replica lives: only the leader starts passes on its ticks, and
when it dies its connection closes and the next replica's tick takes over. The
leader lock only keeps the other replicas from trying; what guarantees that one
pass runs at a time is the pass lock (``purge.PASS_LOCK``) every pass takes, so
that a ``purger purge`` run by hand, or a leader that lost its lock's connection
mid-pass while another replica took over, never overlaps a running pass.

A leader whose passes keep failing (``leader_max_failures`` passes in a row end
``failure`` or ``timed_out``) steps down: it releases the leader lock and sits
out ``leader_cooldown_ticks`` ticks, so that a replica that may fare better
(another node, another network path) takes over; alone, it leads again after
the cool-down. A pod that was paused runs the missed pass once (coalesce,
generous misfire grace).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from purger import policy_versions, retag
from purger.db import connect
from purger.errors import PurgerError
from purger.metrics import Metrics
from purger.partitions import PartitionManager
from purger.purge import Purger
from purger.purge_report import (
    COMPLETED,
    OUTCOME_FAILURE,
    OUTCOME_NOT_LEADER,
    OUTCOME_TIMED_OUT,
    PassReport,
)
from purger.queries import query
from purger.schedules import trigger_for
from purger.stats import Stats

log = logging.getLogger("purger.scheduler")

LEADER_LOCK = "purger.scheduler-leader"


class Leadership:
    """The leader lock on its own connection."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._conn: psycopg.Connection[Any] | None = None
        self.is_leader = False

    def acquire(self) -> bool:
        """True when this replica holds (or just took) the leader lock."""
        try:
            if self._conn is not None and not self._conn.closed:
                self._conn.execute("SELECT 1")
                if self.is_leader:
                    return True
            else:
                self._conn = connect(self.conninfo, autocommit=True, application="leader")
                self.is_leader = False
            row = self._conn.execute(query("try_lock"), {"key": LEADER_LOCK}).fetchone()
            self.is_leader = bool(row and row[0])
        except (psycopg.Error, PurgerError):
            # Lost the connection, and with it any lock: start over next tick.
            self.release()
        return self.is_leader

    def release(self) -> None:
        """Give up leadership (closing the connection releases the lock)."""
        if self.is_leader and self._conn is not None and not self._conn.closed:
            # Closing alone releases the lock only once the server notices the
            # session ended; unlocking first lets another replica's next tick take over.
            with contextlib.suppress(psycopg.Error):
                self._conn.execute(query("unlock"), {"key": LEADER_LOCK})
        self.is_leader = False
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None


class PurgeScheduler:
    """Runs passes on the schedule, and keeps the overdue gauge fresh."""

    def __init__(
        self,
        purger: Purger,
        metrics: Metrics,
        schedule: str,
        *,
        misfire_grace_seconds: int,
        overdue_refresh_seconds: int,
        leader_max_failures: int = 3,
        leader_cooldown_ticks: int = 2,
        topic_check: Callable[[], None] | None = None,
        topic_check_interval_seconds: int = 0,
        granularity: timedelta = timedelta(days=1),
        retag_budget_seconds: float = 60.0,
        partitions_ahead: int = 3,
    ) -> None:
        self.purger = purger
        self.partitions = PartitionManager(granularity)
        self.retag_budget_seconds = retag_budget_seconds
        self.partitions_ahead = partitions_ahead
        self._policy_version: tuple[str, str, str] | None = None
        self.metrics = metrics
        self.stats = Stats(purger.conninfo, purger.policy, metrics)
        self.leadership = Leadership(purger.conninfo)
        self.leader_max_failures = leader_max_failures
        self.leader_cooldown_ticks = leader_cooldown_ticks
        self._failures = 0  # passes in a row that ended failure or timed_out
        self._cooldown = 0  # ticks left before this replica may try to lead again
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={
                "coalesce": True,
                # Two, not one: ticks missed while a pass ran (or while the pod was
                # paused in the middle of one) queue one catch-up tick, which waits
                # for the running one on self._lock. With one, APScheduler drops
                # them ("maximum number of running instances reached").
                "max_instances": 2,
                "misfire_grace_time": misfire_grace_seconds,
            },
        )
        self.scheduler.add_job(self.tick, trigger_for(schedule), id="purge", name="purge pass")
        self.scheduler.add_job(
            self.refresh_overdue,
            IntervalTrigger(seconds=overdue_refresh_seconds, timezone=UTC),
            id="overdue",
            name="overdue gauge",
            next_run_time=datetime.now(UTC),
        )
        self.scheduler.add_job(
            self.refresh_policy,
            IntervalTrigger(seconds=overdue_refresh_seconds, timezone=UTC),
            id="policy",
            name="policy gauges",
        )
        if topic_check is not None and topic_check_interval_seconds > 0:
            # Every replica checks (the gauge is per pod; alerts take the max): no leader needed.
            self._topic_check = topic_check
            self.scheduler.add_job(
                self.check_topics,
                IntervalTrigger(seconds=topic_check_interval_seconds, timezone=UTC),
                id="topics",
                name="topic retention check",
                next_run_time=datetime.now(UTC),
            )
        self.last_report: PassReport | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start ticking in a background thread; export the last success from the trail
        and the applied policy first, so that the first scrape already has them."""
        try:
            last = self.stats.last_success()
        except PurgerError:
            last = None
        self.metrics.last_purge_success.set(last.timestamp() if last else 0)
        self.refresh_policy()
        self.scheduler.start()

    def shutdown(self) -> None:
        """Stop ticking; wait for a running pass to finish."""
        self.scheduler.shutdown(wait=True)
        self.leadership.release()
        self.metrics.scheduler_leader.set(0)

    def tick(self) -> PassReport | None:
        """One scheduled tick: pass if this replica leads, else record that it did not."""
        with self._lock:
            if self._cooldown > 0:
                self._cooldown -= 1
                self.metrics.purge_runs.labels(OUTCOME_NOT_LEADER).inc()
                log.info(
                    "stepped down as leader; not trying to lead for %d more ticks", self._cooldown
                )
                return None
            leader = self.leadership.acquire()
            self.metrics.scheduler_leader.set(1 if leader else 0)
            if not leader:
                self.metrics.purge_runs.labels(OUTCOME_NOT_LEADER).inc()
                log.info("not the leader; another replica runs this pass")
                return None
            # Partitions for the coming periods, so ingestion rarely creates one itself.
            self.prepare_partitions()
            # Before the pass: a shortened retention makes records due at this pass.
            self.retag()
            report = self.purger.run_pass()
            self.purger.forget_keys(report, budget_seconds=self.retag_budget_seconds)
            self.last_report = report
            self._after_pass(report)
            self.refresh_overdue()
            return report

    def _after_pass(self, report: PassReport) -> None:
        if report.outcome in (OUTCOME_FAILURE, OUTCOME_TIMED_OUT):
            self._failures += 1
        elif report.outcome in COMPLETED:
            self._failures = 0
        # A contended pass says nothing about this replica: the count stays.
        # leader_max_failures 0 never steps down.
        if self.leader_max_failures <= 0 or self._failures < self.leader_max_failures:
            return
        log.warning(
            "%d purge passes in a row failed or timed out; stepping down as leader for %d ticks",
            self._failures,
            self.leader_cooldown_ticks,
            extra={"pass_id": report.pass_id, "outcome": report.outcome, "count": self._failures},
        )
        self.leadership.release()
        self.metrics.scheduler_leader.set(0)
        self._failures = 0
        self._cooldown = self.leader_cooldown_ticks

    def check_topics(self) -> None:
        """Compare the topics' retention with the policy (purger_topic_retention_excess_seconds)."""
        try:
            self._topic_check()
        except Exception as exc:
            # An unreachable broker keeps the last values; the next interval tries again.
            log.warning("topic retention check failed: %s", _reason(exc))

    def refresh_overdue(self) -> None:
        """Recount overdue records (cheap: an index count per category)."""
        try:
            self.stats.overdue()
        except PurgerError as exc:
            log.warning("overdue count failed: %s", exc)

    def prepare_partitions(self) -> None:
        """Create the partitions records arriving in the next periods need (every category)."""
        try:
            with connect(self.purger.conninfo, autocommit=True, application="partitions") as conn:
                for category in self.purger.policy.categories.values():
                    self.partitions.ensure_ahead(
                        conn, category, datetime.now(UTC), self.partitions_ahead
                    )
        except (PurgerError, psycopg.Error) as exc:
            log.warning("partitions not created ahead: %s; ingestion creates them", _reason(exc))

    def retag(self) -> None:
        """Re-tag each category with records of an older rule version, within the budget."""
        try:
            with connect(self.purger.conninfo, autocommit=True, application="retag") as conn:
                retagger = retag.Retagger(conn, self.partitions)
                for name in sorted(policy_versions.applied_categories(conn)):
                    report = retagger.run(name, budget_seconds=self.retag_budget_seconds)
                    if report.retagged:
                        self.metrics.records_retagged.labels(name).inc(report.retagged)
        except (PurgerError, psycopg.Error) as exc:
            # Resumable: the next tick goes on from the cursor.
            log.warning("re-tagging stopped: %s; the next tick goes on", _reason(exc))

    def refresh_policy(self) -> None:
        """The applied policy version and the records over its retention (gauges)."""
        try:
            with connect(self.purger.conninfo, autocommit=True, application="policy") as conn:
                current = policy_versions.current(conn)
                over = {
                    name: retag.over_retention(conn, name)
                    for name, known in policy_versions.applied_categories(conn).items()
                    if known.dropped_at is None
                }
        except (PurgerError, psycopg.Error) as exc:
            log.warning("policy gauges not refreshed: %s", _reason(exc))
            return
        if current is not None:
            labels = (str(current["version"]), str(current["label"]), str(current["digest"]))
            if self._policy_version not in (None, labels):
                self.metrics.policy_version_info.remove(*self._policy_version)
            self.metrics.policy_version_info.labels(*labels).set(1)
            self._policy_version = labels
        for name, n in over.items():
            self.metrics.records_over_retention.labels(name).set(n)


def _reason(exc: BaseException) -> str:
    # The project's errors name what failed without personal data; a driver error's
    # text may quote values, so only its class is logged.
    return str(exc) if isinstance(exc, PurgerError) else exc.__class__.__name__
