"""The README's "Deploy on Kubernetes" section, followed on a real cluster, and what follows it.

The tests run in file order and share one release (`purger` in namespace `purger`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from purger.exits import EXIT_NOTHING_TO_DO, EXIT_OK
from tests.e2e.conftest import (
    CHART,
    NS,
    assert_ids_stored,
    kjson,
    kubectl,
    metric,
    metrics,
    produce,
    producer_pod_manifest,
    purger_exec,
    run,
    stored,
    stored_ids,
    wait_pods_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

STATE: dict[str, Any] = {"cdr": 0}

# A tenant whose cookie_stats records are kept two minutes, so that the suite sees records
# stored, then destroyed by a scheduled purge pass.
SHORT = "cookie_stats"
SHORT_TOPIC = "web.cookie-stats"
SHORT_TENANT = "e2e-short"
SHORT_RETENTION_S = 120


def e2e_policy() -> dict[str, Any]:
    """The chart's default policy plus the short-lived tenant."""
    policy: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())["policy"]
    policy["categories"][SHORT]["tenant_overrides"] = {SHORT_TENANT: f"PT{SHORT_RETENTION_S}S"}
    return policy


def values(infra: dict[str, str], tmp: Path, **extra: Any) -> Path:
    """my-values.yaml of the README, with the local image and the in-cluster services."""
    repository, _, tag = infra["image"].rpartition(":")
    doc: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "kafka": {"bootstrapServers": infra["bootstrap"]},
        # A purge pass every minute, so the suite sees scheduled passes.
        "config": {"purgeSchedule": "* * * * *"},
        "policy": e2e_policy(),
    }
    for key, value in extra.items():
        doc[key] = value
    path = tmp / "my-values.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def hook_runs(release: str = "purger", namespace: str = NS) -> dict[str, dict[str, Any]]:
    status = json.loads(run(["helm", "status", release, "-n", namespace, "-o", "json"]).stdout)
    return {h["name"]: h.get("last_run", {}) for h in status.get("hooks", [])}


def install_as_in_readme(
    infra: dict[str, str], tmp: Path, namespace: str = NS, url: str | None = None, **extra: Any
) -> None:
    """The README's commands, in order, with the local image (built by `make image`)."""
    kubectl("create", "namespace", namespace)
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    kubectl(
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        "purger-database",
        f"--from-literal=url={url or infra['database_url']}",
    )
    my_values = values(infra, tmp, **extra)
    run(
        [
            "helm",
            "install",
            "purger",
            "deploy/helm/purger",
            "-n",
            namespace,
            "-f",
            str(my_values),
            "--wait",
            "--timeout",
            "5m",
        ],
        timeout=400,
    )


# ------------------------------------------------------------------------------------ install


def helm_upgrade(my_values: Path) -> None:
    """`helm upgrade` of the release with ``my_values``, waiting for it as the README does."""
    upgrade = ["helm", "upgrade", "purger", "deploy/helm/purger", "-n", NS]
    run([*upgrade, "-f", str(my_values), "--wait", "--timeout", "5m"], timeout=400)


def test_install_with_hooks_into_a_restricted_namespace(
    infra: dict[str, str], tmp_path: Path
) -> None:
    install_as_in_readme(infra, tmp_path)
    runs = hook_runs()
    assert runs["purger-migrate"]["phase"] == "Succeeded", runs
    STATE["migrate_started"] = runs["purger-migrate"]["started_at"]
    labels = kjson("get", "namespace", NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # --wait is not trusted alone: every pod of the release Running and Ready.
    kubectl("-n", NS, "rollout", "status", "deploy/purger", "--timeout=180s", timeout=200)
    wait_pods_ready(NS, "app.kubernetes.io/instance=purger", timeout=180)
    # Nothing of the hook is left pointing at deleted objects: the succeeded Job is gone.
    jobs = kjson("-n", NS, "get", "jobs")["items"]
    assert not jobs, [j["metadata"]["name"] for j in jobs]


def test_the_restricted_namespace_refuses_a_privileged_pod() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": NS},
        "spec": {
            "containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]
        },
    }
    refused = kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert refused.returncode != 0 and "PodSecurity" in refused.stderr, refused.stderr


def test_helm_test_passes() -> None:
    done = run(["helm", "test", "purger", "-n", NS, "--timeout", "3m"], timeout=240)
    assert "Phase:          Succeeded" in done.stdout or "Succeeded" in done.stdout, done.stdout


