"""Logging set-up: plain text or JSON lines. Callers pass context, never payloads."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Context fields a log call may pass with ``extra=``; nothing else is emitted,
# so a stray attribute can never leak record content into a log line.
CONTEXT_FIELDS = (
    "category",
    "topic",
    "partition",
    "offset",
    "reason",
    "outcome",
    "pass_id",
    "count",
    "worker",
    "hold_id",
    "seconds",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name)
        )
        when = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        line = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if ctx:
            line = f"{line} {ctx}"
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: driver messages may quote row values.
            line = f"{line} error={record.exc_info[0].__name__}"
        return line


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Send logs to stderr in ``fmt`` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every failed connection attempt at ERROR, many per second;
    # readiness (/readyz) and our own messages report an unreachable broker.
    logging.getLogger("kafka").setLevel(logging.DEBUG if level == "DEBUG" else logging.CRITICAL)
