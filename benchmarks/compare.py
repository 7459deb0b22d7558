"""Ingestion against Kafka Connect: the same records, alternating runs, in one workspace.

Its own workspace (topics, databases and groups named after its own run id): the
records are produced twice with the same generator and seeds, as our contract's
JSON into the policy's topics and in JsonConverter's schema envelope into one
topic per category for Connect, with the same partition count. Then, per round:
ours with 1 worker (write-behind off, then on: what storing a batch while the next
is decoded is worth), Connect with 1 task on the plain and on the partitioned
target, ours with 2 workers (off, then on), Connect with 2 tasks on both targets. Each run
consumes the whole backlog with a fresh group into a fresh database.
"""

from __future__ import annotations

import logging
import statistics
from datetime import UTC, datetime
from typing import Any

from benchmarks import connect
from benchmarks.config import BenchConfig
from benchmarks.ingest import end_offsets, run_ours
from benchmarks.produce import produce
from benchmarks.workspace import Workspace

log = logging.getLogger("benchmarks")

CONNECT_RUNS = ((1, False), (1, True), (2, False), (2, True))
# The same worker storing and decoding in turn, on one thread.
SERIAL = {"PURGER_WRITE_BEHIND": "false"}


def _stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["records_per_second"] for r in runs if r.get("records_per_second")]
    return {
        "runs": len(runs),
        "min": min(rates) if rates else None,
        "median": round(statistics.median(rates), 1) if rates else None,
    }


def run(config: BenchConfig, kafka_version: str) -> dict[str, Any]:
    """The whole comparison; its workspace is removed at the end."""
    home = connect.ConnectHome.find(kafka_version)
    ws = Workspace(config)
    try:
        return _run(ws, config, home)
    finally:
        problems = ws.close()
        if problems:
            log.warning("compare cleanup: %s", "; ".join(problems))


def _run(ws: Workspace, config: BenchConfig, home: connect.ConnectHome) -> dict[str, Any]:
    ws.create_topics()
    ours_topics = {name: c.topic for name, c in ws.policy.categories.items()}
    theirs_topics = {name: f"connect_{ws.run_id}_{name}" for name in ws.policy.categories}
    ws.create_extra_topics(list(theirs_topics.values()))
    now = datetime.now(UTC)
    total = config.compare_records
    log.info("compare: producing %s messages twice (contract JSON, Connect envelope)", total)
    sizes = {}
    for envelope, topics in ((False, ours_topics), (True, theirs_topics)):
        produced = produce(
            config.kafka_bootstrap,
            topics=topics,
            run_id=ws.run_id,
            total=total,
            processes=config.producers,
            now=now,
            envelope=envelope,
        )
        if produced.errors:
            raise RuntimeError(f"{produced.errors} send errors")
        sizes["connect" if envelope else "ours"] = round(produced.bytes / produced.messages, 1)
    ours_ends = end_offsets(config.kafka_bootstrap, sorted(ours_topics.values()))
    theirs_ends = end_offsets(config.kafka_bootstrap, sorted(theirs_topics.values()))
    runs: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(config.compare_rounds):
        for workers in (1, 2):
            log.info("compare: round %s, ours, %s worker(s), write-behind off", round_ + 1, workers)
            label = f"c{round_}w{workers}serial"
            runs.setdefault(f"ours_{workers}_serial", []).append(
                run_ours(ws, config, workers, ours_ends, label=label, settings=SERIAL)
            )
            if workers == 1:
                ws.drop_database(label)
            key = f"ours_{workers}"
            log.info("compare: round %s, ours with %s worker(s)", round_ + 1, workers)
            label = f"c{round_}w{workers}"
            result = run_ours(ws, config, workers, ours_ends, label=label)
            if workers == 1:
                ws.drop_database(label)
            runs.setdefault(key, []).append(result)
            for tasks, partitioned in CONNECT_RUNS:
                if tasks != workers:
                    continue
                key = f"connect_{tasks}_{'partitioned' if partitioned else 'plain'}"
                log.info("compare: round %s, %s", round_ + 1, key)
                runs.setdefault(key, []).append(
                    connect.run_connect(
                        ws,
                        config,
                        home,
                        tasks=tasks,
                        partitioned=partitioned,
                        topics=sorted(theirs_topics.values()),
                        ends=theirs_ends,
                        label=f"c{round_}{key.replace('_', '')}",
                    )
                )
    summary = {key: _stats(values) for key, values in runs.items()}

    def best_connect(tasks: int) -> float | None:
        medians = [
            summary[f"connect_{tasks}_{t}"]["median"]
            for t in ("plain", "partitioned")
            if summary[f"connect_{tasks}_{t}"]["median"]
        ]
        return max(medians) if medians else None

    ratios: dict[str, float | None] = {}
    # Each side at its faster setting: Connect on the faster of its two targets, ours
    # with write-behind on or off (on pays where a core is left for it, off where the
    # workers and PostgreSQL already keep every core busy).
    faster: dict[str, str] = {}
    for workers in (1, 2):
        on, off = summary[f"ours_{workers}"]["median"], summary[f"ours_{workers}_serial"]["median"]
        ratios[f"ours_{workers}_vs_serial"] = round(on / off, 3) if on and off else None
        faster[f"ours_{workers}"] = "off" if (off or 0) > (on or 0) else "on"
        ours = max(on or 0, off or 0)
        best = best_connect(workers)
        ratios[f"ours_{workers}_vs_connect_{workers}"] = (
            round(ours / best, 3) if ours and best else None
        )
    return {
        "records": total,
        "message_bytes": sizes,
        "rounds": config.compare_rounds,
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
        "write_behind_faster": faster,
    }
