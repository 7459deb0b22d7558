"""Section 4, hold cost: the same pass with 0, 1,000 and 100,000 held records.

The held records share one tenant (``bench-held-<count>``) spread evenly over the
expired partitions, so one hold placed with ``purger hold place --tenant`` covers
them all. The pass with no hold is the pass at M of section 2 (same data set).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.config import BenchConfig
from benchmarks.dataset import CATEGORY, held_tenant
from benchmarks.passes import checkpoint, timed_pass
from benchmarks.workspace import REPO, Workspace

log = logging.getLogger("benchmarks")

NOT_AVAILABLE = "not run: legal holds not available"


def available() -> bool:
    """True when the legal holds module can be imported."""
    try:
        return importlib.util.find_spec("purger.hold_registry") is not None
    except (ImportError, ValueError):
        return False


def place_hold(ws: Workspace, url: str, tenant: str) -> dict[str, Any]:
    """``purger hold place --tenant`` through the CLI, as an operator would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PURGER_")}
    env.update({"PURGER_DATABASE_URL": url, "PURGER_POLICY_FILE": str(ws.policy_file)})
    command = [
        sys.executable,
        "-m",
        "purger.cli",
        "hold",
        "place",
        "--case-ref",
        f"BENCH-{ws.run_id}-{tenant}",
        "--reason",
        "benchmark: cost of a pass with held records",
        "--by",
        "make bench",
        "--tenant",
        tenant,
        "--json",
    ]
    done = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"hold place failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    try:
        parsed: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        parsed = {"output": done.stdout.strip()[-500:]}
    return parsed


def _held_kept(url: str) -> int | None:
    table = f"held_{CATEGORY}"
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f"purger.{table}"]).fetchone()
        if not row or not row[0]:
            return None
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM purger.{}").format(sql.Identifier(table))
        ).fetchone()
    return int(count[0]) if count else None


def run(
    ws: Workspace,
    config: BenchConfig,
    clones: dict[int, str],
    held_rows: dict[str, int],
    pass_m: dict[str, Any] | None,
) -> dict[str, Any]:
    """One pass per hold size; the size-0 pass is section 2's pass at M."""
    if not available():
        return {"status": NOT_AVAILABLE}
    out: dict[str, Any] = {"status": "run", "passes": {}}
    for count in config.hold_counts:
        if count == 0:
            out["passes"]["0"] = {"held_records": 0, "pass": pass_m, "hold": None}
            continue
        label = clones[count]
        url = config.database_url(ws.db_name(label))
        tenant = held_tenant(count)
        log.info("holds: pass with %s held records", count)
        try:
            placing = time.perf_counter()
            hold = place_hold(ws, url, tenant)
            placed = time.perf_counter() - placing
            checkpoint(url)
            result = timed_pass(url, ws.policy)
        except RuntimeError as exc:
            out["passes"][str(count)] = {"held_records": held_rows.get(tenant), "error": str(exc)}
            ws.drop_database(label)
            continue
        result.pop("started")
        result.pop("ended")
        out["passes"][str(count)] = {
            "held_records": held_rows.get(tenant, 0),
            "held_rows_kept": _held_kept(url),
            "place_seconds_cli": round(placed, 3),
            "pass": result,
            "hold": hold,
        }
        ws.drop_database(label)
    base = (pass_m or {}).get("seconds")
    for entry in out["passes"].values():
        seconds = (entry.get("pass") or {}).get("seconds")
        entry["vs_no_hold"] = round(seconds / base, 2) if seconds and base else None
    return out
