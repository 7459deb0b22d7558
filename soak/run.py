"""Entry point of ``make soak``: traffic and chaos, drain, final pass, the checker's table.

Knobs: see ``python -m soak --help`` (SOAK_SECONDS, SOAK_SEED, SOAK_WORKERS, SOAK_RATE,
SOAK_DRAIN_SECONDS, the chaos minimums SOAK_BROKER_RESTARTS, SOAK_POSTGRES_RESTARTS,
SOAK_WORKER_KILLS, SOAK_PAUSES, SOAK_HOLD_CHANGES, SOAK_PURGE_PASSES, and
SOAK_TOPIC_PARTITIONS, SOAK_PARTITION_GRANULARITY, SOAK_KEEP).

Exit status: 0 when every verdict of the table holds and every chaos minimum was reached;
1 otherwise; 2 when the run could not start; 130 when interrupted.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import psycopg
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from soak import chaos, selftest
from soak.chaos import ChaosLog, Event
from soak.check import Checker, Findings, Row
from soak.config import SoakConfig, SoakConfigError, SoakError, load_config
from soak.procs import REPO, SERVICES, Children, Task, WorkerPool, purger_command
from soak.traffic import Generator, HoldPool, Ledger, Sender, written_msisdn
from soak.workspace import Workspace

log = logging.getLogger("soak")

TASK_TIMEOUT = 180.0  # a purge pass or hold command that takes longer is killed
PROGRESS_EVERY = 30.0


def _say(text: str) -> None:
    print(text, flush=True)


class LagProbe:
    """The consumer group's lag over the four category topics, from committed offsets."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.admin: Any = None
        self.consumer: Any = None

    def lag(self) -> int | None:
        """Messages not yet committed by the group (None: Kafka did not answer)."""
        found = self.offsets()
        if found is None:
            return None
        ends, committed = found
        return sum(max(end - committed.get(tp, 0), 0) for tp, end in ends.items())

    def offsets(self) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]] | None:
        """End offsets and the group's committed offsets (0 where none) of every partition."""
        try:
            if self.admin is None:
                self.admin = self.ws.kafka_admin()
            if self.consumer is None:
                self.consumer = KafkaConsumer(
                    bootstrap_servers=self.ws.config.kafka_bootstrap.split(","),
                    enable_auto_commit=False,
                    client_id=f"soak-{self.ws.run_id}-lag",
                )
            parts = [
                TopicPartition(topic, p)
                for topic in self.ws.source_topics()
                for p in self.consumer.partitions_for_topic(topic) or []
            ]
            ends = self.consumer.end_offsets(parts)
            committed = self.admin.list_group_offsets(self.ws.group).get(self.ws.group, {})
        except (KafkaError, OSError, ValueError):
            self.close()
            return None
        done = {}
        for tp in parts:
            meta = committed.get(tp)
            done[tp] = meta.offset if meta is not None and meta.offset >= 0 else 0
        return {tp: int(ends[tp]) for tp in parts}, done

    def close(self) -> None:
        """Close the clients (they are made again on the next call)."""
        for client in (self.admin, self.consumer):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self.admin = self.consumer = None


