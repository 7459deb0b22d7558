"""The audit trail identifies nobody: a hold's scope is audited as a keyed digest only.

The key lives with the active hold and is destroyed by its release, so no audit
entry, before or after the release, matches any digest of the held identifiers
that can be computed without it; case references and reasons that look like
personal data are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from purger import audit, hold_registry
from purger.hold_registry import ScopeCheck
from purger.hold_scope import HoldScope
from purger.policy import RetentionPolicy
from purger.settings import Settings
from tests.integration.holds_support import audit_kinds, place, release
from tests.integration.support import purger_cli, settings_env

pytestmark = pytest.mark.integration

MSISDN = "+31612345678"
# Every way the number is written or stored.
FORMS = (MSISDN, "31612345678", "0612345678", "612345678", "06 12 34 56 78", f"msisdn:{MSISDN}")


def _old_digest(scope: HoldScope) -> str:
    # How the audit trail digested a scope before migration 0005: unsalted sha256.
    return hashlib.sha256(
        json.dumps(scope.as_dict(), sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def _unkeyed_digests(scope: HoldScope) -> set[str]:
    """Every digest of the identifier an attacker computes without a key."""
    texts = [*FORMS, json.dumps(scope.as_dict(), sort_keys=True)]
    out = {_old_digest(scope), hashlib.sha256(audit.canonical(scope.as_dict())).hexdigest()}
    for text in texts:
        for algorithm in ("sha256", "sha1", "md5", "sha512"):
            out.add(hashlib.new(algorithm, text.encode()).hexdigest())
    return out


def _trail(url: str) -> str:
    """The whole audit trail, every column of every entry, as text."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT seq, kind, recorded_at::text, content::text, prev_hash, hash "
            "FROM purger.audit_log ORDER BY seq"
        ).fetchall()
    return json.dumps([list(r) for r in rows], ensure_ascii=False)


def _assert_identifies_nobody(url: str, scope: HoldScope) -> None:
    text = _trail(url)
    lowered = text.lower()
    for form in FORMS:
        assert form.lower() not in lowered, "an audit entry names the held identifier"
    found = set(re.findall(r"[0-9a-f]{32,128}", lowered))
    assert not found & _unkeyed_digests(scope), "an audit entry holds an unkeyed digest"
    # The attack the unsalted digest allowed: try the numbering space around the number.
    guesses = {
        _old_digest(HoldScope(subject_keys=(f"msisdn:+316123{n:05d}",))) for n in range(100_000)
    }
    assert not found & guesses, "a guessed number confirms itself against the trail"


def _key(url: str, hold_id: int) -> bytes | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT scope_key FROM purger.legal_holds WHERE id = %s", (hold_id,)
        ).fetchone()
    assert row is not None
    return bytes(row[0]) if row[0] is not None else None


def _entry(url: str, kind: str, hold_id: int) -> dict[str, Any]:
    (entry,) = [e for e in audit_kinds(url, kind) if e["hold_id"] == hold_id]
    return entry


def _chain_ok(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        result = audit.verify(conn)
    assert result.ok, result.problem


def test_no_audit_entry_matches_a_digest_of_the_held_identifiers_computed_without_the_key(
    database: str, policy: RetentionPolicy
) -> None:
    placement = place(database, policy, subjects={"msisdn": ["06 12 34 56 78"]})
    hold = placement.hold
    assert hold.scope.subject_keys == (f"msisdn:{MSISDN}",)

    # Active: the key is stored with the hold and the audited HMAC verifies with it.
    key = _key(database, hold.id)
    assert key is not None and len(key) == 32
    placed = _entry(database, "hold_placed", hold.id)
    assert placed["scope"]["selectors"] == {"msisdn": 1}
    assert "scope_digest" not in placed["scope"]
    assert placed["scope"]["scope_hmac"] == (
        hmac.new(key, hold.scope.canonical(), hashlib.sha256).hexdigest()
    )
    with psycopg.connect(database, autocommit=True) as conn:
        assert hold_registry.verify_scope(conn, hold) is ScopeCheck.MATCHES
        # A scope that is not the audited one does not verify.
        other = HoldScope(subject_keys=("msisdn:+31612345679",))
        assert hold_registry.verify_scope(conn, replace(hold, scope=other)) is ScopeCheck.DIFFERS
    _assert_identifies_nobody(database, hold.scope)

    released = release(database, hold.id)

    # Released: the key is gone, the HMAC in the trail is unlinkable.
    assert _key(database, hold.id) is None
    released_entry = _entry(database, "hold_released", hold.id)
    assert released_entry["scope_hmac"] == placed["scope"]["scope_hmac"]
    assert "scope_digest" not in released_entry
    with psycopg.connect(database, autocommit=True) as conn:
        assert hold_registry.verify_scope(conn, released) is ScopeCheck.RELEASED
        row = conn.execute(
            "SELECT to_jsonb(h)::text FROM purger.legal_holds h WHERE id = %s", (hold.id,)
        ).fetchone()
    assert row is not None and "612345678" not in row[0]
    _assert_identifies_nobody(database, hold.scope)
    _chain_ok(database)


def test_the_key_cannot_be_changed_and_a_release_destroys_it_whatever_it_says(
    database: str, policy: RetentionPolicy
) -> None:
    hold = place(database, policy, subjects={"msisdn": [MSISDN]}).hold
    with psycopg.connect(database) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "UPDATE purger.legal_holds SET scope_key = %s WHERE id = %s",
                (bytes(32), hold.id),
            )
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO purger.legal_holds (case_ref, reason, placed_by, tenant, scope_key) "
                "VALUES ('C', 'r', 'b', 'acme', %s)",
                (b"short",),
            )
        conn.rollback()
        # A release written by hand that keeps the key: the guard destroys it anyway.
        conn.execute(
            "UPDATE purger.legal_holds SET released_at = now(), released_by = 'x', "
            "release_reason = 'by hand', subject_keys = NULL, "
            "released_selectors = purger.selector_counts(subject_keys) WHERE id = %s",
            (hold.id,),
        )
        conn.commit()
    assert _key(database, hold.id) is None


