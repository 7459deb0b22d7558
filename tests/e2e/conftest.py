"""End-to-end suite: the image and the chart on a real single-node Kubernetes cluster.

`make test` and `make e2e` build the images (scripts/image.sh) and the cluster's binaries
(scripts/cluster.sh), then run `pytest tests/e2e` (scripts/e2e/run.sh); the session fixture
starts the cluster (scripts/cluster.sh up), loads the images into the node, deploys PostgreSQL
and Kafka in the cluster, and tears everything down at the end (also on failure), checking that
nothing is left behind. The host talks to the cluster only through the API server on 127.0.0.1
(kubectl exec, the API server's service proxy).

The suite is collected only when asked for (`pytest tests/e2e` or PURGER_E2E=1): a plain
`pytest` run does not start a cluster. A missing prerequisite fails, it never skips: a skipped
end-to-end test fails the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import string
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHART = REPO / "deploy" / "helm" / "purger"
SCRIPTS = REPO / "scripts"
NS = "purger"
_STARTED = time.monotonic()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests on a real Kubernetes cluster")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if os.environ.get("PURGER_E2E") == "1":
        return None
    asked = any("e2e" in str(a) for a in config.args)
    return None if asked else True


def _skipped_e2e(config: pytest.Config) -> list[str]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    reports = reporter.stats.get("skipped", []) if reporter else []
    return [r.nodeid for r in reports if r.nodeid.startswith("tests/e2e/")]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Never skipped: a skipped end-to-end test (a missing tool, a marker) fails the run."""
    if _skipped_e2e(session.config) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = _skipped_e2e(terminalreporter.config)
    if skipped:
        terminalreporter.write_line(
            f"FAILED: {len(skipped)} end-to-end test(s) skipped, which counts as a failure: "
            + ", ".join(skipped),
            red=True,
        )
    if os.environ.get("PURGER_E2E_TIMING_PRINTED"):
        return
    elapsed = time.monotonic() - _STARTED
    terminalreporter.write_line(
        f"end-to-end suite: {elapsed:.0f} s (cluster start, tests and teardown)"
    )


