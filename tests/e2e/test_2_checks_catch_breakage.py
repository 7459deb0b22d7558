"""The suite's own checks, shown failing on purpose (each in a namespace of its own).

Deliberately broken values overrides: a pod that never becomes ready, a migrate hook that
fails, records that are lost. Each check of test_1_deploy.py must fail on them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import (
    PodNotReady,
    assert_ids_stored,
    kjson,
    kubectl,
    produce,
    psql,
    run,
    wait_pods_ready,
)
from tests.e2e.test_1_deploy import install_as_in_readme, values

pytestmark = pytest.mark.e2e


def test_the_readiness_check_fails_when_a_pod_never_becomes_ready(
    infra: dict[str, str], tmp_path: Path
) -> None:
    ns = "broken-ready"
    kubectl("create", "namespace", ns)
    kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    kubectl(
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        "purger-database",
        f"--from-literal=url={infra['database_url']}",
    )
    # Kafka that does not exist: /readyz never answers 200. Installed without --wait.
    broken = dict(infra, bootstrap="nowhere.kafka.svc:9092")
    my_values = values(broken, tmp_path)
    run(
        [
            "helm",
            "install",
            "purger",
            "deploy/helm/purger",
            "-n",
            ns,
            "-f",
            str(my_values),
            "--timeout",
            "5m",
        ],
        timeout=400,
    )
    with pytest.raises(PodNotReady):
        wait_pods_ready(ns, "app.kubernetes.io/instance=purger", timeout=60)
    run(["helm", "uninstall", "purger", "-n", ns, "--timeout", "2m"], timeout=180)
    kubectl("delete", "namespace", ns, "--wait=false")


def test_a_failing_migrate_hook_fails_the_install_and_leaves_nothing_orphaned(
    infra: dict[str, str], tmp_path: Path
) -> None:
    ns = "broken-migrate"
    with pytest.raises(AssertionError, match="helm install"):
        install_as_in_readme(
            infra,
            tmp_path,
            namespace=ns,
            url=infra["bad_database_url"],
            migrate={"backoffLimit": 0, "activeDeadlineSeconds": 120},
        )
    # The failed Job stays for its logs, and what it points at stays with it.
    (job,) = kjson("-n", ns, "get", "jobs")["items"]
    assert job["status"].get("failed", 0) >= 1
    spec = job["spec"]["template"]["spec"]
    kubectl("-n", ns, "get", "serviceaccount", spec["serviceAccountName"])
    policy = next(v for v in spec["volumes"] if v["name"] == "policy")["configMap"]["name"]
    kubectl("-n", ns, "get", "configmap", policy)
    logs = kubectl("-n", ns, "logs", f"job/{job['metadata']['name']}", check=False)
    assert "password" in (logs.stdout + logs.stderr).lower(), logs.stdout[-2000:]
    run(["helm", "uninstall", "purger", "-n", ns, "--timeout", "2m"], timeout=180, check=False)
    kubectl("delete", "namespace", ns, "--wait=false")


def test_the_loss_check_fails_when_a_record_is_lost() -> None:
    # Runs after test_1_deploy.py (file order): the split release is installed and consumes.
    # The check used across the rolling restart (every produced id stored exactly once) first
    # passes, then one stored record is destroyed behind the purger's back: it must fail and
    # name the lost record.
    produce("lost", 20, target="deploy/purger-scheduler")
    assert_ids_stored("lost", 20)
    psql("DELETE FROM purger.records_cdr WHERE record_id = 'lost-000007'")
    with pytest.raises(AssertionError, match=r"1 lost \['lost-000007'\]"):
        assert_ids_stored("lost", 20, timeout=10)
