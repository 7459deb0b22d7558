"""A staged row in PostgreSQL's binary COPY format: the column types and two fast dumpers.

psycopg dumps a ``text[]`` through its generic list dumper (dimensions, nulls and a
dumper per element, in Python) and a jsonb through a ``Jsonb`` wrapper made per
value. Ingestion dumps two jsonb values and one key array for every record, on the
worker's hot path, so the COPY of the staging table uses the two dumpers below
instead: registered by type oid on the COPY's own cursor, they apply to that COPY
only. They write exactly the bytes PostgreSQL's ``array_recv`` and ``jsonb_recv``
read (tests/integration/test_jsonb_storage.py stores every shape through them), and
an error raised while dumping a value is the record's, as before
(``Storage._copy`` turns it into RecordRefused).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import Cursor, postgres, sql
from psycopg.abc import Transformer as TransformerProtocol
from psycopg.adapt import AdaptersMap, Dumper, Transformer
from psycopg.pq import Format

from purger.errors import RecordRefused
from purger.identifiers import subject_key
from purger.queries import template
from purger.records import Envelope, jsonb_text

_TEXT_OID = postgres.types["text"].oid
_TEXT_ARRAY_OID = postgres.types["text"].array_oid
_JSONB_OID = postgres.types["jsonb"].oid

# The staging table's columns as copy_staging names them, in order.
COPY_TYPES = [
    "text",
    "text",
    "timestamptz",
    "timestamptz",
    "text[]",
    "jsonb",
    "jsonb",
    "text",
    "int4",
    "int8",
]

# array_recv's header: dimensions, has-nulls flag, element type; then per dimension
# its length and lower bound. No dimension at all is the empty array.
_EMPTY_ARRAY = struct.pack("!iiI", 0, 0, _TEXT_OID)
_ONE_DIMENSION = struct.Struct("!iiIii")
_LENGTH = struct.Struct("!i")
# jsonb_recv's version byte, then the JSON text.
_JSONB_VERSION = b"\x01"


class SubjectKeysDumper(Dumper):
    """A record's ``subjects`` as the ``text[]`` of its look-up keys (``Record.subject_keys``)."""

    oid = _TEXT_ARRAY_OID
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        """The binary array of ``kind:value`` keys, in ``Record.subject_keys`` order."""
        keys = [
            subject_key(kind, v).encode("utf-8") for kind, values in obj.items() for v in values
        ]
        if not keys:
            return _EMPTY_ARRAY
        parts = [_ONE_DIMENSION.pack(1, 0, _TEXT_OID, len(keys), 1)]
        for key in keys:
            parts.append(_LENGTH.pack(len(key)))
            parts.append(key)
        return b"".join(parts)


class JsonbDumper(Dumper):
    """A decoded JSON value as binary jsonb, written by ``records.jsonb_text``."""

    oid = _JSONB_OID
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        """The version byte and the JSON text."""
        text = jsonb_text(obj)
        # json.dumps (jsonb_text's fallback) escapes every non-ASCII character.
        return _JSONB_VERSION + (text if isinstance(text, bytes) else text.encode("utf-8"))


def use_fast_dumpers(cursor: Cursor[Any]) -> None:
    """Make a COPY on ``cursor`` with COPY_TYPES dump ``text[]`` and jsonb as above.

    Registered without a Python type: psycopg uses them only where a COPY's
    set_types names the oid, so no parameter of another statement is affected.
    """
    _register(cursor.adapters)


def _register(adapters: AdaptersMap) -> None:
    adapters.register_dumper(None, SubjectKeysDumper)
    adapters.register_dumper(None, JsonbDumper)


# A row's fields in binary COPY format, with their count: psycopg's own (C) encoder, the
# one a row-mode COPY calls. Private to psycopg: a release without it only sends every
# batch through the row-mode COPY (tests/integration/test_jsonb_storage.py fails then).
try:
    from psycopg._copy_base import format_row_binary as _format_row
except ImportError:  # pragma: no cover - depends on the psycopg release
    _format_row = None