# ------------------------------------------------------------------------------------ ingest
def test_records_are_ingested_as_the_metrics_show() -> None:
    before = metric(metrics(), "purger_records_ingested_total", category="cdr")
    produce("ingest", 200)
    STATE["cdr"] += 200
    wait_until(
        "200 cdr records ingested (purger_records_ingested_total via the API server proxy)",
        lambda: metric(metrics(), "purger_records_ingested_total", category="cdr") - before >= 200,
        timeout=120,
        every=2,
    )
    assert stored("cdr") == STATE["cdr"]
    assert_ids_stored("ingest", 200)


def test_purge_passes_run_on_schedule_and_destroy_expired_records() -> None:
    # config.purgeSchedule is every minute. Records stored 45 s before their expiry are
    # destroyed by the first scheduled pass after it (nobody runs `purger purge` here).
    def passes() -> float:
        samples = metrics()
        return sum(v for k, v in samples.items() if k.startswith("purger_purge_runs_total{"))

    before = metric(metrics(), "purger_records_purged_total", category=SHORT)
    produce("short", 30, topic=SHORT_TOPIC, age_s=SHORT_RETENTION_S - 45, tenant=SHORT_TENANT)
    assert_ids_stored("short", 30, category=SHORT, timeout=40)
    wait_until(
        f"a scheduled pass to destroy the 30 expired {SHORT} records",
        lambda: not stored_ids("short", SHORT),
        SHORT_RETENTION_S + 120,
        5,
    )
    wait_until(
        "purger_records_purged_total to count them",
        lambda: metric(metrics(), "purger_records_purged_total", category=SHORT) - before >= 30,
        60,
        2,
    )
    assert passes() >= 1
    assert metric(metrics(), "purger_last_purge_success_timestamp_seconds") > time.time() - 300
    assert stored(SHORT) == 0


# ------------------------------------------------------------------------------------ operators
def test_operator_workflows_of_the_readme() -> None:
    before = stored("cdr")
    dry = purger_exec("purger", "purge", "--dry-run", "--json", check=False)
    assert dry.returncode in (EXIT_OK, EXIT_NOTHING_TO_DO), dry.stderr[-2000:]
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True and report["outcome"], report
    assert stored("cdr") == before, "a dry run removed records"
    placed = purger_exec(
        "purger",
        "hold",
        "place",
        "--case-ref",
        "CASE-2026-001",
        "--reason",
        "court order",
        "--by",
        "e2e",
        "--msisdn",
        "+31610000002",
        "--json",
    )
    hold = json.loads(placed.stdout)
    assert hold["active"] is True and hold["case_ref"] == "CASE-2026-001", hold
    # The one stored record of that subject (ingest-000002).
    assert sum(hold["preserved"].values()) == 1, hold
    released = purger_exec(
        "purger", "hold", "release", str(hold["id"]), "--by", "e2e", "--reason", "case closed"
    )
    assert released.returncode == 0
    listed = json.loads(purger_exec("purger", "hold", "list", "--json").stdout)
    assert [h["active"] for h in listed if h["id"] == hold["id"]] == [False], listed
    export = purger_exec(
        "purger", "subject", "export", "--msisdn", "+31610000001", "--format", "csv"
    )
    rows = export.stdout.strip().splitlines()
    assert len(rows) == 2 and "ingest-000001" in rows[1], export.stdout[:2000]
    verify = purger_exec("purger", "audit", "verify")
    assert verify.returncode == 0
    assert stored("cdr") == before


# ------------------------------------------------------------------------------------ restart
def test_a_rolling_restart_while_producing_loses_and_duplicates_nothing(
    infra: dict[str, str],
) -> None:
    count, rate = 2400, 60  # 40 s of production, around the restart
    kubectl(
        "apply",
        "-f",
        "-",
        input=producer_pod_manifest("producer-restart", "restart", count, rate, infra["image"]),
    )
    # Restart only once records flow, so the old pod is stopped in the middle of the stream.
    wait_until("the first records of the producer stored", lambda: stored_ids("restart"), 90)
    old_pods = set(wait_pods_ready(NS, "app.kubernetes.io/instance=purger", timeout=60))
    kubectl("-n", NS, "rollout", "restart", "deploy/purger")
    kubectl("-n", NS, "rollout", "status", "deploy/purger", "--timeout=240s", timeout=260)
    phase = kjson("-n", NS, "get", "pod", "producer-restart")["status"]["phase"]
    assert phase == "Running", f"the producer was {phase} after the restart: no overlap to test"
    wait_until(
        "the producer to finish",
        lambda: kjson("-n", NS, "get", "pod", "producer-restart")["status"]["phase"] == "Succeeded",
        180,
        2,
    )
    logs = kubectl("-n", NS, "logs", "producer-restart").stdout
    assert json.loads(logs.strip().splitlines()[-1]) == {"produced": count}, logs[-2000:]
    STATE["cdr"] += count
    new_pods = set(wait_pods_ready(NS, "app.kubernetes.io/instance=purger", timeout=120))
    assert not old_pods & new_pods, (old_pods, new_pods)
    assert_ids_stored("restart", count)
    assert_no_loss("cdr", STATE["cdr"])
    kubectl("-n", NS, "delete", "pod", "producer-restart", "--wait=false")


