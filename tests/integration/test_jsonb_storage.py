"""PostgreSQL stores the same jsonb from the COPY's JSON as from json.dumps's.

Storage._copy writes jsonb with orjson where it can (purger/records.py jsonb_text);
psycopg wrote it with json.dumps before. For awkward payloads (floats of every scale,
integers past 64 bits, any Unicode, nesting), what the database holds is compared with
what it makes of json.dumps's text. The subject keys, which the COPY's own array dumper
writes (purger/staging_rows.py), are compared with ``Record.subject_keys``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from purger.errors import RecordRefused
from purger.partitions import parent_table
from purger.policy import RetentionPolicy
from purger.records import Envelope, Record
from purger.staging_rows import encode_rows
from purger.storage import Storage

pytestmark = pytest.mark.integration

AWKWARD: list[Any] = [
    {"f": [1e-05, 1.5e-07, 1e16, 1e15, 100.0, -0.0, 0.0, 5e-324, 1.7976931348623157e308]},
    {"f": [0.1, 1 / 3, 123456789.125, 2.0**63, 2.0**64, 1e22, 1e-4, 9007199254740993.0]},
    {"i": [2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**63) - 1, 10**999, -(10**999), 0]},
    {"s": '\u2028\u2029\x7f\x1f\x01"\\/ é ü 😀 \ud7ff\ue000\uffff \U0010ffff', "é": "k"},
    {"n": None, "t": True, "f": False, "e": [], "o": {}, "nested": [[[{"a": [None]}]]]},
    {"deep": json.loads("[" * 60 + "1" + "]" * 60)},
]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randrange(-(2**70), 2**70)
    if kind == 2:
        return rng.uniform(-1e6, 1e6) * 10.0 ** rng.randrange(-30, 30)
    if kind == 3:
        return round(rng.random() * 10 ** rng.randrange(0, 20), rng.randrange(0, 6))
    if kind in (4, 5):
        return "".join(chr(rng.choice([rng.randrange(1, 0xD800), 0x1F600, 0xE9])) for _ in "abc")
    if kind in (6, 7):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{n}é": _random_value(rng, depth + 1) for n in range(rng.randrange(4))}


def _envelope(
    policy: RetentionPolicy,
    n: int,
    payload: dict[str, Any],
    subjects: dict[str, list[str]] | None = None,
) -> Envelope:
    occurred = datetime.now(UTC) - timedelta(hours=1)
    record = Record(
        record_id=f"jsonb-{n}",
        occurred_at=occurred,
        tenant="t1",
        subjects={"cookie_id": [f"c-{n}-é😀"], "msisdn": ["+31612345678"]}
        if subjects is None
        else subjects,
        payload=payload,
    )
    return Envelope(record, policy.category("cdr").expires_at("t1", occurred), "t", 0, n)


@pytest.mark.parametrize("beforehand", [False, True], ids=["row-mode-copy", "encoded-beforehand"])
def test_stored_jsonb_is_what_json_dumps_gave(
    database: str, policy: RetentionPolicy, beforehand: bool
) -> None:
    rng = random.Random(20261128)
    payloads = AWKWARD + [{"v": _random_value(rng)} for _ in range(400)]
    items = [_envelope(policy, n, p) for n, p in enumerate(payloads)]
    # What a worker sends: its rows encoded by its decoding thread (consumers/loop.py).
    encoded = encode_rows(items) if beforehand else None
    assert (encoded is not None) == beforehand
    with Storage(database, policy, timedelta(hours=1)) as storage:
        result = storage.store({"cdr": items}, {"cdr": encoded} if encoded else None)
        assert result["cdr"].inserted == len(items)
    table = sql.Identifier("purger", parent_table("cdr"))
    with psycopg.connect(database) as conn:
        for item in items:
            rec = item.record
            row = conn.execute(
                sql.SQL(
                    "SELECT subjects::text = %s::jsonb::text, payload::text = %s::jsonb::text, "
                    "payload::text FROM {} WHERE record_id = %s"
                ).format(table),
                (json.dumps(rec.subjects), json.dumps(rec.payload), rec.record_id),
            ).fetchone()
            assert row is not None
            assert row[0], rec.subjects
            assert row[1], (rec.payload, row[2])


@pytest.mark.parametrize("beforehand", [False, True], ids=["row-mode-copy", "encoded-beforehand"])
@pytest.mark.parametrize(
    "payload", [{"huge": 10**5000}, {"nan": math.nan}], ids=["int-5000-digits", "nan"]
)
def test_what_jsonb_cannot_hold_is_still_refused(
    database: str, policy: RetentionPolicy, payload: dict[str, Any], beforehand: bool
) -> None:
    items = [_envelope(policy, 0, {"ok": 1}), _envelope(policy, 1, payload)]
    # The integer cannot be encoded (the store's row-mode COPY then names the record);
    # the NaN can, and PostgreSQL refuses it.
    encoded = encode_rows(items) if beforehand else None
    with Storage(database, policy, timedelta(hours=1)) as storage, pytest.raises(RecordRefused):
        storage.store({"cdr": items}, {"cdr": encoded} if encoded else None)


def _random_subjects(rng: random.Random) -> dict[str, list[str]]:
    kinds = rng.sample(["msisdn", "imsi", "ip", "email", "cookie_id", "x_custom"], rng.randrange(4))
    return {
        kind: [
            "".join(
                chr(rng.choice([rng.randrange(0x20, 0x7F), 0xE9, 0x1F600, 0x4E2D]))
                for _ in "x" * rng.randrange(1, 300)
            )
            for _ in range(rng.randrange(5))
        ]
        for kind in kinds
    }


@pytest.mark.parametrize("beforehand", [False, True], ids=["row-mode-copy", "encoded-beforehand"])
def test_stored_subject_keys_are_the_records(
    database: str, policy: RetentionPolicy, beforehand: bool
) -> None:
    rng = random.Random(20261204)
    shapes: list[dict[str, list[str]]] = [
        {},
        {"msisdn": []},
        {"cookie_id": [f"c{n}" for n in range(1000)]},
        {"email": ["ä@é.nl"], "ip": ["2001:db8::1"]},
    ]
    shapes += [_random_subjects(rng) for _ in range(300)]
    items = [_envelope(policy, n, {}, s) for n, s in enumerate(shapes)]
    # Every other record arrives expired: the live ones are a part of the encoded rows.
    items = [
        dataclasses.replace(i, expires_at=datetime.now(UTC) - timedelta(days=1)) if n % 2 else i
        for n, i in enumerate(items)
    ]
    encoded = encode_rows(items) if beforehand else None
    assert (encoded is not None) == beforehand
    with Storage(database, policy, timedelta(hours=1)) as storage:
        result = storage.store({"cdr": items}, {"cdr": encoded} if encoded else None)["cdr"]
        assert (result.inserted, result.expired_on_arrival) == (
            len(items) - len(items) // 2,
            len(items) // 2,
        )
    items = items[::2]
    table = sql.Identifier("purger", parent_table("cdr"))
    with psycopg.connect(database) as conn:
        stored = dict(
            conn.execute(sql.SQL("SELECT record_id, subject_keys FROM {}").format(table)).fetchall()
        )
    assert len(stored) == len(items)
    for item in items:
        assert stored[item.record.record_id] == item.record.subject_keys


def test_a_subject_key_utf8_cannot_carry_is_refused(database: str, policy: RetentionPolicy) -> None:
    items = [
        _envelope(policy, 0, {}),
        _envelope(
            policy,
            1,
            {},
            {"cookie_id": ["lone " + chr(0xD800) + " surrogate"]},
        ),
    ]
    with (
        Storage(database, policy, timedelta(hours=1)) as storage,
        pytest.raises(RecordRefused) as info,
    ):
        storage.store({"cdr": items})
    assert info.value.index == 1
