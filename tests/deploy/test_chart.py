"""The Helm chart: lint, render, Kubernetes schemas, hardening, monitoring switches, conventions."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "purger"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CASES: list[Path | None] = [None, *CI_VALUES]
CASE_IDS = ["defaults", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest with schemas.
K8S_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, pod spec) of every object that runs pods."""
    specs = []
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            specs.append((d, d["spec"]["template"]["spec"]))
        elif d["kind"] == "CronJob":
            specs.append((d, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            specs.append((d, d["spec"]))
    return specs


def ident(d: dict[str, Any]) -> str:
    return f"{d['kind']}/{d['metadata']['name']}"


def dashboard_configmaps(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d
        for d in by_kind(docs, "ConfigMap")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboard"
    ]


# --------------------------------------------------------------------------- lint and render


@pytest.mark.parametrize("values_file", CASES, ids=CASE_IDS)
def test_helm_lint(helm: str, values_file: Path | None) -> None:
    cmd = [helm, "lint", "--strict", str(CHART)]
    if values_file is not None:
        cmd += ["--values", str(values_file)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, f"helm lint failed:\n{result.stdout}\n{result.stderr}"
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_ci_values_cover_the_layouts() -> None:
    names = {p.name for p in CI_VALUES}
    assert len(names) >= 4, names
    merged = [yaml.safe_load(p.read_text()) or {} for p in CI_VALUES]
    assert any(v.get("mode") == "split" for v in merged), "no ci values file with mode: split"
    assert any(
        v.get("serviceMonitor", {}).get("enabled")
        and v.get("prometheusRule", {}).get("enabled")
        and v.get("grafanaDashboard", {}).get("enabled")
        and v.get("networkPolicy", {}).get("enabled")
        for v in merged
    ), "no ci values file with all monitoring and the NetworkPolicy on"
    assert any(v.get("kafka", {}).get("securityProtocol") == "SASL_SSL" for v in merged), (
        "no ci values file with SASL/TLS"
    )


@pytest.mark.parametrize("values_file", CASES, ids=CASE_IDS)
def test_template_renders_the_core_objects(render: Any, values_file: Path | None) -> None:
    docs = render(values_file)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Job", "Pod", "PodDisruptionBudget"} <= kinds, kinds
    for d in docs:
        assert d["metadata"]["namespace"], ident(d)
        assert len(d["metadata"]["name"]) <= 63, ident(d)


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("values_file", CASES, ids=CASE_IDS)
def test_core_objects_match_the_kubernetes_schemas(
    render: Any, values_file: Path | None, k8s_version: str
) -> None:
    checked = 0
    for d in render(values_file):
        if d["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(d, k8s_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{ident(d)} is invalid for Kubernetes {k8s_version}: {e.message}")
        checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------- hardening


@pytest.mark.parametrize("values_file", CASES, ids=CASE_IDS)
def test_every_pod_meets_the_restricted_pod_security_standard(
    render: Any, values_file: Path | None
) -> None:
    specs = pod_specs(render(values_file))
    assert specs
    for obj, spec in specs:
        where = ident(obj)
        psc = spec.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True, where
        assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(forbidden), f"{where}: {forbidden}"
        for volume in spec.get("volumes", []):
            assert "hostPath" not in volume, f"{where}: hostPath volume {volume['name']}"
        containers = spec["containers"] + spec.get("initContainers", [])
        for c in containers:
            cwhere = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot") is True, cwhere
            assert sc.get("allowPrivilegeEscalation") is False, cwhere
            assert sc.get("privileged", False) is False, cwhere
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], cwhere
            assert not sc.get("capabilities", {}).get("add"), cwhere
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", cwhere
            assert sc.get("readOnlyRootFilesystem") is True, cwhere
            assert sc.get("runAsUser", psc.get("runAsUser", 0)) != 0, cwhere
            resources = c.get("resources", {})
            assert resources.get("requests", {}).get("cpu"), f"{cwhere}: no cpu request"
            assert resources.get("requests", {}).get("memory"), f"{cwhere}: no memory request"
            assert resources.get("limits", {}).get("memory"), f"{cwhere}: no memory limit"
            # Read-only root: /tmp is an emptyDir.
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{cwhere}: no /tmp mount"
            tmp = next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"])
            assert "emptyDir" in tmp, cwhere
            if obj["kind"] in LONG_RUNNING:
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", cwhere
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", cwhere


@pytest.mark.parametrize("values_file", CASES, ids=CASE_IDS)
def test_no_secret_is_rendered_and_credentials_come_from_secret_refs(
    render: Any, values_file: Path | None
) -> None:
    docs = render(values_file)
    assert not by_kind(docs, "Secret"), "the chart must not render Secrets"
    secret_vars = {
        "PURGER_DATABASE_URL",
        "PURGER_DATABASE_PASSWORD",
        "PURGER_KAFKA_SASL_USERNAME",
        "PURGER_KAFKA_SASL_PASSWORD",
    }
    for obj, spec in pod_specs(docs):
        for c in spec["containers"]:
            for env in c.get("env", []):
                if env["name"] in secret_vars:
                    assert "value" not in env, f"{ident(obj)}: {env['name']} has a literal value"
                    assert "secretKeyRef" in env["valueFrom"], f"{ident(obj)}: {env['name']}"


def test_sasl_and_tls_settings_come_from_existing_secrets(render: Any) -> None:
    docs = render(CHART / "ci" / "sasl-tls-values.yaml")
    (deployment,) = by_kind(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["PURGER_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["PURGER_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-256"
    for var, key in [
        ("PURGER_KAFKA_SASL_USERNAME", "username"),
        ("PURGER_KAFKA_SASL_PASSWORD", "password"),
    ]:
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "purger-kafka-sasl", "key": key}
    assert env["PURGER_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "purger-db",
        "key": "dsn",
    }
    assert env["PURGER_DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    tls_dir = mounts["kafka-tls"]["mountPath"]
    assert mounts["kafka-tls"]["readOnly"] is True
    assert env["PURGER_KAFKA_SSL_CAFILE"]["value"] == f"{tls_dir}/ca.crt"
    assert env["PURGER_KAFKA_SSL_CERTFILE"]["value"] == f"{tls_dir}/tls.crt"
    assert env["PURGER_KAFKA_SSL_KEYFILE"]["value"] == f"{tls_dir}/tls.key"
    volume = next(v for v in spec["volumes"] if v["name"] == "kafka-tls")
    assert volume["secret"]["secretName"] == "purger-kafka-tls"
    # An existing policy ConfigMap: none is rendered, and none is copied for the hook.
    assert not [d for d in by_kind(docs, "ConfigMap")]
    policy = next(v for v in spec["volumes"] if v["name"] == "policy")
    assert policy["configMap"]["name"] == "purger-retention-policy"


def test_plaintext_kafka_sets_no_sasl_or_tls_variables(render: Any) -> None:
    for obj, spec in pod_specs(render()):
        names = {e["name"] for c in spec["containers"] for e in c.get("env", [])}
        assert not {n for n in names if n.startswith(("PURGER_KAFKA_SASL", "PURGER_KAFKA_SSL"))}, (
            ident(obj)
        )


def test_sasl_without_a_secret_is_refused(helm: str) -> None:
    result = subprocess.run(
        [helm, "template", "purger", str(CHART), "--set", "kafka.securityProtocol=SASL_SSL"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    assert "kafka.sasl.existingSecret" in result.stderr


def test_too_many_consumers_for_the_partitions_is_refused(helm: str) -> None:
    result = subprocess.run(
        [
            helm,
            "template",
            "purger",
            str(CHART),
            "--set",
            "consumer.replicas=4",
            "--set",
            "consumer.workers=2",
            "--set",
            "consumer.topicPartitions=6",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0
    assert "consumer.topicPartitions" in result.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "mode=both",
        "kafka.securityProtocol=TLS",
        "kafka.sasl.mechanism=GSSAPI",
        "config.logLevel=TRACE",
        "config.logFormat=xml",
        "policy.categories.cdr.retention=6months",
        "securityContext.allowPrivilegeEscalation=true",
        "unknownKey=1",
    ],
)
def test_the_schema_rejects_bad_values(helm: str, bad: str) -> None:
    result = subprocess.run(
        [helm, "template", "purger", str(CHART), "--set", bad],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0, f"--set {bad} was accepted"
    assert "schema" in result.stderr.lower(), result.stderr


# --------------------------------------------------------------------------- workloads


def test_combined_mode_runs_one_deployment_with_consumers_and_scheduler(render: Any) -> None:
    docs = render(None, "consumer.replicas=2", "consumer.workers=3")
    (deployment,) = by_kind(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["run", "--workers", "3"]
    assert deployment["spec"]["replicas"] == 2
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PURGER_HTTP_HOST"] == "0.0.0.0"
    assert env["PURGER_POLICY_FILE"].startswith("/etc/purger/")
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_split_mode_runs_consumers_and_a_separate_scheduler(render: Any) -> None:
    docs = render(CHART / "ci" / "split-values.yaml")
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in by_kind(docs, "Deployment")
    }
    assert set(deployments) == {"consumer", "scheduler"}
    consumer = deployments["consumer"]["spec"]
    scheduler = deployments["scheduler"]["spec"]
    assert consumer["template"]["spec"]["containers"][0]["args"] == [
        "run",
        "--no-scheduler",
        "--workers",
        "2",
    ]
    assert consumer["replicas"] == 3
    assert scheduler["template"]["spec"]["containers"][0]["args"] == ["schedule"]
    assert scheduler["replicas"] == 2
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert sorted(
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for p in pdbs
    ) == ["consumer", "scheduler"]
    assert all(p["spec"]["minAvailable"] == 1 for p in pdbs)
    # The selectors of the two Deployments do not overlap.
    assert consumer["selector"] != scheduler["selector"]


def test_migration_is_a_pre_install_and_pre_upgrade_hook(render: Any) -> None:
    docs = render()
    (job,) = [
        j
        for j in by_kind(docs, "Job")
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "migrate"
    ]
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    # Who applied the policy, for its audit entry: the release and its revision.
    assert args[:2] == ["migrate", "--by"] and args[2].startswith("helm ")
    assert "--allow-bound-change" not in args
    allowed = by_kind(render(None, "migrate.allowBoundChange=true"), "Job")
    assert any(
        "--allow-bound-change" in j["spec"]["template"]["spec"]["containers"][0]["args"]
        for j in allowed
    )
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # What the hook needs exists before it: hook copies with a lower weight.
    spec = job["spec"]["template"]["spec"]
    hooks = [
        d
        for d in docs
        if d["kind"] in ("ConfigMap", "ServiceAccount")
        and "helm.sh/hook" in d["metadata"].get("annotations", {})
    ]
    names = {(d["kind"], d["metadata"]["name"]) for d in hooks}
    policy = next(v for v in spec["volumes"] if v["name"] == "policy")["configMap"]["name"]
    assert ("ConfigMap", policy) in names
    assert ("ServiceAccount", spec["serviceAccountName"]) in names
    for d in hooks:
        assert int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            annotations["helm.sh/hook-weight"]
        )


def test_policy_configmap_is_rendered_from_values(render: Any) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = render(CHART / "ci" / "split-values.yaml")
    (cm,) = [
        d
        for d in by_kind(docs, "ConfigMap")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "policy"
    ]
    policy = yaml.safe_load(cm["data"]["retention.yaml"])
    assert policy["version"] == "2026-12-01.1"
    assert set(policy["categories"]) == set(values["policy"]["categories"])
    recordings = policy["categories"]["call_recordings"]
    assert recordings["retention"] == "P90D"
    # Helm merges maps: the default override stays next to the ones the file adds.
    assert recordings["tenant_overrides"] == {
        "callcenter-noord": "P1Y",
        "tenant-a": "P30D",
        "tenant-b": "P1Y",
    }
    assert policy["categories"]["cdr"] == values["policy"]["categories"]["cdr"]
    # The pods roll when the policy changes.
    for d in by_kind(docs, "Deployment"):
        assert "checksum/policy" in d["spec"]["template"]["metadata"]["annotations"]


def test_default_policy_matches_the_repository_policy_file(render: Any) -> None:
    policy_file = REPO / "config" / "retention.yaml"
    assert policy_file.is_file(), f"{policy_file} is missing (the image copies it)"
    repo = yaml.safe_load(policy_file.read_text())
    for category in repo["categories"].values():
        category.setdefault("tenant_overrides", {})
    (cm,) = [
        d
        for d in by_kind(render(), "ConfigMap")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "policy"
    ]
    chart = yaml.safe_load(cm["data"]["retention.yaml"])
    assert chart == repo, "policy.* in values.yaml differs from config/retention.yaml"


def test_the_operator_job_is_optional_and_runs_the_given_command(render: Any) -> None:
    assert not [
        j
        for j in by_kind(render(), "Job")
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    docs = render(CHART / "ci" / "monitoring-values.yaml")
    (job,) = [
        j
        for j in by_kind(docs, "Job")
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    assert job["metadata"]["name"] == "purger-op-hold-release-42"
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["hold", "release", "42"]
    assert job["spec"]["backoffLimit"] == 0


def test_helm_test_pod_checks_readyz(render: Any) -> None:
    (pod,) = by_kind(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    command = " ".join(c.get("command", []) + c.get("args", []))
    assert "http://purger.purger.svc:9108/readyz" in command
    assert pod["spec"]["restartPolicy"] == "Never"


def test_service_exposes_the_metrics_port_of_the_workloads(render: Any) -> None:
    docs = render(CHART / "ci" / "split-values.yaml")
    (service,) = by_kind(docs, "Service")
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["targetPort"] == "http"
    for d in by_kind(docs, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), ident(d)
        ports = d["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert [p["name"] for p in ports] == ["http"]
    # Jobs and test pods declare no `http` port, so they never become endpoints.
    for obj, spec in pod_specs(docs):
        if obj["kind"] not in LONG_RUNNING:
            assert not [p for c in spec["containers"] for p in c.get("ports", [])], ident(obj)


# --------------------------------------------------------------------------- helpers and labels


def test_selector_labels_carry_no_version(render: Any) -> None:
    for d in by_kind(render(CHART / "ci" / "split-values.yaml"), "Deployment"):
        selector = d["spec"]["selector"]["matchLabels"]
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance"} <= set(selector)
        assert "helm.sh/chart" not in selector and "app.kubernetes.io/version" not in selector
        labels = d["metadata"]["labels"]
        assert labels["helm.sh/chart"].startswith("purger-")
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_names_are_truncated_to_63_characters(render: Any) -> None:
    release = "r" * 53  # the longest release name helm accepts
    for values in (
        None,
        CHART / "ci" / "split-values.yaml",
        CHART / "ci" / "monitoring-values.yaml",
    ):
        for d in render(values, release=release):
            name = d["metadata"]["name"]
            assert len(name) <= 63, ident(d)
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), ident(d)
    docs = render(None, "fullnameOverride=" + "f" * 70)
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["metadata"]["name"] == "f" * 63
    # Release names that contain the chart name are not repeated.
    (deployment,) = by_kind(render(None, release="purger-prod"), "Deployment")
    assert deployment["metadata"]["name"] == "purger-prod"


def test_chart_follows_the_prometheus_community_layout() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "purger"
    assert chart["kubeVersion"]
    templates = CHART / "templates"
    helpers = (templates / "_helpers.tpl").read_text()
    for define in (
        "purger.name",
        "purger.fullname",
        "purger.chart",
        "purger.labels",
        "purger.selectorLabels",
    ):
        assert f'define "{define}"' in helpers, define
    assert "trunc 63" in helpers
    assert (templates / "NOTES.txt").is_file()
    assert (CHART / "values.schema.json").is_file()
    assert list((templates / "tests").glob("*.yaml")), "no helm test pod"
    # One Kubernetes kind per template file.
    for path in templates.rglob("*.yaml"):
        kinds = set(re.findall(r"^kind:\s*(\w+)", path.read_text(), flags=re.MULTILINE))
        assert len(kinds) == 1, f"{path.name}: {kinds}"


# --------------------------------------------------------------------------- monitoring


def test_monitoring_and_networkpolicy_are_off_by_default(render: Any) -> None:
    docs = render()
    kinds = {d["kind"] for d in docs}
    assert not kinds & MONITORING_KINDS, kinds
    assert "NetworkPolicy" not in kinds
    assert not dashboard_configmaps(docs)


@pytest.mark.parametrize(
    ("switch", "expected"),
    [
        ("serviceMonitor.enabled", "ServiceMonitor"),
        ("prometheusRule.enabled", "PrometheusRule"),
        ("grafanaDashboard.enabled", "dashboard"),
    ],
)
def test_each_monitoring_object_has_its_own_switch(render: Any, switch: str, expected: str) -> None:
    docs = render(None, f"{switch}=true")
    present = {d["kind"] for d in docs} & MONITORING_KINDS
    if dashboard_configmaps(docs):
        present.add("dashboard")
    assert present == {expected}


def test_monitoring_objects_are_well_formed(render: Any) -> None:
    docs = render(CHART / "ci" / "monitoring-values.yaml")
    (service,) = by_kind(docs, "Service")
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["purger"]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    assert endpoint["metricRelabelings"][0]["action"] == "drop"

    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    for r in (r for g in groups for r in g["rules"]):
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert isinstance(r["expr"], str) and r["expr"].strip()
        assert r["labels"]["team"] == "compliance"

    (cm,) = dashboard_configmaps(docs)
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Compliance"}


def test_dashboard_configmap_has_the_sidecar_label_and_a_stable_uid(render: Any) -> None:
    (cm,) = dashboard_configmaps(render(None, "grafanaDashboard.enabled=true"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = cm["data"]
    dashboard = json.loads(cm["data"][key])
    on_disk = json.loads((CHART / "dashboards" / "purger.json").read_text())
    assert dashboard == on_disk
    assert dashboard["uid"] == "purger-retention"
    assert len(dashboard["uid"]) <= 40
    (cm,) = dashboard_configmaps(
        render(
            None,
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.sidecarLabel=my_dashboards",
            "grafanaDashboard.sidecarLabelValue=yes",
        )
    )
    assert cm["metadata"]["labels"]["my_dashboards"] == "yes"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]


def test_dashboard_panels_cover_the_required_views() -> None:
    dashboard = json.loads((CHART / "dashboards" / "purger.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for needle in (
        "purger_records_ingested_total",
        "purger_records_rejected_total",
        "purger_records_dead_lettered_total",
        "purger_consumer_lag_records",
        "purger_purge_runs_total",
        "purger_purge_duration_seconds_bucket",
        "purger_last_purge_success_timestamp_seconds",
        "purger_overdue_records",
        "purger_records_held",
        "purger_legal_holds_active",
    ):
        assert needle in exprs, f"no panel queries {needle}"
    assert "sum by (outcome)" in exprs
    assert "by (category, reason)" in exprs
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= variables
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]


# --------------------------------------------------------------------------- NetworkPolicy


def test_networkpolicy_allows_only_kafka_postgresql_dns_and_scrapes(render: Any) -> None:
    values = yaml.safe_load((CHART / "ci" / "monitoring-values.yaml").read_text())["networkPolicy"]
    docs = render(CHART / "ci" / "monitoring-values.yaml")
    policies = {
        p["metadata"]["labels"].get("app.kubernetes.io/component", "workloads"): p
        for p in by_kind(docs, "NetworkPolicy")
    }
    main = policies["workloads"]["spec"]
    assert set(main["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = main["ingress"]
    assert ingress["ports"] == [{"port": 9108, "protocol": "TCP"}]
    assert ingress["from"], "ingress must name its sources"
    egress_ports = [rule["ports"] for rule in main["egress"]]
    assert egress_ports == [
        values["kafka"]["ports"],
        [{"port": 5432, "protocol": "TCP"}],
        [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    ]
    assert main["egress"][0]["to"] == values["kafka"]["to"]
    assert main["egress"][1]["to"] == values["postgresql"]["to"]
    # The test pod's own policy: egress to the metrics port only (and DNS), no ingress.
    test = policies["test"]["spec"]
    assert "ingress" not in test and "Ingress" in test["policyTypes"]
    assert test["egress"][0]["ports"] == [{"port": 9108, "protocol": "TCP"}]


# --------------------------------------------------------------------------- values documentation


def _values_paths_without_comment() -> list[str]:
    """Leaf paths of values.yaml with no `# --` comment on themselves or an ancestor."""
    missing = []
    stack: list[tuple[int, str, bool]] = []  # (indent, path, documented)
    previous_comment = False
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            previous_comment = False
            continue
        if stripped.startswith("# --"):
            previous_comment = True
            continue
        if stripped.startswith("#"):
            continue  # continuation of a comment keeps previous_comment as it is
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$", line)
        if not match or stripped.startswith("-"):
            previous_comment = False
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = previous_comment or (bool(stack) and stack[-1][2])
        path = ".".join([s[1] for s in stack] + [match.group(2)])
        rest = match.group(3).strip()
        if rest and not rest.startswith("#") and not documented:
            missing.append(path)
        stack.append((indent, match.group(2), documented))
        previous_comment = False
    # Maps without a value on their line whose children all lack docs are caught by the children.
    return missing


def test_every_values_key_is_commented() -> None:
    assert _values_paths_without_comment() == []


def _schema_node(schema: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    node = schema
    for key in path:
        props = node.get("properties", {})
        if key in props:
            node = props[key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif node.get("type") == "object" and "properties" not in node:
            return node  # a free-form object (resources, affinity, ...)
        else:
            return None
    return node


def test_the_schema_describes_every_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    problems = []

    def walk(value: Any, path: list[str]) -> None:
        node = _schema_node(schema, path)
        dotted = ".".join(path)
        if node is None:
            problems.append(f"{dotted}: not in values.schema.json")
            return
        if "description" not in node:
            problems.append(f"{dotted}: no description")
        if isinstance(value, dict) and "properties" in node:
            for k, v in value.items():
                walk(v, [*path, k])

    for key, value in values.items():
        walk(value, [key])
    assert problems == []
    assert schema["additionalProperties"] is False
    # The closed choices are enums.
    props = schema["properties"]
    assert props["mode"]["enum"] == ["combined", "split"]
    assert set(props["kafka"]["properties"]["securityProtocol"]["enum"]) == {
        "PLAINTEXT",
        "SSL",
        "SASL_PLAINTEXT",
        "SASL_SSL",
    }
    assert set(props["kafka"]["properties"]["sasl"]["properties"]["mechanism"]["enum"]) == {
        "PLAIN",
        "SCRAM-SHA-256",
        "SCRAM-SHA-512",
    }
    assert set(props["config"]["properties"]["logLevel"]["enum"]) == {
        "DEBUG",
        "INFO",
        "WARNING",
        "ERROR",
    }
    assert set(props["config"]["properties"]["logFormat"]["enum"]) == {"text", "json"}


# --------------------------------------------------------------------------- documentation


def test_the_documented_values_file_lints(helm: str, tmp_path: Path) -> None:
    text = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    match = re.search(r"A typical `my-values.yaml`:\s*```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert match, "docs/deploy.md has no my-values.yaml example"
    values = tmp_path / "my-values.yaml"
    values.write_text(match.group(1))
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--values", str(values)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_documented_operator_job_command_renders(helm: str) -> None:
    result = subprocess.run(
        [
            helm,
            "template",
            "purger",
            str(CHART),
            "-n",
            "purger",
            "--show-only",
            "templates/operator-job.yaml",
            "--set",
            "operatorJob.enabled=true",
            "--set",
            "operatorJob.name=release-42",
            "--set-json",
            "operatorJob.args="
            '["hold","release","42","--by","alice","--reason","case closed","--json"]',
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (job,) = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert job["kind"] == "Job" and job["metadata"]["name"] == "purger-op-release-42"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "hold",
        "release",
        "42",
        "--by",
        "alice",
        "--reason",
        "case closed",
        "--json",
    ]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_the_migrate_job_alone_connects_as_the_owner(render: Any) -> None:
    docs = render(
        None,
        "database.existingSecret=purger-db-runtime",
        "database.passwordKey=password",
        "database.runtimeUser=purger_app",
        "database.migrate.existingSecret=purger-db-owner",
        "database.migrate.urlKey=owner-url",
        "operatorJob.enabled=true",
    )
    seen = set()
    for doc, spec in pod_specs(docs):
        component = doc["metadata"]["labels"].get("app.kubernetes.io/component", "")
        for container in spec["containers"]:
            env = _env(container)
            if "PURGER_DATABASE_URL" not in env:
                continue  # the helm test pod
            url = env["PURGER_DATABASE_URL"]["secretKeyRef"]
            seen.add(component)
            if component == "migrate":
                assert url == {"name": "purger-db-owner", "key": "owner-url"}
                assert "PURGER_DATABASE_PASSWORD" not in env
                assert env["PURGER_DATABASE_RUNTIME_USER"] == "purger_app"
            else:
                assert url == {"name": "purger-db-runtime", "key": "url"}
                assert (
                    env["PURGER_DATABASE_PASSWORD"]["secretKeyRef"]["name"] == "purger-db-runtime"
                )
                assert "PURGER_DATABASE_RUNTIME_USER" not in env
            assert env["PURGER_AUDIT_ANCHOR_TOPIC"] == "purger.audit-anchors"
    assert "migrate" in seen and len(seen) >= 3, seen


def test_without_an_owner_secret_the_migrate_job_uses_the_runtime_one(render: Any) -> None:
    (job,) = [
        j
        for j in by_kind(render(), "Job")
        if j["metadata"]["labels"]["app.kubernetes.io/component"] == "migrate"
    ]
    env = _env(job["spec"]["template"]["spec"]["containers"][0])
    assert env["PURGER_DATABASE_URL"]["secretKeyRef"] == {"name": "purger-database", "key": "url"}