# ------------------------------------------------------------------------------------ commands
def _env() -> dict[str, str]:
    out = subprocess.run(
        [str(SCRIPTS / "cluster.sh"), "env"], capture_output=True, text=True, check=True
    ).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = os.path.expandvars(
            subprocess.run(
                ["bash", "-c", f"printf %s {value}"],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
        )
    return env


ENV = _env()


def run(
    cmd: str | list[str],
    *,
    check: bool = True,
    timeout: float = 300,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with the cluster's kubectl and helm first on PATH."""
    args = shlex.split(cmd) if isinstance(cmd, str) else cmd
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=timeout,
        input=input,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"`{shlex.join(args)}` exited {done.returncode}\n"
            f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
        )
    return done


def kubectl(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run(["kubectl", *args], **kw)


def kjson(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json").stdout)


def wait_until(what: str, predicate: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    """Poll until predicate() returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except AssertionError as error:
            last = error
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {last}")
        time.sleep(every)


BAD_WAITING = {
    "CrashLoopBackOff",
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "RunContainerError",
}


def wait_pods_ready(
    namespace: str, selector: str, timeout: float = 180, expect: int = 1
) -> list[str]:
    """Every (non-finished) pod of the selector Running and Ready; fails early on a broken pod."""

    def ready() -> list[str] | None:
        pods = kjson("-n", namespace, "get", "pods", "-l", selector)["items"]
        live = [
            p
            for p in pods
            if p["status"].get("phase") not in ("Succeeded",)
            and not p["metadata"].get("deletionTimestamp")
        ]
        problems = []
        for p in live:
            for cs in p["status"].get("containerStatuses") or []:
                reason = (cs.get("state", {}).get("waiting") or {}).get("reason")
                if reason in BAD_WAITING or (cs.get("restartCount", 0) >= 3):
                    problems.append(f"{p['metadata']['name']}: {reason or 'restarts'} {cs}")
        if problems:
            describe = kubectl("-n", namespace, "describe", "pods", "-l", selector, check=False)
            raise PodNotReady("; ".join(problems) + "\n" + describe.stdout[-4000:])
        names = []
        for p in live:
            conditions = {c["type"]: c["status"] for c in p["status"].get("conditions") or []}
            if p["status"].get("phase") != "Running" or conditions.get("Ready") != "True":
                return None
            names.append(p["metadata"]["name"])
        return names if len(names) >= expect else None

    try:
        return wait_until(f"pods {selector} in {namespace} to be Ready", ready, timeout, 1.0)
    except AssertionError as error:
        if isinstance(error, PodNotReady):
            raise
        describe = kubectl("-n", namespace, "describe", "pods", "-l", selector, check=False)
        raise PodNotReady(f"{error}\n{describe.stdout[-4000:]}") from None


class PodNotReady(AssertionError):
    """A pod did not become Ready."""


def metrics(namespace: str = NS, service: str = "purger") -> dict[str, float]:
    """The purger's /metrics through the API server's service proxy, summed per series."""
    text = kubectl(
        "get", "--raw", f"/api/v1/namespaces/{namespace}/services/{service}:http/proxy/metrics"
    ).stdout
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        out[series] = out.get(series, 0.0) + float(value)
    return out


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    total = 0.0
    for series, value in samples.items():
        base, _, rest = series.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def purger_exec(
    *args: str, target: str = "deploy/purger", namespace: str = NS, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return kubectl("-n", namespace, "exec", target, "--", *args, **kw)


def stored(category: str, target: str = "deploy/purger", namespace: str = NS) -> int:
    stats = json.loads(
        purger_exec("purger", "stats", "--json", target=target, namespace=namespace).stdout
    )
    return int(stats["categories"][category]["records"])


PRODUCER = r"""
import json, sys, time, datetime
from kafka import KafkaProducer
bootstrap, topic, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
count, rate = int(sys.argv[4]), float(sys.argv[5])
age_s = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
tenant = sys.argv[7] if len(sys.argv) > 7 else "e2e"
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=10, linger_ms=5)
start = time.monotonic()
futures = []
for i in range(count):
    occurred = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=age_s)
    record = {
        "record_id": f"{prefix}-{i:06d}",
        "occurred_at": occurred.isoformat(),
        "tenant": tenant,
        "subjects": {"msisdn": f"+3161{i % 10000000:07d}"},
        "duration_s": i % 600,
    }
    futures.append(
        producer.send(topic, key=record["record_id"].encode(), value=json.dumps(record).encode())
    )
    if rate > 0:
        delay = start + (i + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
producer.flush(60)
acked = sum(1 for f in futures if f.succeeded())
producer.close(30)
print(json.dumps({"produced": acked}))
sys.exit(0 if acked == count else 1)
"""


def produce(
    prefix: str,
    count: int,
    *,
    topic: str = "telecom.cdr",
    rate: float = 0,
    age_s: float = 0,
    tenant: str = "e2e",
    target: str = "deploy/purger",
) -> None:
    """Produce from inside the cluster (kubectl exec into a purger pod, where Kafka is).

    Record ids are `{prefix}-{i:06d}`; every record is acknowledged by the broker (acks=all).
    """
    done = purger_exec(
        "python",
        "-c",
        PRODUCER,
        "kafka.kafka.svc:9092",
        topic,
        prefix,
        str(count),
        str(rate),
        str(age_s),
        tenant,
        target=target,
        timeout=300,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"produced": count}


def psql(sql: str) -> list[str]:
    """Rows of a query, run in the in-cluster PostgreSQL pod (local socket, no password)."""
    done = kubectl(
        "-n", "db", "exec", "deploy/postgres", "--",
        "psql", "-h", "/tmp", "-U", "purger", "-d", "purger", "-v", "ON_ERROR_STOP=1",
        "-At", "-c", sql,
    )  # fmt: skip
    return [line for line in done.stdout.splitlines() if line]


def stored_ids(prefix: str, category: str = "cdr") -> list[str]:
    """Ids of the stored records `{prefix}-*` of a category (live and held), with repeats."""
    assert re.fullmatch(r"[a-z0-9_]+", prefix + category), (prefix, category)
    return psql(
        f"SELECT record_id FROM purger.records_{category} WHERE record_id LIKE '{prefix}-%' "
        f"UNION ALL SELECT record_id FROM purger.held_{category} WHERE record_id LIKE '{prefix}-%'"
    )


def assert_ids_stored(prefix: str, count: int, category: str = "cdr", timeout: float = 120) -> None:
    """Every produced id `{prefix}-000000..` stored exactly once: nothing lost, nothing doubled."""
    expected = {f"{prefix}-{i:06d}" for i in range(count)}
    with contextlib.suppress(AssertionError):  # a timeout is reported below, with the ids
        wait_until(
            f"{count} {category} records {prefix}-* stored",
            lambda: expected <= set(stored_ids(prefix, category)),
            timeout,
            2,
        )
    ids = stored_ids(prefix, category)
    missing = sorted(expected - set(ids))
    doubled = sorted(i for i, n in Counter(ids).items() if n > 1)
    unknown = sorted(set(ids) - expected)
    assert not (missing or doubled or unknown), (
        f"{prefix}: {len(missing)} lost {missing[:20]}, {len(doubled)} doubled {doubled[:20]}, "
        f"{len(unknown)} unexpected {unknown[:20]}"
    )


def producer_pod_manifest(name: str, prefix: str, count: int, rate: float, image: str) -> str:
    """A restricted-compliant producer Pod (survives the purger's rolling restart)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "e2e-producer"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "producer",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": [
                        "python",
                        "-c",
                        PRODUCER,
                        "kafka.kafka.svc:9092",
                        "telecom.cdr",
                        prefix,
                        str(count),
                        str(rate),
                    ],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    return json.dumps(pod)


# ------------------------------------------------------------------------------------ fixtures
def _images() -> dict[str, str]:
    out = subprocess.run(
        [str(SCRIPTS / "image.sh"), "names"], capture_output=True, text=True, check=True
    ).stdout
    names = dict(
        re.match(r"export (\w+)=(.*)", line).groups()  # type: ignore[union-attr]
        for line in out.splitlines()
    )
    return {k: shlex.split(v)[0] for k, v in names.items()}


IMAGES = _images()


@pytest.fixture(scope="session")
def cluster() -> Iterator[dict[str, str]]:
    """A started cluster with the images loaded; torn down completely afterwards."""
    for image in IMAGES.values():
        found = run(
            [str(SCRIPTS / "image.sh"), "buildah", "inspect", "--type", "image", image], check=False
        )
        assert found.returncode == 0, (
            f"image {image} is missing: run `make image e2e-images` (or `make e2e`) first"
        )
    try:
        up = run([str(SCRIPTS / "cluster.sh"), "up"], timeout=1800, check=False)
        assert up.returncode == 0, f"cluster.sh up failed:\n{up.stderr[-5000:]}"
        run([str(SCRIPTS / "cluster.sh"), "load", *IMAGES.values()], timeout=900)
        yield IMAGES
    finally:
        if os.environ.get("PURGER_E2E_KEEP") != "1":
            down = run([str(SCRIPTS / "cluster.sh"), "down"], timeout=300, check=False)
            assert down.returncode == 0, f"cluster.sh down left something behind:\n{down.stderr}"


@pytest.fixture(scope="session")
def infra(cluster: dict[str, str]) -> dict[str, str]:
    """PostgreSQL (db/postgres) and Kafka (kafka/kafka) running in the cluster."""
    password = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))
    manifest = string.Template((HERE / "infra.yaml").read_text()).safe_substitute(
        POSTGRES_PASSWORD=password,
        POSTGRES_IMAGE=cluster["PURGER_E2E_POSTGRES_IMAGE"],
        KAFKA_IMAGE=cluster["PURGER_E2E_KAFKA_IMAGE"],
    )
    kubectl("apply", "-f", "-", input=manifest)
    wait_pods_ready("db", "app=postgres", timeout=180)
    wait_pods_ready("kafka", "app=kafka", timeout=240)
    return {
        "database_url": f"postgresql://purger:{password}@postgres.db.svc:5432/purger",
        "bad_database_url": "postgresql://purger:wrong-password@postgres.db.svc:5432/purger",
        "bootstrap": "kafka.kafka.svc:9092",
        "image": cluster["PURGER_IMAGE"],
    }
