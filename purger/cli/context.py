"""What every command needs: settings, policy, metrics, engines, a stop flag.

Command modules of ``purger.cli`` import this one and nothing of each other.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from purger import logs
from purger.errors import ConfigError
from purger.hold_scope import SELECTORS
from purger.ingest import load_plugin
from purger.metrics import Metrics
from purger.policy import RetentionPolicy, load_policy
from purger.purge import Anchor, Purger
from purger.settings import Settings, describe_settings, load_settings
from purger.storage import Storage
from purger.topic_retention import targets as topic_targets

log = logging.getLogger("purger")

Command = Callable[["Context"], int]


class Context:
    """What every command needs, loaded once."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings: Settings = load_settings(args.config)
        logs.configure(self.settings.log_format, self.settings.log_level)
        self.policy: RetentionPolicy = load_policy(
            self.settings.policy_file, self.settings.dead_letter_suffix
        )

    def actor(self, given: str | None) -> str:
        """Who runs the command, for the audit trail: ``given`` (``--by``), else the OS user."""
        if given and given.strip():
            return given.strip()
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            # A container's numeric user has no passwd entry.
            user = f"uid {os.getuid()}"
        return f"{user} (purger {self.args.command})"

    def log_effective_config(self) -> None:
        """The one start-up line with the effective settings, secrets masked."""
        log.info(
            "effective settings: %s; policy %s (version %s, digest %s)",
            json.dumps(self.settings.masked(), default=str),
            self.policy.source,
            self.policy.version,
            self.policy.digest,
        )

    def metrics(self, *, ingest: bool = True) -> Metrics:
        """A fresh metrics registry with every series pre-created."""
        return Metrics(
            categories=self.policy.categories,
            topics=self.policy.by_topic(),
            ingest=ingest,
            retention_topics=[t.topic for t in topic_targets(self.policy)],
        )

    def purger(self, metrics: Metrics) -> Purger:
        """The purge engine."""
        s = self.settings
        return Purger(
            s.conninfo(),
            self.policy,
            metrics,
            lock_timeout_ms=s.lock_timeout_ms,
            statement_timeout_ms=s.statement_timeout_ms,
            delete_batch_size=s.delete_batch_size,
            anchor=self.anchor(),
        )

    def anchor(self) -> Anchor | None:
        """Publishes each pass's audit head to ``audit_anchor_topic`` through the plugin."""
        try:
            plugin = load_plugin()
        except ConfigError as exc:
            log.warning("audit heads are not anchored outside PostgreSQL: %s", exc)
            return None
        settings = self.settings
        return lambda head: plugin.publish_anchor(settings, head)

    def storage(self, application: str = "cli") -> Storage:
        """A storage handle."""
        return Storage(
            self.settings.conninfo(), self.policy, self.settings.granularity, application
        )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """A stop flag set by SIGTERM and SIGINT (the current batch finishes first)."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


SELECTOR_FLAGS = {kind: "--" + kind.replace("_", "-") for kind in SELECTORS}
"""The command-line flag of each kind of subject identifier (``--msisdn``, ``--cookie-id``)."""


def private_file(path: str) -> TextIO:
    """A file for personal data: created 0600; an existing one is made 0600 before writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return open(fd, "w", encoding="utf-8", newline="")


def print_json(value: Any, out: TextIO = sys.stdout) -> None:
    """``value`` as indented JSON."""
    out.write(json.dumps(value, indent=2, default=str) + "\n")


def add_command(sub: Any, name: str, func: Command, help_: str) -> argparse.ArgumentParser:
    """A subcommand whose --help also lists every PURGER_* setting."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog=describe_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p
