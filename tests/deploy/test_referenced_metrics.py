"""Unit tests of referenced_metrics: pure, no helm, no service."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.deploy

# The metrics of the application contract (docs/deploy.md); `up` comes from the scrape.
CONTRACT_METRICS = {
    "purger_records_ingested_total",
    "purger_records_rejected_total",
    "purger_records_dead_lettered_total",
    "purger_consumer_lag_records",
    "purger_ingest_batch_duration_seconds",
    "purger_database_retries_total",
    "purger_ingest_faulted",
    "purger_records_purged_total",
    "purger_partitions_dropped_total",
    "purger_partitions_contended_total",
    "purger_purge_runs_total",
    "purger_purge_category_outcomes_total",
    "purger_scheduler_leader",
    "purger_purge_duration_seconds",
    "purger_last_purge_success_timestamp_seconds",
    "purger_overdue_records",
    "purger_legal_holds_active",
    "purger_records_held",
    "purger_topic_retention_excess_seconds",
    "purger_subject_requests_overdue",
    "purger_records_over_retention",
    "purger_records_retagged_total",
    "purger_policy_version_info",
}


def _load() -> ModuleType:
    """Import referenced_metrics by path: works with any pytest import mode."""
    path = Path(__file__).with_name("referenced_metrics.py")
    name = "purger_deploy_referenced_metrics"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


rm = _load()


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("sum(rate(purger_records_ingested_total[5m]))", {"purger_records_ingested_total"}),
        (
            "histogram_quantile(0.95, sum by (le) (rate(purger_purge_duration_seconds_bucket[5m]))"
            ")",
            {"purger_purge_duration_seconds"},
        ),
        (
            "sum(rate(purger_x_seconds_sum[1h])) / sum(rate(purger_x_seconds_count[1h]))",
            {"purger_x_seconds"},
        ),
        ('purger_purge_runs_total{outcome="purger_not_a_metric"}', {"purger_purge_runs_total"}),
        (
            "time() - max(purger_last_purge_success_timestamp_seconds offset 2h) > 7200",
            {"purger_last_purge_success_timestamp_seconds"},
        ),
        ('sum(up{job=~"$job"})', set()),
        ("my_purger_total + purger_a:rate5m", {"purger_a:rate5m"}),
    ],
)
def test_metric_names_in(expr: str, expected: set[str]) -> None:
    assert rm.metric_names_in(expr) == expected


def test_base_name_strips_only_histogram_suffixes() -> None:
    assert (
        rm.base_name("purger_ingest_batch_duration_seconds_bucket")
        == "purger_ingest_batch_duration_seconds"
    )
    assert rm.base_name("purger_purge_duration_seconds_count") == "purger_purge_duration_seconds"
    assert rm.base_name("purger_records_purged_total") == "purger_records_purged_total"


def test_alert_exprs_reads_multiline_blocks(tmp_path: Path) -> None:
    template = tmp_path / "rule.yaml"
    template.write_text(
        "rules:\n"
        "  - alert: A\n"
        "    expr: |-\n"
        "      sum(purger_a_total)\n"
        "      and purger_b\n"
        "    for: 5m\n"
        "    annotations:\n"
        "      description: purger_not_in_an_expr\n"
        "  - alert: B\n"
        "    expr: purger_c > 0\n"
    )
    exprs = rm.alert_exprs(template)
    assert exprs == ["sum(purger_a_total)\nand purger_b", "purger_c > 0"]
    assert rm.names_in(exprs) == {"purger_a_total", "purger_b", "purger_c"}


def test_referenced_metric_names_are_all_in_the_contract() -> None:
    names = rm.referenced_metric_names()
    assert names <= CONTRACT_METRICS, f"not exported by the application: {names - CONTRACT_METRICS}"
    # The dashboard and the alerts between them use every metric of the contract.
    assert names == CONTRACT_METRICS, f"never shown or alerted on: {CONTRACT_METRICS - names}"


def test_alert_rules_reference_the_alerting_metrics() -> None:
    names = rm.names_in(rm.alert_exprs())
    assert {
        "purger_last_purge_success_timestamp_seconds",
        "purger_purge_runs_total",
        "purger_overdue_records",
        "purger_consumer_lag_records",
        "purger_records_dead_lettered_total",
    } <= names
