"""Named queries: loaded once from the .sql files, every name unique and non-empty."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from purger.queries import query

NAMES = re.findall(
    r"^-- name: (\S+)", resources.files("purger.sql").joinpath("queries.sql").read_text(), re.M
)


def test_names_are_unique() -> None:
    assert NAMES, "queries.sql has no named queries"
    assert len(NAMES) == len(set(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_every_named_query_loads(name: str) -> None:
    assert query(name).as_string(None).strip()


def test_an_unknown_query_name_is_an_error() -> None:
    with pytest.raises(KeyError):
        query("no-such-query")
