"""`purger run` against the real services: endpoints, exported metrics, clean shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from purger.settings import Settings
from tests.deploy.referenced_metrics import base_name, referenced_metric_names
from tests.integration.support import REPO, settings_env, wait_until

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def service(
    settings: Settings, topics: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A running `purger run` (consumers, scheduler, HTTP) and its base URL."""
    port = _free_port()
    env = {**os.environ, **settings_env(settings), "PURGER_HTTP_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "purger.cli", "run"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: proc.poll() is not None or _get(f"{base}/readyz")[0] == 200,
            what="/readyz to answer 200",
        )
        assert proc.poll() is None, proc.communicate()[1]
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_every_metric_of_the_dashboard_and_alerts_is_exported(service: Any) -> None:
    base, _proc = service
    status, body = _get(f"{base}/metrics")
    assert status == 200
    exported = {
        base_name(sample.name)
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    referenced = referenced_metric_names()
    assert referenced, "the chart references no metric"
    assert referenced <= exported, f"referenced but not exported: {sorted(referenced - exported)}"


def test_health_and_readiness(service: Any) -> None:
    base, _proc = service
    assert _get(f"{base}/healthz")[0] == 200
    assert _get(f"{base}/readyz")[0] == 200
    assert _get(f"{base}/nothing-here")[0] == 404


def test_sigterm_stops_the_service_cleanly(service: Any) -> None:
    _base, proc = service
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
