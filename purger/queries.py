"""Named SQL queries, loaded once from the package's ``.sql`` files."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

from psycopg import sql

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _load(filename: str) -> dict[str, str]:
    text = resources.files("purger.sql").joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


def query(name: str, filename: str = "queries.sql") -> sql.SQL:
    """The named query as a composable (values go in as parameters)."""
    return sql.SQL(_load(filename)[name])


def template(name: str, **identifiers: Any) -> sql.Composed:
    """The named query with ``{placeholders}`` filled by ``sql.Identifier``/``sql.Literal``."""
    return query(name).format(**identifiers)


def sql_file(filename: str) -> str:
    """A whole ``.sql`` file of the package."""
    return resources.files("purger.sql").joinpath(filename).read_text(encoding="utf-8")
