"""`purger run` against the real services: endpoints, exported metrics, clean shutdown."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from purger.settings import Settings
from tests.deploy.referenced_metrics import base_name, referenced_metric_names
from tests.integration.support import http_get, running_purger

pytestmark = pytest.mark.integration


@pytest.fixture
def service(
    settings: Settings, topics: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A running `purger run` (consumers, scheduler, HTTP) and its base URL."""
    with running_purger(settings) as running:
        yield running


def test_every_metric_of_the_dashboard_and_alerts_is_exported(service: Any) -> None:
    base, _proc = service
    status, body = http_get(f"{base}/metrics")
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
    assert http_get(f"{base}/healthz")[0] == 200
    assert http_get(f"{base}/readyz")[0] == 200
    assert http_get(f"{base}/nothing-here")[0] == 404


def test_sigterm_stops_the_service_cleanly(service: Any) -> None:
    _base, proc = service
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
