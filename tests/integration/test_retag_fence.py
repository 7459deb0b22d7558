"""Re-tagging and a purge pass exclude each other (the re-tag fence, purger/retag.py).

A `purger policy retag` run by hand during a pass could move a record to an expiry
at or before the pass's T into a partition the pass had already dropped (the batch
re-creates it) or purged, and the record outlived the pass.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from purger.partitions import PartitionManager
from purger.policy import RetentionPolicy
from purger.purge_report import COMPLETED, PassReport
from purger.queries import query
from purger.retag import Retagger, RetagReport
from purger.storage import Storage
from tests.integration.holds_support import make_purger
from tests.integration.policy_support import changed_policy, record, rows, store
from tests.integration.requests_support import waiting_on_a_lock
from tests.integration.support import wait_until

CATEGORY = "cookie_stats"
RETAGGER = "test-retagger"


def _shortened(
    database: str, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> RetentionPolicy:
    """Eight records stored by P1Y (240-247 days old), then P6M applied: all must re-tag."""
    now = datetime.now(UTC).replace(microsecond=0)
    items = [record(policy, CATEGORY, f"r{i}", now - timedelta(days=240 + i)) for i in range(8)]
    assert store(database, policy, CATEGORY, items).inserted == 8
    shorter = changed_policy(policy_file, tmp_path / "v2.yaml", cookie_stats={"retention": "P6M"})
    with Storage(database, shorter) as storage:
        storage.migrate(partitions_ahead=0, applied_by="tester")
    return shorter


def _retag(database: str, budget_seconds: float | None = None) -> RetagReport:
    with psycopg.connect(database, autocommit=True, application_name=RETAGGER) as conn:
        retagger = Retagger(conn, PartitionManager(timedelta(days=1)), batch_size=3)
        return retagger.run(CATEGORY, budget_seconds=budget_seconds)


def _versions(database: str) -> set[int]:
    return {version for _occurred, _expires, version, _tenant in rows(database, CATEGORY).values()}


def test_re_tagging_waits_for_a_running_pass_and_then_finishes(
    database: str, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    shorter = _shortened(database, policy, policy_file, tmp_path)
    with (
        psycopg.connect(database, autocommit=True) as ingest,
        ThreadPoolExecutor(2) as pool,
    ):
        # An ingest transaction in flight holds the pass where it fixes T: after it has
        # taken the pass lock and the fence, before it purges anything.
        ingest.execute("BEGIN")
        ingest.execute(query("ingest_lock_shared"), {"category": CATEGORY})
        try:
            passing: Future[PassReport] = pool.submit(make_purger(database, shorter).run_pass)
            wait_until(
                lambda: waiting_on_a_lock(database, "purger:purge"),
                what="the pass waiting to fix its instant",
            )
            retagging: Future[RetagReport] = pool.submit(_retag, database)
            wait_until(
                lambda: waiting_on_a_lock(database, RETAGGER),
                what="the re-tagging waiting for the pass",
            )
            assert _versions(database) == {1}, "a record was re-tagged while the pass ran"
        finally:
            # Also on a failure above: the pool's threads must be able to end.
            ingest.execute("COMMIT")
        report = passing.result(timeout=60)
        retagged = retagging.result(timeout=60)
    assert report.outcome in COMPLETED, report.error
    assert (retagged.retagged, retagged.finished) == (8, True)
    assert _versions(database) == {2}
    # Re-tagged after that pass, due now: the next pass destroys them.
    assert make_purger(database, shorter).run_pass().outcome == "success"
    assert not rows(database, CATEGORY)


def test_a_pass_waits_for_a_re_tag_batch_and_says_so_when_it_gives_up(
    database: str, policy: RetentionPolicy
) -> None:
    with psycopg.connect(database, autocommit=True) as batch:
        # What a re-tag batch holds from its partitions' creation to its move.
        batch.execute(query("retag_fence_batch"))
        report = make_purger(database, policy, lock_timeout_ms=300).run_pass()
        assert report.outcome == "contended"
        assert report.error is not None and "pause re-tagging for the pass" in report.error
        batch.execute(query("retag_fence_batch_release"))
    # The batch done, the next pass runs; the fence is free again after it.
    assert make_purger(database, policy).run_pass().outcome in COMPLETED
    with psycopg.connect(database, autocommit=True) as batch:
        assert batch.execute(query("retag_fence_batch")).fetchone() is not None
        assert batch.execute(query("retag_fence_batch_release")).fetchone() == (True,)


def test_a_budgeted_re_tag_gives_up_waiting_for_a_pass_within_its_budget(
    database: str, policy: RetentionPolicy, policy_file: Path, tmp_path: Path
) -> None:
    _shortened(database, policy, policy_file, tmp_path)
    outcome: dict[str, Any] = {}
    with psycopg.connect(database, autocommit=True) as passing:
        passing.execute(query("retag_fence_pass"))
        worker = threading.Thread(target=lambda: outcome.update(report=_retag(database, 1.0)))
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "the budgeted re-tag kept waiting past its budget"
        passing.execute(query("retag_fence_pass_release"))
    report: RetagReport = outcome["report"]
    assert (report.retagged, report.finished, report.remaining) == (0, False, 8)
    assert _versions(database) == {1}