class Soak:
    """One run: set up, traffic and chaos, drain, final pass, check."""

    def __init__(
        self, config: SoakConfig, ws: Workspace, children: Children, rng: random.Random
    ) -> None:
        self.config = config
        self.ws = ws
        self.children = children
        self.rng = rng
        self.ledger = Ledger()
        self.pool_numbers = HoldPool(rng)
        self.chaos = ChaosLog()
        self.tasks: list[Task] = []
        self.hold_times: dict[int, float] = {}
        self.active_churn: dict[str, int] = {}  # number -> hold id
        self.events: list[Event] = []
        self.workers: WorkerPool | None = None
        self.sender: Sender | None = None
        self.t0 = 0.0
        self.hold_serial = 0
        self.services_suspect = False

    # -- setup -------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Both services answer, or a clear message."""
        try:
            admin = self.ws.kafka_admin()
            admin.list_topics()
            admin.close()
        except KafkaError as exc:
            raise SoakError(
                f"Kafka at {self.config.kafka_bootstrap} does not answer "
                f"({exc.__class__.__name__}); start it with scripts/services.sh up"
            ) from None
        try:
            with psycopg.connect(self.config.database_url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise SoakError(
                f"PostgreSQL does not answer ({exc.__class__.__name__}); "
                "start it with scripts/services.sh up"
            ) from None

    def _cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            purger_command(*args),
            env=self.ws.child_env("cli"),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def place_permanent_holds(self) -> None:
        """Holds on part of the number pool before the first message; never released."""
        for i, digits in enumerate(self.pool_numbers.permanent):
            done = self._cli(*self._place_args(digits, f"permanent-{i}"))
            if done.returncode != 0:
                raise SoakError(f"placing a hold failed: {done.stderr.strip()[-500:]}")
            hold_id = int(json.loads(done.stdout)["id"])
            self.hold_times[hold_id] = time.time()

    def _place_args(self, digits: str, label: str) -> list[str]:
        return [
            "hold",
            "place",
            "--case-ref",
            f"SOAK-{self.ws.run_id}-{label}",
            "--reason",
            "soak run: records of this number must survive the chaos",
            "--by",
            "soak",
            "--msisdn",
            written_msisdn(digits, self.rng),
            "--json",
        ]

    def _producer(self) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=self.config.kafka_bootstrap.split(","),
            client_id=f"soak-{self.ws.run_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=10,
            request_timeout_ms=10000,
            delivery_timeout_ms=120000,
            max_block_ms=5000,
        )

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> bool:
        """Everything; True when the table's verdicts and the chaos minimums all hold."""
        config = self.config
        self.preflight()
        _say(f"1. setup: database {self.ws.db_name}, topics soak.{self.ws.run_id}.*, holds")
        self.ws.create_database()
        self.ws.create_topics()
        self.place_permanent_holds()
        self.events = chaos.plan(config, self.rng)
        self.workers = WorkerPool(self.children, self.ws.child_env("worker"), config.workers)
        generator = Generator(self.ws.run_id, self.ws.policy, self.pool_numbers, self.rng)
        self.sender = Sender(self._producer, generator, self.ledger, self.ws.policy, config.rate)
        _say(
            f"2. traffic ({config.rate}/s) and chaos for {config.seconds:.0f} s: "
            f"{len(self.events)} events planned, {config.workers} workers"
        )
        self.t0 = time.monotonic()
        self.workers.tick(self.t0)
        self.sender.start()
        self._chaos_phase()
        self.sender.stop.set()
        left = sorted(e.action for e in self.events)
        if left:
            log.warning("chaos events not done when the traffic stopped: %s", left)
        _say(f"3. traffic stopped; draining (at most {config.drain_seconds:.0f} s)")
        drained, drain_seconds = self._drain()
        drain_end = datetime.now(UTC)
        self.workers.stop_all()
        committed = self._committed()
        _say("4. final purge pass")
        final_instant, final_text = self._final_pass()
        if config.self_test:
            _say("   self-test: planting a lost, a held-destroyed, a duplicated, an expired record")
            held_keys = {self.pool_numbers.keys[d] for d in self.pool_numbers.permanent}
            selftest.plant(self.ws, self.ledger, held_keys, self.rng)
        _say("5. checking Kafka and the database")
        findings = Checker(
            self.ws,
            self.ledger,
            hold_times=self.hold_times,
            final_instant=final_instant or drain_end,
            drain_end=drain_end,
            committed=committed,
        ).run()
        crashes = self.workers.crashes.total()
        findings.rows["crashes"] = Row(
            "worker crashes (informational)", text=f"{crashes} (see below)" if crashes else "0"
        )
        self.chaos.pauses = self.workers.pauses
        shortfalls = self.chaos.shortfalls(config)
        self._print(findings, drained, drain_seconds, final_text, shortfalls)
        if config.self_test:
            problems = selftest.verdict(
                {key: row.total for key, row in findings.rows.items()},
                {key for key, row in findings.rows.items() if row.must_be_zero},
            )
            if not findings.rows["audit"].ok:
                problems.append("audit verify failed")
            _say(
                "SELF-TEST PASSED: the checker found exactly the planted faults"
                if not problems
                else "SELF-TEST FAILED: " + "; ".join(problems)
            )
            return not problems and drained and final_instant is not None
        return findings.ok and drained and final_instant is not None and not shortfalls

    def _chaos_phase(self) -> None:
        assert self.workers is not None and self.sender is not None
        end = self.t0 + self.config.seconds
        next_progress = self.t0 + PROGRESS_EVERY
        while (now := time.monotonic()) < end:
            if self.sender.error is not None:
                raise SoakError(f"the sender failed: {self.sender.error!r}")
            self.workers.tick(now)
            self._poll_tasks(now)
            while self.events and self.events[0].at <= now - self.t0:
                event = heapq.heappop(self.events)
                if not self._dispatch(event.action, now):
                    heapq.heappush(self.events, Event(now - self.t0 + 1.0, event.action))
                    break
            if now >= next_progress:
                next_progress += PROGRESS_EVERY
                self._progress(now)
            time.sleep(0.1)  # external state (processes, the clock): polling is the wait

    def _progress(self, now: float) -> None:
        assert self.workers is not None
        sent = self.ledger.snapshot()
        acked = sum(1 for s in sent if s.acks)
        c = self.chaos
        _say(
            f"   t={now - self.t0:4.0f}s sent {len(sent)} acked {acked}; "
            f"workers {len(self.workers.alive())}/{self.config.workers} "
            f"(SIGKILL {self.workers.kills}, crashed {self.workers.crashes.total()}); "
            f"restarts kafka {c.broker_restarts} postgres {c.postgres_restarts}; "
            f"passes {c.purge_passes}; holds +{c.holds_placed}/-{c.holds_released}"
        )

    # -- chaos events --------------------------------------------------------------------------
    def _running(self, *kinds: str) -> list[Task]:
        return [t for t in self.tasks if t.kind in kinds]

    def _start_task(
        self, kind: str, args: list[str], now: float, *, protect: bool = False, **extra: Any
    ) -> Task:
        env = dict(os.environ) if protect else self.ws.child_env(kind)
        proc, path = self.children.start(args, env=env, name=kind, protect=protect)
        task = Task(kind, proc, path, now, **extra)
        self.tasks.append(task)
        return task

    def _dispatch(self, action: str, now: float) -> bool:
        """Do one chaos action; False when it cannot happen now (retried shortly)."""
        assert self.workers is not None
        rng = self.rng
        if action in (chaos.RESTART_KAFKA, chaos.RESTART_POSTGRES):
            if self._running(chaos.RESTART_KAFKA, chaos.RESTART_POSTGRES):
                return False
            service = "kafka" if action == chaos.RESTART_KAFKA else "postgres"
            log.info("restarting %s", service)
            self._start_task(action, [str(SERVICES), "restart", service], now, protect=True)
            return True
        if action == chaos.KILL:
            if not self.workers.kill_one(rng):
                return False
            self.chaos.worker_kills += 1
            return True
        if action == chaos.PAUSE:
            # Mostly short; some longer than the group's session timeout (45 s), so that the
            # worker comes back as a zombie whose partitions went to another member.
            seconds = rng.uniform(50.0, 60.0) if rng.random() < 0.3 else rng.uniform(2.0, 12.0)
            return self.workers.pause_one(rng, seconds, now)
        if action in (chaos.PURGE, chaos.PURGE_KILL):
            if len(self._running(chaos.PURGE, chaos.PURGE_KILL)) >= 2:
                return False
            kill_at = now + rng.uniform(0.3, 2.5) if action == chaos.PURGE_KILL else None
            self._start_task(action, purger_command("purge", "--json"), now, kill_at=kill_at)
            return True
        if action == chaos.HOLD:
            if self._running("hold_place", "hold_release"):
                return False
            free = [d for d in self.pool_numbers.churn if d not in self.active_churn]
            # Releases as well as placements: a second churn hold is never placed while one
            # is active, unless the coin says so.
            if self.active_churn and (not free or len(self.active_churn) > 1 or rng.random() < 0.6):
                digits = rng.choice(sorted(self.active_churn))
                hold_id = self.active_churn[digits]
                args = purger_command(
                    "hold", "release", str(hold_id), "--by", "soak", "--reason", "soak churn"
                )
                self._start_task("hold_release", args, now, hold_id=hold_id, digits=digits)
            else:
                digits = rng.choice(free)
                self.hold_serial += 1
                args = purger_command(*self._place_args(digits, f"churn-{self.hold_serial}"))
                self._start_task("hold_place", args, now, digits=digits)
            return True
        raise AssertionError(action)

    def _poll_tasks(self, now: float) -> None:
        for task in list(self.tasks):
            code = task.proc.poll()
            if code is None:
                if task.kill_at is not None and now >= task.kill_at:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(task.proc.pid, signal.SIGKILL)
                    task.kill_at = -1.0  # marks: killed by us
                elif task.kind not in (chaos.RESTART_KAFKA, chaos.RESTART_POSTGRES) and (
                    now - task.started > TASK_TIMEOUT
                ):
                    log.warning("%s took over %.0f s: SIGKILL", task.kind, TASK_TIMEOUT)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(task.proc.pid, signal.SIGKILL)
                continue
            self.tasks.remove(task)
            self._finished(task, code, now)

    def _finished(self, task: Task, code: int, now: float) -> None:
        c = self.chaos
        if task.kind in (chaos.RESTART_KAFKA, chaos.RESTART_POSTGRES):
            if code == 0:
                if task.kind == chaos.RESTART_KAFKA:
                    c.broker_restarts += 1
                else:
                    c.postgres_restarts += 1
                log.info("%s done in %.0f s", task.kind, now - task.started)
            else:
                c.restart_failures += 1
                self.services_suspect = True
                log.error("%s failed (exit %s); log %s", task.kind, code, task.log_path)
        elif task.kind in (chaos.PURGE, chaos.PURGE_KILL):
            if task.kill_at == -1.0 and code < 0:
                c.purge_killed += 1
                return
            c.purge_exits[code] += 1
            if code == 0:
                with contextlib.suppress(ValueError, KeyError):
                    c.purge_rows += int(json.loads(task.output())["rows_purged"])
        elif task.kind == "hold_place":
            if code == 0:
                hold_id = int(json.loads(task.output())["id"])
                self.hold_times[hold_id] = time.time()
                assert task.digits is not None
                self.active_churn[task.digits] = hold_id
                c.holds_placed += 1
            else:
                c.hold_failures += 1
                self._retry_hold(now)
        elif task.kind == "hold_release":
            if code == 0:
                assert task.digits is not None
                self.active_churn.pop(task.digits, None)
                c.holds_released += 1
            else:
                c.hold_failures += 1
                self._retry_hold(now)

    def _retry_hold(self, now: float) -> None:
        heapq.heappush(self.events, Event(now - self.t0 + 2.0, chaos.HOLD))

    # -- the end ------------------------------------------------------------------------------
    def _committed(self) -> dict[tuple[str, int], int]:
        """The group's committed offsets now, per (topic, partition); empty when unknown."""
        probe = LagProbe(self.ws)
        try:
            for _attempt in range(30):
                found = probe.offsets()
                if found is not None:
                    return {(tp.topic, tp.partition): n for tp, n in found[1].items()}
                time.sleep(1)  # Kafka did not answer: ask again shortly
        finally:
            probe.close()
        return {}

    def _drain(self) -> tuple[bool, float]:
        """Tick until the sender, the tasks and the group are done (lag 0) or time is up."""
        assert self.workers is not None and self.sender is not None
        start = time.monotonic()
        deadline = start + self.config.drain_seconds
        probe = LagProbe(self.ws)
        next_probe = start
        self.workers.resume_all()
        try:
            while (now := time.monotonic()) < deadline:
                self.workers.tick(now)
                self._poll_tasks(now)
                if self.sender.is_alive() or self.tasks:
                    time.sleep(0.1)  # waiting on threads and processes: polling
                    continue
                if self.services_suspect:
                    # A restart failed: make sure both services run before judging anything.
                    log.warning("a service restart failed: scripts/services.sh up")
                    subprocess.run([str(SERVICES), "up"], cwd=REPO, check=False, timeout=600)
                    self.services_suspect = False
                if now >= next_probe:
                    next_probe = now + 1.0
                    lag = probe.lag()
                    if lag == 0:
                        return True, now - start
                time.sleep(0.1)  # the group's progress is external state: polling
        finally:
            probe.close()
        log.error("the consumer group did not catch up within %.0f s", self.config.drain_seconds)
        return False, time.monotonic() - start

    def _final_pass(self) -> tuple[datetime | None, str]:
        """A last pass after everything is in; its instant is the checker's T."""
        text = ""
        for _attempt in range(10):
            done = self._cli("purge", "--json", timeout=600)
            try:
                report = json.loads(done.stdout)
            except ValueError:
                report = {}
            text = f"exit {done.returncode}, {report.get('outcome')}"
            if done.returncode in (0, 3) and report.get("instant"):
                instant = datetime.fromisoformat(report["instant"])
                return instant, (
                    f"{report.get('outcome')} at {instant:%H:%M:%S.%f}, "
                    f"{report.get('rows_purged', 0)} rows"
                )
            log.warning("final pass: %s %s", text, done.stderr.strip()[-300:])
            time.sleep(2)  # a contended or failed pass: the next attempt comes after a pause
        return None, f"FAILED ({text})"

    # -- the table ------------------------------------------------------------------------------
    def _print(
        self,
        findings: Findings,
        drained: bool,
        drain_seconds: float,
        final_text: str,
        shortfalls: list[str],
    ) -> None:
        assert self.workers is not None and self.sender is not None
        config = self.config
        cats = list(self.ws.policy.categories)
        widths = [max(len(c), 6) for c in cats]
        label_width = max(len(r.label) for r in findings.rows.values()) + 2
        _say("")
        _say(
            f"soak {self.ws.run_id}: {config.seconds:.0f} s of traffic at {config.rate}/s, "
            f"seed {config.seed}, {config.workers} workers, "
            f"partitions of {config.partition_granularity}"
        )
        _say(f"chaos: {self.chaos.summary(config)}")
        _say(
            f"drain: {'lag 0 after' if drained else 'NOT caught up after'} {drain_seconds:.0f} s; "
            f"final pass: {final_text}"
        )
        _say("")
        head = " ".join(f"{c:>{w}}" for c, w in zip(cats, widths, strict=True))
        _say(f"{'':<{label_width}}{head} {'total':>7}  verdict")
        for row in findings.rows.values():
            verdict = ("ok" if row.ok else "FAIL") if (row.must_be_zero or row.checked) else ""
            if row.text is not None:
                width = sum(widths) + len(cats) + 7
                _say(f"{row.label:<{label_width}}{row.text:>{width}}  {verdict}")
                continue
            cells = " ".join(
                f"{row.counts.get(c, 0):>{w}}" for c, w in zip(cats, widths, strict=True)
            )
            _say(f"{row.label:<{label_width}}{cells} {row.total:>7}  {verdict}")
        _say("")
        crashes = self.workers.crashes
        _say(
            f"worker crashes (informational, exits not caused by the run): {crashes.total()}; "
            f"workers started {self.workers.started}; sends refused while the broker was away "
            f"{self.sender.send_errors}"
        )
        for reason, n in crashes.most_common(8):
            _say(f"   {n:>4} x {reason}")
        if findings.dlq_reasons:
            _say("dead-letter reasons of the bad messages (informational):")
            for reason, n in sorted(findings.dlq_reasons.items()):
                _say(f"   {n:>5}  {reason}")
        for key, examples in findings.examples.items():
            label = findings.rows[key].label.strip() if key in findings.rows else key
            _say(f"examples, {label}:")
            for example in examples:
                _say(f"   {example}")
        verdicts = [r.label.strip() for r in findings.rows.values() if not r.ok]
        if not drained:
            verdicts.append("drain timed out")
        if shortfalls:
            verdicts.append("chaos minimums not reached: " + ", ".join(shortfalls))
        if final_text.startswith("FAILED"):
            verdicts.append("final pass failed")
        _say("")
        if config.self_test:
            _say("checker verdicts (faults were planted): " + ("; ".join(verdicts) or "none"))
        else:
            _say("SOAK PASSED" if not verdicts else "SOAK FAILED: " + "; ".join(verdicts))


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s soak: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _watchdog(config: SoakConfig, children: Children) -> None:
    """At the hard deadline: interrupt the run; two minutes later, end it outright."""

    def watch() -> None:
        time.sleep(config.hard_deadline)
        log.error("hard deadline of %.0f s reached: stopping", config.hard_deadline)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(120)
        children.end_all(protected_wait=60)
        os._exit(3)

    threading.Thread(target=watch, name="soak-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """Run the soak; see the module docstring for the exit status."""
    _configure_logging()
    try:
        config = load_config(argv)
    except SoakConfigError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    ws = Workspace(config)
    children = Children(ws.dir)
    # Both, explicitly: a run started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    _watchdog(config, children)
    soak = Soak(config, ws, children, random.Random(config.seed))
    ok = False
    try:
        ok = soak.run()
        return 0 if ok else 1
    except SoakError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if soak.sender is not None:
            soak.sender.stop.set()
        if soak.workers is not None and soak.workers.workers:
            # SIGTERM first: a worker that leaves the group lets it be deleted now.
            soak.workers.stop_all(timeout=15)
        children.end_all()
        if soak.sender is not None:
            soak.sender.join(FLUSH_JOIN_SECONDS)
        problems = ws.close(keep_logs=not ok)
        for problem in problems:
            print(f"soak: cleanup: {problem}", file=sys.stderr)
        if config.keep:
            print(
                f"soak: kept database {ws.db_name}, topics soak.{ws.run_id}.*, group {ws.group},"
                f" logs {ws.dir}",
                file=sys.stderr,
            )
        elif not ok:
            print(f"soak: logs of the run's processes kept in {ws.dir}", file=sys.stderr)


FLUSH_JOIN_SECONDS = 100.0
