"""The subject export's CSV cells: no spreadsheet formula survives (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from purger.subject_export import csv_row, neutralise_cell


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r"])
def test_a_cell_starting_with_a_formula_prefix_gets_a_quote(prefix: str) -> None:
    value = f'{prefix}HYPERLINK("http://x")'
    assert neutralise_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["acme", "31612345678", "", " =1", "a=b", "'=1", "{}"])
def test_other_cells_are_left_as_they_are(value: str) -> None:
    assert neutralise_cell(value) == value


def test_none_and_numbers_become_text() -> None:
    assert neutralise_cell(None) == ""
    assert neutralise_cell(7) == "7"
    assert neutralise_cell(-1) == "'-1"


def _record(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "category": "cdr",
        "record_id": "=cmd|' /C calc'!A0",
        "storage": "live",
        "tenant": "+acme",
        "occurred_at": "2024-01-01T00:00:00+00:00",
        "expires_at": "2024-07-01T00:00:00+00:00",
        "ingested_at": None,
        "holds": [3, 4],
        "subjects": {"msisdn": ["+31612345678"]},
        "payload": {"note": "=1+1"},
        "source_topic": "@topic",
        "source_partition": 0,
        "source_offset": 12,
    }
    record.update(overrides)
    return record


def test_a_row_is_flattened_and_every_cell_neutralised() -> None:
    row = csv_row(_record())
    assert row["record_id"] == "'=cmd|' /C calc'!A0"
    assert row["tenant"] == "'+acme"
    assert row["source_topic"] == "'@topic"
    assert row["category"] == "cdr" and row["ingested_at"] == ""
    assert row["holds"] == "3 4"
    assert json.loads(row["subjects"]) == {"msisdn": ["+31612345678"]}
    assert json.loads(row["payload"]) == {"note": "=1+1"}
    assert row["source_partition"] == "0" and row["source_offset"] == "12"


def test_no_written_cell_starts_with_a_formula_prefix() -> None:
    out = io.StringIO()
    rows = [_record(record_id=p + "x", tenant=p + "t") for p in ("=", "+", "-", "@", "\t", "\r")]
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    for r in rows:
        writer.writerow(csv_row(r))
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(parsed) == len(rows)
    for cells in parsed:
        for value in cells.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), value
    assert [c["record_id"] for c in parsed] == ["'" + p + "x" for p in "=+-@\t\r"]
