"""The sample messages copied from the project brief, and what each bad one must become."""

from __future__ import annotations

from pathlib import Path

MESSAGES = Path(__file__).parent / "data" / "messages"

# The dead-letter reason each bad sample must get.
BAD_REASONS = {
    "binary-garbage.bin": "not_utf8",
    "empty-record-id.json": "invalid_field",
    "far-future.json": "future_timestamp",
    "invalid-msisdn.json": "invalid_identifier",
    "missing-record-id.json": "missing_field",
    "naive-timestamp.json": "naive_timestamp",
    "not-an-object.json": "not_an_object",
    "truncated-json.json": "invalid_json",
    "unparseable-timestamp.json": "invalid_timestamp",
}
