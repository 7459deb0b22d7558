"""The result file (JSON) and the Markdown table appended to BENCHMARKS.md."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

HEADER = """\
# Benchmarks

`make bench` measures ingestion and purging on the machine it runs on and appends
one table per run below; `bench-results/<timestamp>.json` holds every figure of
the run. Absolute figures drift from machine to machine, so each is set beside
its ceiling or the naive way measured in the same run, as a ratio. The machine
also runs Kafka and PostgreSQL, so every figure includes their share of the cores.

What is measured:

1. **Ingestion.** N realistic messages (the project's sample generator, four
   topics, several partitions each) are produced first. Then
   `purger consume --until-idle --workers 1` and `--workers 2` each consume all of
   them into a fresh database with a fresh consumer group. Records/s runs from the
   first "partitions assigned" log line (written inside the first poll) to the
   moment the group's committed offsets reach the end of every partition (read
   every 0.1 s through the Kafka admin API): first poll to last offset commit.
   Ceiling (a): kafka-python consumption with the same consumer options plus
   `json.loads` of every message, no database. Ceiling (b): COPY of the rows our
   consumer stored into the same tables of a fresh database, no Kafka. Baseline
   (c): a naive consumer (one INSERT and one commit per record, offsets
   auto-committed) on a subset. Peak RSS is each worker process's VmHWM
   (MB = 10^6 bytes).
2. **Purge.** M expired records over 30 daily partitions plus 1,000,000 not yet
   expired, generated with `generate_series` (call detail records of 20,000
   subscribers, about 450 bytes a row) into the category table's partitions, with
   the project's indexes (primary key, GIN on subject keys, tenant) built in bulk
   before each partition is attached and registered. One
   `Purger.run_pass` removes them; against it, `DELETE ... WHERE expires_at <=
   now()` plus the `VACUUM` it makes necessary on an unpartitioned table with the
   same rows and indexes. The pass is also timed with M/10 expired records over
   the same 30 partitions: cost follows partitions, not rows.
3. **Purge under load.** A writer stores small batches through `Storage.store`
   at a steady rate; the latency of each call before a pass is compared with the
   calls that overlap a pass (over a copy of the M/10 data set).
4. **Hold cost.** The pass at M again, with a legal hold (placed with
   `purger hold place --tenant` before the pass, not timed in the pass) covering
   1,000 and 100,000 of the expired records, spread over all 30 partitions.
