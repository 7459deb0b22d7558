"""A consumer that dies by SIGKILL right after its first database commit.

Run as ``python -m tests.integration.crash_worker`` with the usual PURGER_* settings:
it stores one batch and kills itself before any offset is committed, the exact
window in which a crash makes Kafka redeliver a batch the database already holds.
"""

from __future__ import annotations

import os
import signal
import threading

from kafka.structs import TopicPartition
from prometheus_client import CollectorRegistry

from consumers.loop import ConsumerWorker
from purger.metrics import Metrics
from purger.policy import load_policy
from purger.settings import load_settings


class CrashAfterDatabaseCommit(ConsumerWorker):
    """Dies where ``process`` is about to commit the offsets of a stored batch."""

    def commit_pending(self, only: set[TopicPartition] | None = None) -> None:
        """SIGKILL this process instead of committing a batch's offsets."""
        if only is None and self.checkpoint.pending:
            os.kill(os.getpid(), signal.SIGKILL)
        super().commit_pending(only)


def main() -> None:
    """Consume until the first batch is stored, then die."""
    settings = load_settings()
    policy = load_policy(settings.policy_file, settings.dead_letter_suffix)
    categories = list(policy.categories)
    metrics = Metrics(
        CollectorRegistry(), categories, [c.topic for c in policy.categories.values()]
    )
    CrashAfterDatabaseCommit(settings, policy, metrics, threading.Event()).run()
    raise SystemExit("the worker finished without storing a batch")


if __name__ == "__main__":
    main()