# What a binary COPY starts and ends with; a COPY written in blocks must send both.
_SIGNATURE = b"PGCOPY\n\xff\r\n\0" + b"\0\0\0\0" + b"\0\0\0\0"
_TRAILER = b"\xff\xff"


def _row(item: Envelope) -> tuple[Any, ...]:
    rec = item.record
    return (
        rec.record_id,
        rec.tenant,
        rec.occurred_at,
        item.expires_at,
        rec.subjects,  # dumped as its subject keys
        rec.subjects,
        rec.payload,
        item.topic,
        item.partition,
        item.offset,
    )


@dataclass(frozen=True, slots=True)
class EncodedRows:
    """A category's staged rows, encoded before their store (by a worker's decoding thread).

    A writer thread that encodes its own COPY holds the GIL for it while the decoding
    thread wants it too; encoded beforehand, the store only sends bytes.
    """

    items: Sequence[Envelope]
    data: bytes
    # The end of each item's row in ``data``.
    ends: Sequence[int]

    def rows_of(self, items: Sequence[Envelope]) -> bytes | None:
        """The rows of ``items`` (these very objects, in this order), else None."""
        if len(items) == len(self.items) and all(map(operator.is_, items, self.items)):
            return self.data
        where = {id(item): n for n, item in enumerate(self.items)}
        parts = []
        for item in items:
            n = where.get(id(item))
            if n is None or self.items[n] is not item:
                return None  # re-tagged since: a new Envelope
            parts.append(self.data[self.ends[n - 1] if n else 0 : self.ends[n]])
        return b"".join(parts)


def _transformer() -> TransformerProtocol:
    adapters = AdaptersMap(psycopg.adapters)
    _register(adapters)
    transformer = Transformer(adapters)
    # As Copy.set_types(COPY_TYPES) sets them.
    transformer.set_dumper_types([adapters.types.get_oid(t) for t in COPY_TYPES], Format.BINARY)
    return transformer


def encode_rows(items: Sequence[Envelope]) -> EncodedRows | None:
    """The staged rows of ``items`` in binary COPY format; None when one cannot be encoded.

    A record that cannot be encoded is then met by the store's own row-mode COPY, which
    names it (RecordRefused), as when nothing was encoded beforehand.
    """
    if _format_row is None or not items:
        return None
    transformer = _transformer()
    out = bytearray()
    ends = []
    try:
        for item in items:
            _format_row(_row(item), transformer, out)
            ends.append(len(out))
    except Exception:
        # Whatever it is, the store's row-mode COPY raises it where it always did,
        # under the writer's retrier (a record it names is dead-lettered).
        return None
    return EncodedRows(items, bytes(out), ends)


def copy_rows(
    conn: psycopg.Connection[Any],
    staging: sql.Identifier,
    items: Sequence[Envelope],
    category: str,
    positions: Mapping[int, int],
    *,
    encoded: EncodedRows | None = None,
) -> None:
    """COPY ``items`` into the staging table; RecordRefused names a row it cannot encode.

    ``positions`` gives each item's index in its batch (by ``id``), for that error.
    Rows ``encoded`` beforehand are sent as they are (a COPY written in one block).
    """
    data = encoded.rows_of(items) if encoded is not None else None
    with conn.cursor() as cur:
        use_fast_dumpers(cur)
        copy_sql = template("copy_staging", staging=staging)
        with cur.copy(sql.SQL("{} (FORMAT BINARY)").format(copy_sql)) as copy:
            if data is not None:
                copy.write(_SIGNATURE + data + _TRAILER)
                return
            copy.set_types(COPY_TYPES)
            for item in items:
                try:
                    copy.write_row(_row(item))
                except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                    # Raised while encoding this one row on the client side (a value
                    # jsonb or the binary format cannot carry): this record's fault.
                    raise RecordRefused(
                        f"record cannot be encoded for PostgreSQL ({exc.__class__.__name__})",
                        category=category,
                        index=positions[id(item)],
                    ) from exc