5. **Against Kafka Connect** (section `connect`). What a platform team would
   assemble instead: a Kafka Connect standalone worker
   (`org.apache.kafka:connect-runtime` at the broker's version) with Debezium's JDBC
   sink (`io.debezium:debezium-connector-jdbc` plugin archive), both from Maven
   Central into `~/.cache/purger-bench` by `scripts/bench/setup.sh`. JsonConverter
   with schemas, the sink tuned for throughput (`insert.mode=insert`, `batch.size`
   and the consumer's `max.poll.records` 5000, bulk insert through `UNNEST`),
   `tasks.max` 1 and 2, into tables without any index (plain) or range partitioned
   by day. The same records (same generator and seeds; in JsonConverter's schema
   envelope for Connect), alternating runs: per round ours with 1 worker, Connect
   with 1 task on both targets, ours with 2 workers, Connect with 2 tasks on both;
   each run a fresh database and group, timed like ours (first assignment to last
   offset commit; Connect flushes offsets every second). Connect does no contract
   validation, no identifier normalisation, computes no expiry and keeps no dead
   letters; its tables carry no index while ours carry three.
6. **Against pg_partman** (section `partman`). Debian's `postgresql-15-partman`
   (installed by `scripts/bench/setup.sh`) takes over the category table of the
   purge data set plus today's partly expired partition: one `part_config` row with
   the table's control column, daily interval and naming pattern, `retention` 0 days,
   `retention_keep_table=false`. Alternating on fresh file-level copies: one purge
   pass against `run_maintenance_proc()` (whole partitions only), the `DELETE` of the
   expired rows it leaves in today's partition, and the `VACUUM` the pass also runs.
   Both remove what is expired at one instant T, today at 18:00 UTC whatever the hour
   of the run (the pass is given T, the DELETE compares with it), so that three
   quarters of today's partition is expired in every run; the purger's pass drops
   and deletes at once, on two connections.

Sizes of the comparisons: `BENCH_CONNECT_RECORDS` (500,000), `BENCH_COMPARE_ROUNDS` (3),
`BENCH_PARTMAN_EXPIRED` (5,000,000); `BENCH_SECTIONS=connect,partman` runs only them.

Data sets are copied at file level between variants, autovacuum is off on the
benchmark's tables (so it never runs inside a measurement) and a CHECKPOINT
precedes every timed pass. Nothing here is a test: no figure fails a build.

Where a target is not met, the reason (measured, not guessed):

- **One worker against ceiling (a).** Ceiling (a) only fetches and `json.loads`
  (12 to 23 µs a message once kafka-python uses the C CRC-32C of the `crc32c`
  package). Our worker also validates every message against the contract and
  normalises every identifier (libphonenumber for MSISDNs, `ipaddress` for IPv6),
  computes the expiry, encodes the payload for COPY and waits for the database
  commit; a py-spy profile puts decoding and normalisation alone at about half of
  the worker's time, more than the whole ceiling. One Python process cannot reach
  80 % of (a) while doing that work; `--workers N` is how ingestion scales (two
  workers reach the 1.6x target).
- **Pass time at M against M/10.** What the purger does per partition is the
  same at both sizes (detach, the hold check, drop, one audit entry). The
  difference is the COMMIT of each DROP, where PostgreSQL frees the partition's
  files: with `log_min_duration_statement` on, each such COMMIT took 28-36 ms at
  M (about 130 MB of table and indexes per partition) and under 15 ms at M/10. That
  cost is the file system's and any removal pays it (DELETE + VACUUM pays far
  more); it grows with bytes, not rows, and is still a fraction of the pass.
- **Two workers against one.** Borderline on this machine: between 1.57x and 1.91x
  over the runs made while tuning, because the two cores are shared by both
  workers, the Kafka broker and PostgreSQL, so the second worker competes with the
  services for CPU. On a machine where the services run elsewhere, the workers
  share nothing but the consumer group.
"""


def _n(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}"
    return str(value)


def _met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of issue 6: the measured value and whether it is met."""
    ing = result.get("ingest") or {}
    ratios = ing.get("ratios") or {}
    purge = result.get("purge") or {}
    pratios = purge.get("ratios") or {}
    load = result.get("load") or {}
    peaks = [
        p
        for key in ("ours_1_worker", "ours_2_workers")
        for p in (ing.get(key) or {}).get("peak_rss_mb_per_worker", [])
    ]

    def check(value: float | None, ok: bool | None) -> dict[str, Any]:
        return {"value": value, "met": ok if value is not None else None}

    one_vs_raw = ratios.get("ours_1_vs_raw_consume")
    two_vs_one = ratios.get("ours_2_vs_ours_1")
    speedup = pratios.get("delete_vacuum_vs_pass")
    growth = pratios.get("pass_m_vs_pass_m10")
    p99 = (load.get("during") or {}).get("p99_ms")
    peak = max(peaks) if peaks else None
    comp = (result.get("connect") or {}).get("ratios") or {}
    pm = (result.get("partman") or {}).get("ratios") or {}
    c1, c2 = comp.get("ours_1_vs_connect_1"), comp.get("ours_2_vs_connect_2")
    vs_pm = pm.get("purger_vs_partman_and_delete")
    return {
        "ingest_1_worker_vs_connect_1_task": check(c1, c1 is not None and c1 >= 1.0),
        "ingest_2_workers_vs_connect_2_tasks": check(c2, c2 is not None and c2 >= 1.0),
        "purge_pass_vs_partman_and_delete": check(vs_pm, vs_pm is not None and vs_pm <= 1.0),
        "ingest_1_worker_vs_ceiling_a": check(
            one_vs_raw, one_vs_raw is not None and one_vs_raw >= 0.8
        ),
        "ingest_2_workers_vs_1": check(two_vs_one, two_vs_one is not None and two_vs_one >= 1.6),
        "purge_vs_delete_vacuum": check(speedup, speedup is not None and speedup >= 10),
        "pass_m_vs_m10": check(growth, growth is not None and growth <= 1.5),
        "p99_insert_during_pass_ms": check(p99, p99 is not None and p99 < 250),
        "peak_rss_per_worker_mb": check(peak, peak is not None and peak < 250),
    }


def write_json(result: dict[str, Any], directory: Path, stamp: str) -> Path:
    """``<directory>/<stamp>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _ingest_rows(ing: dict[str, Any], t: dict[str, dict[str, Any]]) -> list[list[str]]:
    if not ing:
        return [["Ingestion", "not run", "", "", ""]]
    if "error" in ing:
        return [["Ingestion", f"failed: {ing['error']}", "", "", ""]]
    r = ing["ratios"]
    one, two = ing["ours_1_worker"], ing["ours_2_workers"]
    raw, copy, naive = ing["ceiling_raw_consume"], ing["ceiling_copy"], ing["baseline_naive"]
    prod = ing["produced"]
    rows = [
        [
            f"Backlog produced ({prod['topics']} topics x {prod['partitions_per_topic']} "
            f"partitions, {_n(prod['mean_message_bytes'])} B/message)",
            f"{_n(prod['messages'])} messages, {_n(prod['messages_per_second'])}/s",
            "",
            "",
            "",
        ],
        [
            "Ingestion, ours, 1 worker",
            f"{_n(one.get('records_per_second'))} records/s",
            f"{_n(r['ours_1_vs_raw_consume'], 2)} x ceiling (a)",
            "≥ 0.80 x (a)",
            _met(t["ingest_1_worker_vs_ceiling_a"]["met"]),
        ],
        [
            "Ingestion, ours, 2 workers",
            f"{_n(two.get('records_per_second'))} records/s",
            f"{_n(r['ours_2_vs_ours_1'], 2)} x 1 worker",
            "≥ 1.6 x 1 worker",
            _met(t["ingest_2_workers_vs_1"]["met"]),
        ],
        [
            "Ceiling (a): kafka-python + json.loads, no database",
            f"{_n(raw['records_per_second'])} records/s",
            f"ours: {_n(r['ours_1_vs_raw_consume'], 2)} (1 w), "
            f"{_n(r['ours_2_vs_raw_consume'], 2)} (2 w)",
            "",
            "",
        ],
        [
            "Ceiling (b): COPY of the same rows, no Kafka",
            f"{_n(copy['records_per_second'])} records/s",
            f"ours: {_n(r['ours_1_vs_copy'], 2)} (1 w), {_n(r['ours_2_vs_copy'], 2)} (2 w)",
            "",
            "",
        ],
        [
            f"Baseline (c): naive, INSERT + commit per record ({_n(naive['records'])} records)",
            f"{_n(naive['records_per_second'])} records/s",
            f"ours: {_n(r['ours_1_vs_naive'], 1)}x (1 w), {_n(r['ours_2_vs_naive'], 1)}x (2 w)",
            "",
            "",
        ],
        [
            "Peak RSS per worker",
            f"{', '.join(_n(p) for p in one['peak_rss_mb_per_worker'])} MB (1 w); "
            f"{', '.join(_n(p) for p in two['peak_rss_mb_per_worker'])} MB (2 w)",
            "",
            "< 250 MB",
            _met(t["peak_rss_per_worker_mb"]["met"]),
        ],
    ]
    for run in (one, two):
        if run.get("problem"):
            rows.append([f"Problem ({run['workers']} w)", run["problem"], "", "", ""])
    return rows


def _purge_rows(purge: dict[str, Any], t: dict[str, dict[str, Any]]) -> list[list[str]]:
    if not purge:
        return [["Purge", "not run", "", "", ""]]
    if "error" in purge:
        return [["Purge", f"failed: {purge['error']}", "", "", ""]]
    m, m10, dv = purge["pass_m"], purge["pass_m10"], purge["delete_vacuum_m"]
    r = purge["ratios"]
    target_note = "" if purge["expired"] == 5_000_000 else " (target stated for M = 5,000,000)"
    return [
        [
            f"Purge pass, M = {_n(purge['expired'])} expired + {_n(purge['live'])} live",
            f"{_n(m['seconds'], 2)} s, {m['partitions_dropped']} partitions, "
            f"{_n(m['seconds_per_partition'], 3)} s/partition ({m['outcome']})",
            "",
            "",
            "",
        ],
        [
            "DELETE + VACUUM, unpartitioned twin, same M",
            f"{_n(dv['seconds'], 1)} s (DELETE {_n(dv['delete_seconds'], 1)} s, "
            f"VACUUM {_n(dv['vacuum_seconds'], 1)} s)",
            f"pass is {_n(r['delete_vacuum_vs_pass'], 1)}x faster",
            "≥ 10x" + target_note,
            _met(t["purge_vs_delete_vacuum"]["met"]),
        ],
        [
            f"Purge pass, M/10 = {_n(purge['expired_m10'])} expired, same partitions",
            f"{_n(m10['seconds'], 2)} s, {_n(m10['seconds_per_partition'], 3)} s/partition",
            f"time at M = {_n(r['pass_m_vs_pass_m10'], 2)} x time at M/10",
            "≤ 1.5x",
            _met(t["pass_m_vs_m10"]["met"]),
        ],
    ]


def _load_rows(load: dict[str, Any], t: dict[str, dict[str, Any]]) -> list[list[str]]:
    if not load:
        return [["Purge under load", "not run", "", "", ""]]
    if "error" in load:
        return [["Purge under load", f"failed: {load['error']}", "", "", ""]]
    b, d = load["before"], load["during"]

    def fmt(s: dict[str, Any]) -> str:
        return (
            f"p50 {_n(s['p50_ms'], 1)} / p99 {_n(s['p99_ms'], 1)} / max {_n(s['max_ms'], 1)} ms "
            f"({s['samples']} calls)"
        )

    head = f"Insert latency, {load['rate_per_second']}/s in batches of {load['batch']}"
    return [
        [f"{head}, before the pass", fmt(b), "", "", ""],
        [
            f"{head}, during the pass ({_n(load['pass']['seconds'], 2)} s, "
            f"{load['pass']['partitions_dropped']} partitions)",
            fmt(d),
            f"p99 {_n(load['p99_during_vs_before'], 1)}x before",
            "p99 < 250 ms",
            _met(t["p99_insert_during_pass_ms"]["met"]),
        ],
    ]


def _hold_rows(holds: dict[str, Any]) -> list[list[str]]:
    if not holds:
        return [["Hold cost", "not run", "", "", ""]]
    if holds.get("status") != "run":
        return [["Hold cost", str(holds.get("status") or holds.get("error")), "", "", ""]]
    rows = []
    for count, entry in holds["passes"].items():
        label = f"Purge pass at M, {_n(int(count))} held records"
        if "error" in entry:
            rows.append([label, f"failed: {entry['error']}", "", "", ""])
            continue
        p = entry.get("pass") or {}
        kept = entry.get("held_rows_kept")
        figure = f"{_n(p.get('seconds'), 2)} s ({p.get('outcome')})"
        if int(count) and kept is not None:
            figure += f", {_n(kept)} rows kept in held storage"
        if entry.get("place_seconds_cli") is not None:
            figure += f"; placing the hold took {_n(entry['place_seconds_cli'], 2)} s (CLI)"
        ratio = f"{_n(entry.get('vs_no_hold'), 2)} x no hold" if int(count) else ""
        rows.append([label, figure, ratio, "", ""])
    return rows


def _rate(stats: dict[str, Any]) -> str:
    return f"{_n(stats.get('min'))} / {_n(stats.get('median'))} records/s"


def _connect_rows(comp: dict[str, Any], t: dict[str, dict[str, Any]]) -> list[list[str]]:
    if not comp:
        return []
    if "error" in comp:
        return [["Against Kafka Connect", f"failed: {comp['error']}", "", "", ""]]
    summary, r, sizes = comp["summary"], comp["ratios"], comp["message_bytes"]
    faster = comp.get("write_behind_faster") or {}
    runs = comp["runs"]

    def peak(key: str, field: str) -> str:
        values = [v for run in runs[key] for v in _list(run.get(field))]
        return f"{_n(max(values))} MB" if values else "-"

    def cpu(key: str, own: str) -> str:
        # Medians over the runs of CPU µs a record: the consumer itself, then the services.
        def median(values: list[float]) -> str:
            return _n(statistics.median(values)) if values else "-"

        mine = [float(r["cpu_us_per_record"]) for r in runs[key] if r.get("cpu_us_per_record")]
        services = [r.get("service_cpu_us_per_record") or {} for r in runs[key]]
        pg = [float(s["postgresql"]) for s in services if "postgresql" in s]
        broker = [float(s["broker"]) for s in services if "broker" in s]
        return (
            f"CPU a record: {own} {median(mine)}, PostgreSQL {median(pg)}, "
            f"broker {median(broker)} µs"
        )

    def stages(key: str) -> str:
        # Medians over the runs of the workers' wall time a record, by stage.
        per_run = [r.get("stage_us_per_record") or {} for r in runs[key]]
        names = [s for s in ("poll", "decode", "store", "wait", "commit") if per_run[0].get(s)]
        if not names:
            return ""
        parts = [f"{s} {_n(statistics.median(float(r.get(s, 0)) for r in per_run))}" for s in names]
        return "; wall a record, by stage: " + ", ".join(parts) + " µs"

    head = (
        f"{_n(comp['records'])} records, {comp['rounds']} alternating rounds, "
        f"ours {_n(sizes['ours'])} B/message, Connect {_n(sizes['connect'])} B/message"
    )
    rows = [[f"Against Kafka Connect + Debezium JDBC sink ({head})", "min / median", "", "", ""]]
    for workers in (1, 2):
        rows.append(
            [
                f"Ours, {workers} worker{'s' if workers > 1 else ''} (peak RSS per worker "
                f"{peak(f'ours_{workers}', 'peak_rss_mb_per_worker')}; "
                f"{cpu(f'ours_{workers}', 'workers')}{stages(f'ours_{workers}')})",
                _rate(summary[f"ours_{workers}"]),
                f"{_n(r[f'ours_{workers}_vs_connect_{workers}'], 2)} x Connect, "
                f"{workers} task{'s' if workers > 1 else ''} (faster target; ours with "
                f"write-behind {faster.get(f'ours_{workers}', 'on')}, the faster)",
                "≥ 1.0 x",
                _met(
                    t[
                        f"ingest_{workers}_worker{'s' if workers > 1 else ''}_vs_connect_"
                        f"{workers}_task{'s' if workers > 1 else ''}"
                    ]["met"]
                ),
            ]
        )
        serial = f"ours_{workers}_serial"
        if summary.get(serial):
            rows.append(
                [
                    f"Ours, {workers} worker{'s' if workers > 1 else ''}, write-behind off: "
                    f"storing and decoding in turn ({cpu(serial, 'workers')}{stages(serial)})",
                    _rate(summary[serial]),
                    f"write-behind on: {_n(r.get(f'ours_{workers}_vs_serial'), 2)} x this",
                    "",
                    "",
                ]
            )
        for target in ("plain", "partitioned"):
            key = f"connect_{workers}_{target}"
            rows.append(
                [
                    f"Connect, tasks.max={workers}, {target} target "
                    f"(peak RSS {peak(key, 'peak_rss_mb')}; "
                    f"{cpu(key, 'JVM, start-up included,')})",
                    _rate(summary[key]),
                    "",
                    "",
                    "",
                ]
            )
    for key, values in runs.items():
        for run in values:
            if run.get("problem"):
                rows.append([f"Problem ({key})", run["problem"], "", "", ""])
    return rows


def _list(value: Any) -> list[float]:
    if value is None:
        return []
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def _partman_rows(pm: dict[str, Any], t: dict[str, dict[str, Any]]) -> list[list[str]]:
    if not pm:
        return []
    if "error" in pm:
        return [["Against pg_partman", f"failed: {pm['error']}", "", "", ""]]

    def secs(stats: dict[str, Any]) -> str:
        return f"{_n(stats['min'], 3)} / {_n(stats['median'], 3)} s"

    left = max((r["expired_left_by_partman"] for r in pm["partman"]), default=0)
    ours_left = max((r["expired_left"] for r in pm["purger"]), default=0)
    r = pm["ratios"]
    return [
        [
            f"Against pg_partman {pm['pg_partman']} ({_n(pm['expired_whole'])} expired in "
            f"{pm['partitions']} partitions, today's {_n(pm['today_rows'])} rows partly "
            f"expired, {_n(pm['live'])} live)",
            "min / median",
            "",
            "",
            "",
        ],
        [
            "Purger pass (holds check, audit chain, detach + drop, boundary DELETE + VACUUM)",
            f"{secs(pm['purger_seconds'])}, {_n(ours_left)} expired rows left",
            f"{_n(r['purger_vs_partman_and_delete'], 2)} x pg_partman + DELETE",
            "≤ 1.0 x",
            _met(t["purge_pass_vs_partman_and_delete"]["met"]),
        ],
        *_phase_rows(pm.get("purger_phases") or {}),
        [
            "pg_partman run_maintenance_proc (drops only)",
            f"{secs(pm['partman_drop_seconds'])}, {_n(left)} expired rows left",
            "",
            "",
            "",
        ],
        ["pg_partman + DELETE of the rest", secs(pm["partman_and_delete_seconds"]), "", "", ""],
        [
            "pg_partman + DELETE + VACUUM of today's partition",
            secs(pm["partman_delete_vacuum_seconds"]),
            f"purger: {_n(r['purger_vs_partman_delete_vacuum'], 2)} x this",
            "",
            "",
        ],
    ]


def _phase_rows(phases: dict[str, Any]) -> list[list[str]]:
    # Medians of the pass's parts: the drops' chain is its critical path, the partition
    # containing T runs beside it on a second connection.
    if not phases:
        return []

    def med(name: str) -> str:
        return f"{_n(phases[name]['median'], 3)} s"

    return [
        [
            "Of the pass, on its connection: DETACH CONCURRENTLY of each partition / "
            "the drop transactions (holds check, DROP, registry, audit entry, COMMIT)",
            f"{med('detach_seconds')} / {med('drop_transaction_seconds')}",
            "",
            "",
            "",
        ],
        [
            "Of the pass, beside them on a second connection: today's row deletes / its VACUUM",
            f"{med('boundary_delete_seconds')} / {med('boundary_vacuum_seconds')}",
            "",
            "",
            "",
        ],
    ]


def markdown(result: dict[str, Any]) -> str:
    """The run's section of BENCHMARKS.md."""
    machine = result["machine"]
    sizes = result["config"]
    t = result["targets"]
    lines = [
        f"## {machine['date']} · commit `{machine['commit']}`",
        "",
        "| Date | Machine | Commit | Services | Sizes | Run time |",
        "|---|---|---|---|---|---|",
        f"| {machine['date']} | {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['ram_gib']} GiB RAM | `{machine['commit']}` | "
        f"PostgreSQL {result.get('postgresql', '?')}, Kafka {result.get('kafka', '?')} | "
        f"N = {_n(sizes['records'])}, naive {_n(sizes['naive_records'])}, "
        f"M = {_n(sizes['purge_expired'])} + {_n(sizes['purge_live'])} live, "
        f"{sizes['purge_partitions']} partitions | {_n(result['seconds'], 0)} s |",
        "",
        "| Measurement | Figure | Ratio | Target | Target met? |",
        "|---|---|---|---|---|",
    ]
    rows = (
        _ingest_rows(result.get("ingest") or {}, t)
        + _purge_rows(result.get("purge") or {}, t)
        + _load_rows(result.get("load") or {}, t)
        + _hold_rows(result.get("holds") or {})
        + _connect_rows(result.get("connect") or {}, t)
        + _partman_rows(result.get("partman") or {}, t)
    )
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    load = machine.get("load_average_at_start")
    if load:
        lines += [
            "",
            f"Load average (1/5/15 min) at the start: {', '.join(map(str, load))}; "
            f"at the end: {', '.join(map(str, machine.get('load_average_at_end') or []))}.",
        ]
    for note in result.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def append_markdown(result: dict[str, Any], path: Path) -> None:
    """Append the run's table to ``path`` (writing the header first if the file is new)."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(text + "\n" + markdown(result), encoding="utf-8")
