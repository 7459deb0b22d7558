"""The sample messages copied from the project brief, and what each bad one must become."""

from __future__ import annotations

from pathlib import Path

from examples.samples import recent_bad_sample

MESSAGES = Path(__file__).parent / "data" / "messages"

__all__ = ["BAD_REASONS", "MESSAGES", "recent_bad_sample"]

# The dead-letter reason each bad sample must get.
BAD_REASONS = {
    "binary-garbage.bin": "not_utf8",
    "deep-nesting.json": "too_deeply_nested",
    "duplicate-key.json": "duplicate_key",
    "empty-record-id.json": "invalid_field",
    "escaped-nul.json": "nul_character",
    "far-future.json": "future_timestamp",
    "huge-integer.json": "number_out_of_range",
    "invalid-msisdn.json": "invalid_identifier",
    "iso-week-timestamp.json": "invalid_timestamp",
    "lone-surrogate.json": "invalid_json",
    "long-tenant.json": "field_too_long",
    "missing-record-id.json": "missing_field",
    "naive-timestamp.json": "naive_timestamp",
    "nan-in-payload.json": "non_finite_number",
    "not-an-object.json": "not_an_object",
    "number-overflow.json": "number_out_of_range",
    "timestamp-out-of-range.json": "timestamp_out_of_range",
    "too-many-identifiers.json": "too_many_identifiers",
    "truncated-json.json": "invalid_json",
    "unparseable-timestamp.json": "invalid_timestamp",
}
