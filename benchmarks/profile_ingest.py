"""Where one worker's time goes: ``purger consume --until-idle`` under py-spy.

``python -m benchmarks.profile_ingest [N]`` produces N messages (default 200,000) into a
fresh workspace, consumes them once with one worker as ``make bench`` does (records/s and
CPU per record, unprofiled: py-spy pauses the process for each sample) and once more, with
a fresh group, under ``py-spy record`` (installed in the virtualenv; not a project
dependency), and prints the share of samples per function, inclusive and exclusive. Not
part of ``make bench``: a tool for the one who tunes.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from kafka import TopicPartition

from benchmarks.config import BenchConfig, load_config
from benchmarks.ingest import _child_env, end_offsets, run_ours
from benchmarks.produce import produce
from benchmarks.workspace import REPO, Workspace


def _summarise(collapsed: Path, top: int = 40) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    exclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1] for f in stack.split(";")]
        total += n
        threads[frames[0]] += n
        for frame in set(frames):
            inclusive[frame] += n
        exclusive[frames[-1]] += n
    out = [f"{total} samples", "", "threads:"]
    out += [f"{100 * n / total:5.1f} %  {f}" for f, n in threads.most_common(10)]
    out += ["", "inclusive:"]
    out += [f"{100 * n / total:5.1f} %  {f}" for f, n in inclusive.most_common(top)]
    out += ["", "exclusive:"]
    out += [f"{100 * n / total:5.1f} %  {f}" for f, n in exclusive.most_common(top)]
    return "\n".join(out)


def _plain(ws: Workspace, config: BenchConfig, ends: dict[TopicPartition, int]) -> str:
    result = run_ours(ws, config, 1, ends, label="plain")
    ws.drop_database("plain")
    keys = ("records_per_second", "cpu_seconds", "cpu_us_per_record", "seconds", "problem")
    return "unprofiled: " + ", ".join(f"{k} {result[k]}" for k in keys if k in result)


def main() -> int:
    """Produce, consume under py-spy, print the profile."""
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    config = load_config()
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("py-spy is not installed in this virtualenv (pip install py-spy)", file=sys.stderr)
        return 2
    ws = Workspace(config)
    try:
        ws.create_topics()
        topics = {name: c.topic for name, c in ws.policy.categories.items()}
        produce(
            config.kafka_bootstrap,
            topics=topics,
            run_id=ws.run_id,
            total=total,
            processes=config.producers,
            now=datetime.now(UTC),
        )
        ends = end_offsets(config.kafka_bootstrap, sorted(topics.values()))
        print(_plain(ws, config, ends))
        url = ws.create_database("profile")
        env = _child_env(ws, config, url, ws.group("profile"))
        out = ws.tmp / "profile.txt"
        command = [spy, "record", "--format", "raw", "--rate", "200", "--idle", "--threads"]
        command += ["-o", str(out)]
        command += ["--", sys.executable, "-m", "purger.cli", "consume", "--until-idle", "--json"]
        started = datetime.now(UTC)
        subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True)
        seconds = (datetime.now(UTC) - started).total_seconds()
        messages = sum(ends.values())
        rate = messages / seconds
        print(f"{messages} messages, {seconds:.1f} s wall under py-spy ({rate:.0f} records/s)")
        print(_summarise(out))
    finally:
        ws.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
