"""Rows encoded beforehand: what a store sends of them for the records it stores."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from purger.records import Envelope, Record
from purger.staging_rows import encode_rows

NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)


def _items(n: int) -> list[Envelope]:
    return [
        Envelope(
            Record(f"r{i}", NOW, "t1", {"msisdn": [f"+3161234{i:04d}"]}, {"i": i, "s": "é" * i}),
            NOW + timedelta(days=i),
            "topic",
            i % 3,
            i,
        )
        for i in range(n)
    ]


def test_the_rows_of_a_part_are_those_the_part_encodes_to() -> None:
    items = _items(9)
    encoded = encode_rows(items)
    assert encoded is not None
    assert encoded.rows_of(list(items)) == encoded.data
    part = items[1::3]
    alone = encode_rows(part)
    assert alone is not None
    assert encoded.rows_of(part) == alone.data
    assert encoded.rows_of([]) == b""


def test_a_record_tagged_again_since_is_not_sent_from_the_old_encoding() -> None:
    items = _items(4)
    encoded = encode_rows(items)
    assert encoded is not None
    retagged = [*items[:2], dataclasses.replace(items[2], expires_at=NOW), items[3]]
    assert encoded.rows_of(retagged) is None
    assert encoded.rows_of(list(reversed(items))) != encoded.data


class _Unencodable(dict):  # type: ignore[type-arg]
    """A value whose encoding raises what no dumper is known to raise."""

    def items(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("cannot be read")


def test_whatever_encoding_raises_leaves_the_rows_to_the_store() -> None:
    items = _items(3)
    odd = dataclasses.replace(items[1].record, payload=_Unencodable(a=1))
    items[1] = dataclasses.replace(items[1], record=odd)
    assert encode_rows(items) is None
