"""The audit trail on the real PostgreSQL: append-only, tamper-evident, exportable."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors

from purger import audit
from purger.policy import RetentionPolicy
from purger.settings import Settings
from tests.integration.purge_support import (
    DAY,
    make_purger,
    midnight,
    purge_env,
    seed_backdated,
    utcnow,
)
from tests.integration.support import purger_cli

pytestmark = pytest.mark.integration


def _make_trail(settings: Settings, policy: RetentionPolicy) -> int:
    """The policy applied at migrate, then real passes: 3 partitions dropped + 1 pass, then
    2 passes with nothing to do."""
    url = settings.conninfo()
    today = midnight(utcnow())
    seed_backdated(url, "cdr", [today - d * DAY for d in (2, 3, 4)])
    purger = make_purger(settings, policy)
    for _ in range(3):
        purger.run_pass()
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM purger.audit_log").fetchone()
    assert row == (7,)
    return 7


@pytest.fixture
def trail(settings: Settings, policy: RetentionPolicy) -> int:
    """Seven entries: the applied policy and six made by real passes; the chain verifies."""
    entries = _make_trail(settings, policy)
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        assert audit.verify(conn).ok
    return entries


def test_the_trigger_refuses_update_delete_and_truncate(settings: Settings, trail: int) -> None:
    url = settings.conninfo()
    statements = [
        "UPDATE purger.audit_log SET content = '{}' WHERE seq = 3",
        "DELETE FROM purger.audit_log WHERE seq = 7",
        "TRUNCATE purger.audit_log",
    ]
    for statement in statements:
        # A superuser, without disabling the trigger.
        with (
            psycopg.connect(url) as conn,
            pytest.raises(pgerrors.InsufficientPrivilege, match="append-only"),
        ):
            conn.execute(statement)
    result = purger_cli("audit", "verify", env=purge_env(settings))
    assert result.returncode == 0, result.stderr
    assert f"audit chain intact: {trail} entries" in result.stdout


def _swap_seq(a: int, b: int) -> str:
    return (
        f"UPDATE purger.audit_log SET seq = 1000 WHERE seq = {a}; "
        f"UPDATE purger.audit_log SET seq = {a} WHERE seq = {b}; "
        f"UPDATE purger.audit_log SET seq = {b} WHERE seq = 1000"
    )


def _rehash(conn: psycopg.Connection[Any], seq: int) -> None:
    """Change entry ``seq``'s content and give it the hash that content deserves."""
    row = conn.execute(
        "SELECT kind, recorded_at, prev_hash FROM purger.audit_log WHERE seq = %s", (seq,)
    ).fetchone()
    assert row is not None
    content = {"rows": 0, "note": "nothing to see here"}
    digest = audit.entry_hash(row[2], row[0], row[1], content)
    conn.execute(
        "UPDATE purger.audit_log SET content = %s, hash = %s WHERE seq = %s",
        (json.dumps(content), digest, seq),
    )