def assert_no_loss(
    category: str, expected: int, timeout: float = 120, target: str = "deploy/purger"
) -> None:
    """The stored count reaches exactly `expected` (no loss) and not more (no duplicate)."""
    wait_until(
        f"{expected} {category} records stored",
        lambda: stored(category, target) >= expected,
        timeout,
        2,
    )
    got = stored(category, target)
    assert got == expected, f"{got} stored, {expected} produced"


# ------------------------------------------------------------------------------------ upgrade
def test_upgrade_with_a_changed_policy_reruns_the_migrate_hook(
    infra: dict[str, str], tmp_path: Path
) -> None:
    policy = e2e_policy()
    policy["version"] = "2026-12-31.1"
    policy["categories"]["cdr"]["retention"] = "P7M"
    my_values = values(infra, tmp_path, policy=policy)
    helm_upgrade(my_values)
    runs = hook_runs()
    assert runs["purger-migrate"]["phase"] == "Succeeded"
    assert runs["purger-migrate"]["started_at"] != STATE["migrate_started"]
    wait_pods_ready(NS, "app.kubernetes.io/instance=purger", timeout=180)
    policy_cm = kjson("-n", NS, "get", "configmap", "purger-policy")
    assert "P7M" in policy_cm["data"]["retention.yaml"]


def test_uninstall_keeps_the_data_and_split_mode_installs(
    infra: dict[str, str], tmp_path: Path
) -> None:
    run(["helm", "uninstall", "purger", "-n", NS, "--wait", "--timeout", "3m"], timeout=240)
    wait_until(
        "the release's pods to go",
        lambda: (
            not kjson("-n", NS, "get", "pods", "-l", "app.kubernetes.io/instance=purger")["items"]
        ),
        120,
    )
    my_values = values(infra, tmp_path, mode="split")
    run(
        [
            "helm",
            "install",
            "purger",
            "deploy/helm/purger",
            "-n",
            NS,
            "-f",
            str(my_values),
            "--wait",
            "--timeout",
            "5m",
        ],
        timeout=400,
    )
    wait_pods_ready(NS, "app.kubernetes.io/instance=purger", timeout=180, expect=2)
    # The records stored before the uninstall are all still there.
    assert stored("cdr", target="deploy/purger-scheduler") == STATE["cdr"]
    assert_ids_stored("ingest", 200)
    assert_ids_stored("restart", 2400)
    purger_exec("purger", "audit", "verify", target="deploy/purger-scheduler")


def test_monitoring_values_install_with_the_operator_crds(
    infra: dict[str, str], tmp_path: Path
) -> None:
    crds = run(
        [
            "go",
            "mod",
            "download",
            "-json",
            "github.com/prometheus-operator/prometheus-operator@v0.85.0",
        ],
        timeout=600,
    ).stdout
    crd_dir = Path(json.loads(crds)["Dir"]) / "example" / "prometheus-operator-crd"
    for name in (
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    ):
        kubectl("apply", "--server-side", "-f", str(crd_dir / name))
    # Polled, not `kubectl wait`: right after the apply a CRD may have no status.conditions
    # yet, and kubectl wait then fails at once ("accessor error: <nil>") instead of waiting.
    for crd in ("servicemonitors", "prometheusrules"):
        wait_until(
            f"CRD {crd} to be established",
            lambda crd=crd: (
                kubectl(
                    "get",
                    f"crd/{crd}.monitoring.coreos.com",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                ).stdout.strip()
                == "True"
            ),
            60,
        )
    kubectl("create", "namespace", "monitoring")
    my_values = values(
        infra,
        tmp_path,
        mode="split",
        serviceMonitor={"enabled": True},
        prometheusRule={"enabled": True},
        grafanaDashboard={"enabled": True, "namespace": "monitoring"},
    )
    helm_upgrade(my_values)
    assert kjson("-n", NS, "get", "servicemonitors")["items"]
    assert kjson("-n", NS, "get", "prometheusrules")["items"]
    assert kjson("-n", "monitoring", "get", "configmaps", "-l", "grafana_dashboard=1")["items"]
    wait_pods_ready(NS, "app.kubernetes.io/instance=purger", timeout=180, expect=2)