def test_a_hold_placed_before_the_keys_existed_is_released_without_an_hmac(
    database: str, policy: RetentionPolicy
) -> None:
    # As a hold placed before migration 0005 is stored: no key (and no audit entry here).
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "INSERT INTO purger.legal_holds (case_ref, reason, placed_by, subject_keys) "
            "VALUES ('OLD-1', 'court order', 'alice', ARRAY['msisdn:+31687654321']) RETURNING id"
        ).fetchone()
        conn.commit()
    assert row is not None
    with psycopg.connect(database, autocommit=True) as conn:
        old = hold_registry.get(conn, int(row[0]))
        assert hold_registry.verify_scope(conn, old) is ScopeCheck.NO_KEY
    release(database, old.id)
    assert _entry(database, "hold_released", old.id)["scope_hmac"] is None
    _chain_ok(database)


def test_the_cli_refuses_case_refs_and_reasons_that_look_like_personal_data(
    settings: Settings, policy: RetentionPolicy
) -> None:
    env = settings_env(settings)
    url = settings.conninfo()
    scope = ["--by", "alice", "--tenant", "acme"]
    for flag, value, kind in (
        ("--case-ref", MSISDN, "phone number"),
        ("--case-ref", "06-1234 5678", "phone number"),
        ("--reason", "mail jan@example.nl", "e-mail address"),
        ("--reason", "from 10.1.2.3", "IP address"),
        ("--reason", "from 2001:db8::7", "IP address"),
    ):
        given = {"--case-ref": "CASE-2026-001", "--reason": "court order", flag: value}
        bad = purger_cli("hold", "place", *[a for kv in given.items() for a in kv], *scope, env=env)
        assert bad.returncode == 2, (flag, value, bad.stderr)
        assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
        assert flag in bad.stderr and kind in bad.stderr
        assert value not in bad.stderr and "612345678" not in bad.stderr
    assert audit_kinds(url, "hold_placed") == []

    placed = purger_cli(
        "hold", "place", "--case-ref", "CASE-2026-001", "--reason", "court order of 2026-03-01",
        *scope, "--json", env=env,
    )  # fmt: skip
    assert placed.returncode == 0, placed.stderr
    hold_id = str(json.loads(placed.stdout)["id"])
    shown = purger_cli("hold", "show", hold_id, "--json", env=env)
    assert json.loads(shown.stdout)["audited_scope"] == "matches"
    checked = purger_cli("hold", "verify-scope", hold_id, env=env)
    assert checked.returncode == 0 and "matches" in checked.stdout, checked.stderr

    refused = purger_cli(
        "hold", "release", hold_id, "--by", "bob", "--reason", "asked by jan@example.nl", env=env
    )
    assert refused.returncode == 2 and "--reason" in refused.stderr
    assert "jan@example.nl" not in refused.stderr
    released = purger_cli("hold", "release", hold_id, "--by", "bob", "--reason", "closed", env=env)
    assert released.returncode == 0, released.stderr
    after = purger_cli("hold", "verify-scope", hold_id, "--json", env=env)
    assert after.returncode == 1 and json.loads(after.stdout)["audited_scope"] == "released"
    _chain_ok(url)