TAMPERING = {
    # Entry 1 is the policy applied at migrate; the passes wrote 2-7.
    "update": (
        "UPDATE purger.audit_log SET content = jsonb_set(content, '{rows}', '0') WHERE seq = 3",
        "entry 3 was modified (its hash does not match)",
        3,
    ),
    "update-two": (
        "UPDATE purger.audit_log SET kind = 'other' WHERE seq IN (4, 6)",
        "entry 4 was modified (its hash does not match)",
        4,
    ),
    "update-and-rehash": (
        # A superuser who also recomputes the entry's own hash: its successor no
        # longer follows it.
        "REHASH 3",
        "an entry before 4 was removed or replaced",
        4,
    ),
    "delete": (
        "DELETE FROM purger.audit_log WHERE seq = 4",
        "entry 4 was removed (the chain jumps to 5)",
        4,
    ),
    "delete-newest": (
        "DELETE FROM purger.audit_log WHERE seq = 7",
        "entries after 6 were removed (the recorded head is 7)",
        7,
    ),
    "delete-and-renumber": (
        "DELETE FROM purger.audit_log WHERE seq = 4; "
        "UPDATE purger.audit_log SET seq = seq - 1 WHERE seq > 4",
        "an entry before 4 was removed or replaced",
        4,
    ),
    "reorder": (_swap_seq(3, 4), "entry 3 was reordered (it follows another entry)", 3),
    "reorder-later": (_swap_seq(5, 7), "entry 5 was reordered (it follows another entry)", 5),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_verify_names_the_first_entry_a_superuser_tampered_with(
    settings: Settings, trail: int, case: str
) -> None:
    statements, message, first_bad = TAMPERING[case]
    with psycopg.connect(settings.conninfo()) as conn:
        # A superuser switches the trigger off for the session, as an attacker would.
        conn.execute("SET session_replication_role = replica")
        for statement in statements.split("; "):
            if statement.startswith("REHASH "):
                _rehash(conn, int(statement.split()[1]))
            else:
                conn.execute(statement)  # type: ignore[arg-type]
    result = purger_cli("audit", "verify", env=purge_env(settings))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"audit chain BROKEN: {message}" in result.stderr
    with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
        assert audit.verify(conn).first_bad_seq == first_bad


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _check_export(lines: list[dict[str, Any]], head: tuple[int, str]) -> list[dict[str, Any]]:
    """The export's entries link up and hash correctly; it ends with the chain head."""
    *entries, last = lines
    assert set(last) == {"chain_head"}
    assert (last["chain_head"]["seq"], last["chain_head"]["hash"]) == head
    assert last["chain_head"]["entries_in_export"] == len(entries)
    assert entries[-1]["seq"] == head[0]
    assert entries[-1]["hash"] == head[1]
    for before, entry in itertools.pairwise(entries):
        assert entry["seq"] == before["seq"] + 1
        assert entry["prev_hash"] == before["hash"]
    for entry in entries:
        # What a regulator does with the file alone: recompute every hash.
        recorded_at = datetime.fromisoformat(entry["recorded_at"])
        digest = audit.entry_hash(entry["prev_hash"], entry["kind"], recorded_at, entry["content"])
        assert digest == entry["hash"], entry["seq"]
    return entries


def test_export_writes_json_lines_ending_with_the_chain_head(
    settings: Settings, policy: RetentionPolicy, trail: int, tmp_path: Path
) -> None:
    url = settings.conninfo()
    with psycopg.connect(url) as conn:
        cut = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    seed_backdated(url, "interception", [midnight(utcnow()) - 5 * DAY])
    make_purger(settings, policy).run_pass()
    with psycopg.connect(url) as conn:
        head = conn.execute("SELECT seq, hash FROM purger.audit_head").fetchone()
        later = [
            r[0]
            for r in conn.execute(
                "SELECT seq FROM purger.audit_log WHERE recorded_at >= %s ORDER BY seq", (cut,)
            )
        ]
    assert head is not None
    assert later == [trail + 1, trail + 2]

    env = purge_env(settings)
    since = purger_cli("audit", "export", "--since", cut.isoformat(), env=env)
    assert since.returncode == 0, since.stderr
    entries = _check_export(_lines(since.stdout), (head[0], head[1]))
    assert [e["seq"] for e in entries] == later
    assert [e["kind"] for e in entries] == ["partition_dropped", "purge_pass"]
    assert all(datetime.fromisoformat(e["recorded_at"]) >= cut for e in entries)

    out = tmp_path / "trail.jsonl"
    full = purger_cli("audit", "export", "--output", str(out), env=env)
    assert full.returncode == 0, full.stderr
    assert full.stdout == ""
    entries = _check_export(_lines(out.read_text(encoding="utf-8")), (head[0], head[1]))
    assert [e["seq"] for e in entries] == list(range(1, trail + 3))
    assert entries[0]["prev_hash"] == audit.GENESIS

    bad = purger_cli("audit", "export", "--since", "yesterday", env=env)
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert "--since is not an RFC 3339 timestamp" in bad.stderr


def test_verify_and_export_read_one_snapshot_while_passes_append(
    settings: Settings, policy: RetentionPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An entry appended (by a pass on another replica) while the chain is being
    # read must not look like tampering, nor end an export with a head it lacks.
    url = settings.conninfo()
    _make_trail(settings, policy)
    scan = audit._rows

    def rows_then_append(conn: psycopg.Connection[Any], since: Any) -> Iterator[audit.AuditEntry]:
        yield from scan(conn, since)
        make_purger(settings, policy).run_pass()

    monkeypatch.setattr(audit, "_rows", rows_then_append)
    with psycopg.connect(url, autocommit=True) as conn:
        result = audit.verify(conn)
        assert (result.ok, result.entries, result.problem) == (True, 7, None)
        lines = list(audit.export(conn))
    assert lines[-1]["chain_head"]["seq"] == 8
    assert lines[-2]["seq"] == 8
    _check_export(lines, (lines[-1]["chain_head"]["seq"], lines[-1]["chain_head"]["hash"]))
    monkeypatch.setattr(audit, "_rows", scan)
    with psycopg.connect(url, autocommit=True) as conn:
        assert audit.verify(conn).entries == 9
