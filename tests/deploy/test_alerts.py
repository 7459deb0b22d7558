"""The alert rules: promtool check and unit tests, conventions, runbook links, label hygiene."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
ALERTS_TEST = Path(__file__).with_name("alerts-test.yaml")
RUNBOOK = REPO / "docs" / "runbook.md"
REQUIRED_ALERTS = {
    "PurgerPurgeNotSucceeding",
    "PurgerOverdueRecords",
    "PurgerConsumerLagGrowing",
    "PurgerDeadLetterRateHigh",
    "PurgerPurgeContended",
    "PurgerPurgeCategoryFailing",
    "PurgerPurgeCategoryTimingOut",
    "PurgerPurgeCategoryContended",
    "PurgerIngestSystemicFault",
    "PurgerIngestOutage",
    "PurgerTopicRetentionExcess",
    "PurgerSubjectRequestOverdue",
    "PurgerRecordsOverRetention",
}
# The runbook base URL the expectations of alerts-test.yaml are written for; the rules under test
# are rendered with it, so the chart's default may change without touching the test file.
RUNBOOK_BASE = "https://github.com/example-org/telecom-retention-purger/blob/main/docs/runbook.md"
# Labels alerts may aggregate by: all bounded, none can hold personal data.
# type: a data-subject request's type (erasure, restriction, access).
ALLOWED_GROUPING = {"namespace", "job", "category", "topic", "reason", "outcome", "le", "type"}


@pytest.fixture(scope="module")
def rule_groups(render: Any) -> list[dict[str, Any]]:
    docs = render(
        None, "prometheusRule.enabled=true", f"prometheusRule.runbookBaseUrl={RUNBOOK_BASE}"
    )
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


@pytest.fixture(scope="module")
def alerts(rule_groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for g in rule_groups for r in g["rules"] if "alert" in r]


@pytest.fixture(scope="module")
def rules_dir(rule_groups: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with rules.yaml (extracted from the PrometheusRule) and the promtool tests."""
    folder = tmp_path_factory.mktemp("rules")
    (folder / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups}, sort_keys=False))
    shutil.copy(ALERTS_TEST, folder / "alerts-test.yaml")
    return folder


def _promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=120
    )


def test_promtool_check_rules(promtool: str, rules_dir: Path) -> None:
    result = _promtool(promtool, "check", "rules", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}\n{result.stderr}"
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules(promtool: str, rules_dir: Path) -> None:
    result = _promtool(promtool, "test", "rules", "alerts-test.yaml", cwd=rules_dir)
    assert result.returncode == 0, f"promtool test rules failed:\n{result.stdout}\n{result.stderr}"
    assert "SUCCESS" in result.stdout


