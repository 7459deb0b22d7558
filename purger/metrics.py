"""Every Prometheus metric of the purger, on a registry that tests can replace.

Labels are bounded: category, topic, reason, outcome, request type. Series are pre-created so
that dashboards show zeros instead of gaps. No label ever holds personal data.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from purger.purge_report import CATEGORY_OUTCOMES, PURGE_OUTCOMES
from purger.records import DEAD_LETTER_REASONS, REJECT_REASONS
from purger.request_rules import REQUEST_TYPES

INGEST_FAULT_KINDS = ("outage", "systemic")


class Metrics:
    """The purger's metrics, registered on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        categories: Iterable[str] = (),
        topics: Iterable[str] = (),
        *,
        ingest: bool = True,
        retention_topics: Iterable[str] = (),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # With several worker processes the ingest metrics live in the workers
        # (prometheus multiprocess files) and the parent must not register them too.
        r = self.registry
        ri = r if ingest else CollectorRegistry()
        self.records_ingested = Counter(
            "purger_records_ingested", "Records stored, by category.", ["category"], registry=ri
        )
        self.records_rejected = Counter(
            "purger_records_rejected",
            "Records not stored (dead-lettered or expired on arrival), by category and reason.",
            ["category", "reason"],
            registry=ri,
        )
        self.records_dead_lettered = Counter(
            "purger_records_dead_lettered",
            "Records written to the dead-letter topic, by category and reason.",
            ["category", "reason"],
            registry=ri,
        )
        self.records_duplicate = Counter(
            "purger_records_duplicate",
            "Redelivered records that were already stored, by category.",
            ["category"],
            registry=ri,
        )
        self.consumer_lag = Gauge(
            "purger_consumer_lag_records",
            "Records not yet consumed (end offset minus position), by topic.",
            ["topic"],
            registry=ri,
            multiprocess_mode="livesum",
        )
        self.ingest_batch_duration = Histogram(
            "purger_ingest_batch_duration_seconds",
            "Time from poll to offset commit of one batch.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=ri,
        )
        self.database_retries = Counter(
            "purger_database_retries", "Retries after the database was unavailable.", registry=ri
        )
        self.ingest_faulted = Gauge(
            "purger_ingest_faulted",
            "1 while a worker retries an outage or a systemic fault (kind), else 0.",
            ["kind"],
            registry=ri,
            multiprocess_mode="livemax",
        )
        self.ingest_retries = Counter(
            "purger_ingest_retries",
            "Ingestion retries by kind of failure (outage, systemic); never dead-lettered.",
            ["kind"],
            registry=ri,
        )
        self.dead_letters_truncated = Counter(
            "purger_dead_letters_truncated",
            "Dead letters whose value was cut to fit the broker's size limit, by category.",
            ["category"],
            registry=ri,
        )
        self.records_purged = Counter(
            "purger_records_purged", "Records destroyed by purge passes.", ["category"], registry=r
        )
        self.partitions_dropped = Counter(
            "purger_partitions_dropped",
            "Partitions dropped by purge passes.",
            ["category"],
            registry=r,
        )
        self.partitions_contended = Counter(
            "purger_partitions_contended",
            "Partitions a pass could not lock in time (retried on a later pass).",
            ["category"],
            registry=r,
        )
        self.purge_runs = Counter(
            "purger_purge_runs", "Purge passes by outcome.", ["outcome"], registry=r
        )
        self.purge_category_outcomes = Counter(
            "purger_purge_category_outcomes",
            "Purge passes by category and that category's outcome in the pass.",
            ["category", "outcome"],
            registry=r,
        )
        self.scheduler_leader = Gauge(
            "purger_scheduler_leader",
            "1 while this replica holds the purge scheduler's leader lock, else 0.",
            registry=r,
        )
        self.purge_duration = Histogram(
            "purger_purge_duration_seconds",
            "Duration of purge passes.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.last_purge_success = Gauge(
            "purger_last_purge_success_timestamp_seconds",
            "Unix time of the last successful purge pass (0: never).",
            registry=r,
        )
        self.overdue_records = Gauge(
            "purger_overdue_records",
            "Stored records past their expiry that no legal hold protects.",
            ["category"],
            registry=r,
        )
        self.legal_holds_active = Gauge(
            "purger_legal_holds_active", "Legal holds currently active.", registry=r
        )
        self.records_held = Gauge(
            "purger_records_held",
            "Records preserved past their expiry by legal holds, by category.",
            ["category"],
            registry=r,
        )
        self.subject_requests_open = Gauge(
            "purger_subject_requests_open",
            "Data-subject requests open, by type (erasure, restriction, access).",
            ["type"],
            registry=r,
        )
        self.subject_requests_overdue = Gauge(
            "purger_subject_requests_overdue",
            "Data-subject requests still open after their deadline (Art. 12(3)), by type.",
            ["type"],
            registry=r,
        )
        self.policy_version_info = Gauge(
            "purger_policy_version_info",
            "1 for the applied policy version, labelled with its number, label and digest.",
            ["version", "label", "digest"],
            registry=r,
        )
        self.records_retagged = Counter(
            "purger_records_retagged",
            "Stored records re-tagged to their category's current rules, by category.",
            ["category"],
            registry=r,
        )
        self.records_over_retention = Gauge(
            "purger_records_over_retention",
            "Stored records whose expiry is later than the applied policy gives them "
            "(re-tagging pending), by category; 0 once re-tagged.",
            ["category"],
            registry=r,
        )
        self.topic_retention_excess = Gauge(
            "purger_topic_retention_excess_seconds",
            "How much longer than the policy allows a source or dead-letter topic may keep a "
            "record (retention.ms -1 or compaction: the allowed retention itself); 0 when "
            "within policy.",
            ["topic"],
            registry=r,
        )
        self.precreate(categories, topics, retention_topics)

    def precreate(
        self,
        categories: Iterable[str],
        topics: Iterable[str],
        retention_topics: Iterable[str] = (),
    ) -> None:
        """Create every labelled series at zero so dashboards show zeros."""
        for category in categories:
            self.records_ingested.labels(category)
            self.records_duplicate.labels(category)
            self.records_purged.labels(category)
            self.partitions_dropped.labels(category)
            self.partitions_contended.labels(category)
            for outcome in CATEGORY_OUTCOMES:
                self.purge_category_outcomes.labels(category, outcome)
            self.overdue_records.labels(category)
            self.records_held.labels(category)
            self.records_retagged.labels(category)
            self.records_over_retention.labels(category)
            for reason in REJECT_REASONS:
                self.records_rejected.labels(category, reason)
            for reason in DEAD_LETTER_REASONS:
                self.records_dead_lettered.labels(category, reason)
            self.dead_letters_truncated.labels(category)
        for topic in topics:
            self.consumer_lag.labels(topic)
        for topic in retention_topics:
            self.topic_retention_excess.labels(topic)
        for outcome in PURGE_OUTCOMES:
            self.purge_runs.labels(outcome)
        for kind in REQUEST_TYPES:
            self.subject_requests_open.labels(kind)
            self.subject_requests_overdue.labels(kind)
        for kind in INGEST_FAULT_KINDS:
            self.ingest_faulted.labels(kind)
            self.ingest_retries.labels(kind)
