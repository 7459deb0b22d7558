"""The audit chain's hash: canonical, and sensitive to every part of an entry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from purger.audit import GENESIS, canonical, entry_hash

AT = datetime(2026, 11, 28, 12, tzinfo=UTC)


def test_canonical_json_ignores_key_order() -> None:
    assert (
        canonical({"b": 1, "a": [1, 2]}) == canonical({"a": [1, 2], "b": 1}) == b'{"a":[1,2],"b":1}'
    )


def test_the_same_instant_in_another_zone_hashes_the_same() -> None:
    other = AT.astimezone(timezone(timedelta(hours=1)))
    assert entry_hash(GENESIS, "k", AT, {"x": 1}) == entry_hash(GENESIS, "k", other, {"x": 1})


@given(
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=4),
    st.text(min_size=1, max_size=10),
)
def test_every_part_changes_the_hash(content: dict[str, int], kind: str) -> None:
    base = entry_hash(GENESIS, kind, AT, content)
    assert entry_hash("1" * 64, kind, AT, content) != base
    assert entry_hash(GENESIS, kind + "x", AT, content) != base
    assert entry_hash(GENESIS, kind, AT + timedelta(microseconds=1), content) != base
    assert entry_hash(GENESIS, kind, AT, {**content, "extra": 1}) != base