def test_every_alert_has_firing_and_not_firing_cases(alerts: list[dict[str, Any]]) -> None:
    spec = yaml.safe_load(ALERTS_TEST.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a not-firing case"
    assert (firing | quiet) <= names, "test cases for alerts that do not exist"


def test_the_required_alerts_exist(alerts: list[dict[str, Any]]) -> None:
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    assert set(names) == REQUIRED_ALERTS


def test_alerts_follow_the_house_style(alerts: list[dict[str, Any]]) -> None:
    for a in alerts:
        name = a["alert"]
        assert re.fullmatch(r"Purger(?:[A-Z][a-z0-9]+)+", name), (
            f"{name}: PascalCase with a Purger prefix"
        )
        assert re.fullmatch(r"\d+[smhdw]", str(a.get("for", ""))), f"{name}: no `for:`"
        assert a["labels"]["severity"] in {"info", "warning", "critical"}, name
        annotations = a["annotations"]
        assert set(annotations) >= {"summary", "description", "runbook_url"}, name
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert annotations["runbook_url"].startswith("https://"), name


def _runbook_anchors() -> set[str]:
    """GitHub's anchors of the runbook's headings."""
    anchors = set()
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = match.group(1).strip().lower()
            text = re.sub(r"[^\w\- ]", "", text)
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_runbook_link_points_at_a_section_of_the_runbook(
    alerts: list[dict[str, Any]],
) -> None:
    assert RUNBOOK.is_file(), f"{RUNBOOK} is missing"
    anchors = _runbook_anchors()
    for a in alerts:
        url = a["annotations"]["runbook_url"]
        base, _, anchor = url.partition("#")
        assert base.endswith("/docs/runbook.md"), url
        assert anchor == a["alert"].lower(), url
        assert anchor in anchors, f"docs/runbook.md has no section #{anchor}"


def test_default_runbook_links_point_into_this_repository(render: Any) -> None:
    docs = render(None, "prometheusRule.enabled=true")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    for r in rule["spec"]["groups"][0]["rules"]:
        url = r["annotations"]["runbook_url"]
        assert re.fullmatch(r"https://\S+/docs/runbook\.md#[a-z]+", url), url


def test_runbook_base_url_is_configurable(render: Any) -> None:
    docs = render(
        None,
        "prometheusRule.enabled=true",
        "prometheusRule.runbookBaseUrl=https://git.example.org/purger/docs/runbook.md",
    )
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    for r in rule["spec"]["groups"][0]["rules"]:
        assert r["annotations"]["runbook_url"] == (
            f"https://git.example.org/purger/docs/runbook.md#{r['alert'].lower()}"
        )


def test_each_alert_can_be_switched_off(render: Any) -> None:
    docs = render(
        None, "prometheusRule.enabled=true", "prometheusRule.alerts.purgeContended.enabled=false"
    )
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert names == REQUIRED_ALERTS - {"PurgerPurgeContended"}


def test_alert_labels_hold_no_personal_data(alerts: list[dict[str, Any]]) -> None:
    for a in alerts:
        expr = a["expr"]
        groupings = re.findall(
            r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr
        )
        for grouping in groupings:
            labels = {label.strip() for label in grouping.split(",") if label.strip()}
            assert labels <= ALLOWED_GROUPING, (
                f"{a['alert']}: groups by {labels - ALLOWED_GROUPING}"
            )
        # Every aggregation names its labels, so no raw series label leaks into the alert.
        assert re.search(r"\b(?:sum|max|min|avg)\s+by\s*\(", expr), (
            f"{a['alert']}: aggregate by named labels"
        )
        assert set(a["labels"]) == {"severity"}, a["alert"]
        for text in a["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert label in ALLOWED_GROUPING, f"{a['alert']}: annotation uses $labels.{label}"


def test_thresholds_follow_the_values(render: Any) -> None:
    docs = render(
        None,
        "prometheusRule.enabled=true",
        "prometheusRule.purgeIntervalSeconds=900",
        "prometheusRule.alerts.deadLetterRateHigh.threshold=0.5",
        "prometheusRule.alerts.consumerLagGrowing.minLag=50000",
        "prometheusRule.alerts.overdueRecords.grace=45m",
        "prometheusRule.alerts.purgeContended.severity=critical",
        "prometheusRule.alerts.purgeCategoryFailing.minPasses=5",
        "prometheusRule.alerts.purgeCategoryTimingOut.window=6h",
    )
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "> 1800" in by_name["PurgerPurgeNotSucceeding"]["expr"]
    assert "[30m]" in by_name["PurgerPurgeNotSucceeding"]["expr"]
    assert "> 0.5" in by_name["PurgerDeadLetterRateHigh"]["expr"]
    assert "> 50000" in by_name["PurgerConsumerLagGrowing"]["expr"]
    assert "[45m]" in by_name["PurgerOverdueRecords"]["expr"]
    assert by_name["PurgerPurgeContended"]["labels"]["severity"] == "critical"
    assert ">= 5" in by_name["PurgerPurgeCategoryFailing"]["expr"]
    assert "[6h]" in by_name["PurgerPurgeCategoryTimingOut"]["expr"]
    assert "[4h]" in by_name["PurgerPurgeCategoryContended"]["expr"]


def test_referenced_metrics_of_the_template_match_the_rendered_rules(
    alerts: list[dict[str, Any]],
) -> None:
    """referenced_metrics reads the template as text; it must agree with what helm renders."""
    spec = importlib.util.spec_from_file_location(
        "purger_deploy_referenced_metrics_check", Path(__file__).with_name("referenced_metrics.py")
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rendered = module.names_in(a["expr"] for a in alerts)
    assert module.names_in(module.alert_exprs()) == rendered
