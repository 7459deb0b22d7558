"""Liveness from progress and keepalives, on the real services.

``/healthz`` of `purger run --workers 2` fails while one worker process is frozen
(SIGSTOP: it neither polls nor finishes a batch), names it, and recovers when the
worker runs again. Every PostgreSQL session of the purger has TCP keepalives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from purger.db import KEEPALIVES_IDLE_SECONDS, connect
from purger.settings import Settings
from tests.integration.support import http_get, running_purger, wait_until

pytestmark = pytest.mark.integration

TIMEOUT_SECONDS = 10


def _workers(parent: int) -> list[int]:
    """The consumer worker processes of ``parent`` (not multiprocessing's helpers)."""
    out = []
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"multiprocessing.spawn" in cmdline and b"resource_tracker" not in cmdline:
            out.append(int(child))
    return out


def _resume_and_terminate(proc: subprocess.Popen[str]) -> None:
    for pid in _workers(proc.pid) if proc.poll() is None else []:
        os.kill(pid, signal.SIGCONT)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture
def two_workers(
    settings: Settings, topics: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`purger run --no-scheduler --workers 2` with a short liveness timeout."""
    with running_purger(
        settings,
        "--no-scheduler",
        "--workers",
        "2",
        env={"PURGER_LIVENESS_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)},
        stop=_resume_and_terminate,
    ) as running:
        yield running


def test_healthz_fails_while_a_worker_makes_no_progress(
    two_workers: tuple[str, subprocess.Popen[str]],
) -> None:
    base, proc = two_workers
    workers = wait_until(lambda: len(_workers(proc.pid)) == 2 and _workers(proc.pid))
    wait_until(lambda: http_get(f"{base}/healthz")[0] == 200, what="/healthz 200 at start")

    os.kill(workers[0], signal.SIGSTOP)
    _status, body = wait_until(
        lambda: (r := http_get(f"{base}/healthz"))[0] == 503 and r,
        timeout=TIMEOUT_SECONDS * 4,
        what="/healthz 503 for the frozen worker",
    )
    assert len(json.loads(body)["stalled_workers"]) == 1
    os.kill(workers[0], signal.SIGCONT)
    wait_until(lambda: http_get(f"{base}/healthz")[0] == 200, what="/healthz 200 again")
    assert proc.poll() is None


def test_every_connection_has_client_and_server_keepalives(settings: Settings) -> None:
    with connect(settings.conninfo(), application="test") as conn:
        params = conn.info.get_parameters()
        assert params["keepalives"] == "1"
        assert params["keepalives_idle"] == str(KEEPALIVES_IDLE_SECONDS)
        row = conn.execute("SHOW tcp_keepalives_idle").fetchone()
        assert row is not None and row[0] == str(KEEPALIVES_IDLE_SECONDS)
        row = conn.execute("SHOW tcp_user_timeout").fetchone()
        assert row is not None and row[0] != "0"
