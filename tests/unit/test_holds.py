"""Legal-hold scopes: validation, normalisation as on ingest, coverage, index prefilters, CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from purger import cli
from purger.hold_scope import (
    HoldScope,
    InvalidHold,
    build_scope,
    free_text,
    personal_data_in,
    prefilter,
)
from purger.policy import RetentionPolicy, load_policy
from purger.records import Record
from purger.subject_export import subject_keys_for
from tests.holds_oracle import covers

REPO = Path(__file__).parents[2]
AT = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy() -> RetentionPolicy:
    """The shipped policy (categories cdr, call_recordings, interception, cookie_stats)."""
    return load_policy(REPO / "config" / "retention.yaml")


@pytest.mark.parametrize(
    ("kind", "written", "key"),
    [
        ("msisdn", "0612345678", "msisdn:+31612345678"),
        ("msisdn", "+31 6 1234 5678", "msisdn:+31612345678"),
        ("msisdn", "0031612345678", "msisdn:+31612345678"),
        ("email", " Jan.Jansen@Example.NL ", "email:jan.jansen@example.nl"),
        ("ip", "2001:DB8:0:0::1", "ip:2001:db8::1"),
        ("imei", "35-209900-176148-1", "imei:352099001761481"),
        ("imsi", "204 04 1234567890", "imsi:204041234567890"),
        ("cookie_id", "  abc-DEF  ", "cookie_id:abc-DEF"),
    ],
)
def test_selectors_are_normalised_as_ingest_normalises(
    policy: RetentionPolicy, kind: str, written: str, key: str
) -> None:
    scope = build_scope(policy, subjects={kind: [written]})
    assert scope.subject_keys == (key,)
    assert subject_keys_for(kind, written) == [key]


def test_the_same_keys_as_an_ingested_record(policy: RetentionPolicy) -> None:
    record = Record("r", AT, "t", {"msisdn": ["+31612345678"], "email": ["jan@example.nl"]}, {})
    scope = build_scope(policy, subjects={"msisdn": ["06-12345678"], "email": ["JAN@EXAMPLE.NL"]})
    assert scope.subject_keys is not None
    assert set(scope.subject_keys) == set(record.subject_keys)


def test_a_written_twice_identifier_is_one_key(policy: RetentionPolicy) -> None:
    scope = build_scope(policy, subjects={"msisdn": ["0612345678", "+31612345678"]})
    assert scope.subject_keys == ("msisdn:+31612345678",)


def test_the_default_country_code_is_used_for_national_numbers(policy: RetentionPolicy) -> None:
    scope = build_scope(policy, subjects={"msisdn": ["0612345678"]}, default_country_code=32)
    assert scope.subject_keys == ("msisdn:+32612345678",)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "--all-records"),
        ({"tenant": "   "}, "--all-records"),
        ({"categories": ["cdr"]}, "--all-records"),
        ({"all_records": True, "tenant": "acme"}, "cannot be combined"),
        ({"all_records": True, "subjects": {"email": ["a@b.nl"]}}, "cannot be combined"),
        ({"tenant": "acme", "categories": ["nope"]}, "unknown category 'nope'"),
        ({"subjects": {"iban": ["NL00"]}}, "unknown subject selector 'iban'"),
        ({"tenant": "acme", "occurred_from": AT, "occurred_to": AT - timedelta(1)}, "after"),
        ({"tenant": "acme", "occurred_from": AT.replace(tzinfo=None)}, "UTC offset"),
    ],
)
def test_invalid_scopes_are_refused(
    policy: RetentionPolicy, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidHold, match=message):
        build_scope(policy, **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "value"),
    [("msisdn", "12"), ("email", "not-an-address"), ("ip", "300.1.1.1"), ("imei", "12ab")],
)
def test_an_invalid_identifier_is_refused_without_echoing_it(
    policy: RetentionPolicy, kind: str, value: str
) -> None:
    with pytest.raises(InvalidHold) as caught:
        build_scope(policy, subjects={kind: [value]})
    assert kind in str(caught.value)
    assert value not in str(caught.value)


def test_all_records_is_allowed_when_explicit(policy: RetentionPolicy) -> None:
    scope = build_scope(policy, all_records=True, categories=["cdr"], occurred_to=AT)
    assert (scope.all_records, scope.categories, scope.subject_keys) == (True, ("cdr",), None)


def test_coverage_needs_every_part_and_includes_both_window_ends() -> None:
    scope = HoldScope(
        categories=("cdr",),
        subject_keys=("msisdn:+31612345678", "email:a@b.nl"),
        tenant="acme",
        occurred_from=AT,
        occurred_to=AT + timedelta(days=1),
    )
    keys = ["email:a@b.nl", "ip:1.2.3.4"]
    assert covers(scope, "cdr", "acme", AT, keys)
    assert covers(scope, "cdr", "acme", AT + timedelta(days=1), keys)
    assert not covers(scope, "cdr", "acme", AT - timedelta(microseconds=1), keys)
    assert not covers(scope, "cdr", "acme", AT + timedelta(days=1, microseconds=1), keys)
    assert not covers(scope, "cookie_stats", "acme", AT, keys)
    assert not covers(scope, "cdr", "other", AT, keys)
    assert not covers(scope, "cdr", "acme", AT, ["email:c@d.nl"])
    assert covers(HoldScope(all_records=True), "interception", "x", AT, [])


def test_the_audit_view_of_a_scope_names_no_identifier(policy: RetentionPolicy) -> None:
    scope = build_scope(policy, subjects={"msisdn": ["0612345678"], "email": ["a@b.nl"]})
    key = bytes(32)
    audited = repr(scope.audit_dict(key))
    assert "612345678" not in audited and "a@b.nl" not in audited
    assert scope.audit_dict(key)["selectors"] == {"email": 1, "msisdn": 1}
    other = build_scope(policy, subjects={"msisdn": ["0612345679"], "email": ["a@b.nl"]})
    assert scope.keyed_digest(key) != other.keyed_digest(key)


def test_prefilters_use_the_indexes_unless_a_hold_covers_all_records() -> None:
    assert prefilter([]) is None
    by_key = HoldScope(subject_keys=("msisdn:+31612345678",))
    by_other_key = HoldScope(subject_keys=("email:a@b.nl",), tenant="acme")
    by_tenant = HoldScope(tenant="acme", occurred_from=AT)
    everything = HoldScope(all_records=True, occurred_to=AT)

    pf = prefilter([by_key, by_other_key, by_tenant])
    assert pf is not None
    condition, params = pf
    text = repr(condition)
    assert "subject_keys &&" in text and "r.tenant =" in text and "TRUE" not in text
    # One GIN look-up for every hold's keys; a tenant arm only for holds without keys.
    assert params["pf_keys"] == ["email:a@b.nl", "msisdn:+31612345678"]
    assert params["pf_tenant_0"] == "acme" and params["pf_from_0"] == AT
    assert "pf_tenant_1" not in params

    condition, params = prefilter([by_key, everything])  # type: ignore[misc]
    assert "TRUE" in repr(condition) and params == {}


_kinds = st.sampled_from(["msisdn:+3161", "msisdn:+3162", "email:a@b.nl", "ip:1.2.3.4"])
_tenants = st.sampled_from(["a", "b"])
_scopes = st.builds(
    HoldScope,
    categories=st.none() | st.just(("cdr",)),
    subject_keys=st.none() | st.lists(_kinds, min_size=1, unique=True).map(tuple),
    tenant=st.none() | _tenants,
    occurred_from=st.none() | st.just(AT),
    occurred_to=st.none() | st.just(AT + timedelta(days=1)),
)


@given(
    scopes=st.lists(_scopes, min_size=1, max_size=4),
    tenant=_tenants,
    days=st.integers(-1, 2),
    keys=st.lists(_kinds, max_size=2),
)
def test_a_prefilter_admits_every_covered_record(
    scopes: list[HoldScope], tenant: str, days: int, keys: list[str]
) -> None:
    # The prefilter only narrows where to look; it must never hide a covered row.
    occurred = AT + timedelta(days=days)
    if not any(covers(s, "cdr", tenant, occurred, keys) for s in scopes):
        return
    pf = prefilter(scopes)
    assert pf is not None
    condition, params = pf
    if "TRUE" in repr(condition):
        return
    by_keys = bool(set(params.get("pf_keys", [])) & set(keys))
    by_tenant = any(
        params[f"pf_tenant_{i}"] == tenant
        and (params[f"pf_from_{i}"] is None or occurred >= params[f"pf_from_{i}"])
        and (params[f"pf_to_{i}"] is None or occurred <= params[f"pf_to_{i}"])
        for i in range(len(scopes))
        if f"pf_tenant_{i}" in params
    )
    assert by_keys or by_tenant


# -- the command line ----------------------------------------------------------------------
def test_the_hold_flags_parse() -> None:
    args = cli.build_parser().parse_args(
        [
            "hold", "place", "--case-ref", "C-1", "--reason", "r", "--by", "alice",
            "--category", "cdr", "--category", "interception", "--msisdn", "0612345678",
            "--msisdn", "0612345679", "--imsi", "204041234567890", "--imei", "352099001761481",
            "--ip", "10.0.0.1", "--email", "a@b.nl", "--cookie-id", "c1", "--tenant", "acme",
            "--occurred-from", "2026-01-01T00:00:00Z", "--occurred-to", "2026-02-01T00:00:00Z",
            "--json",
        ]
    )  # fmt: skip
    assert args.category == ["cdr", "interception"]
    assert args.msisdn == ["0612345678", "0612345679"] and args.cookie_id == ["c1"]
    assert (args.case_ref, args.by, args.tenant, args.json) == ("C-1", "alice", "acme", True)
    args = cli.build_parser().parse_args(["hold", "release", "7", "--by", "b", "--reason", "r"])
    assert args.id == 7
    assert cli.build_parser().parse_args(["hold", "list", "--active", "--json"]).active
    assert cli.build_parser().parse_args(["hold", "show", "7", "--json"]).id == 7
    args = cli.build_parser().parse_args(["subject", "export", "--email", "a@b.nl", "--json"])
    assert (args.email, args.format) == ("a@b.nl", "json")


@pytest.mark.parametrize(
    "argv",
    [
        ["subject", "export"],
        ["subject", "export", "--msisdn", "1", "--email", "a@b.nl"],
        ["subject", "export", "--email", "a@b.nl", "--format", "xml"],
        ["hold", "release", "seven", "--by", "b", "--reason", "r"],
        ["hold", "place", "--reason", "r", "--by", "b", "--tenant", "t"],
    ],
)
def test_usage_mistakes_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(argv)
    assert exited.value.code == cli.EXIT_USAGE
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "hidden"),
    [
        ([], None),
        (["--msisdn", "0612-not-a-number"], "0612-not-a-number"),
        (["--tenant", "acme", "--occurred-to", "last tuesday"], None),
    ],
)
def test_an_invalid_hold_is_one_line_and_exit_2_before_any_connection(
    extra: list[str],
    hidden: str | None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(REPO)
    # Nothing listens here: the request must be refused before connecting.
    monkeypatch.setenv("PURGER_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    argv = ["hold", "place", "--case-ref", "C", "--reason", "r", "--by", "b", *extra]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == cli.EXIT_USAGE
    assert err.startswith("purger: error: ") and err.count("\n") == 1
    if hidden:
        assert hidden not in err


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("+31612345678", "a phone number"),
        ("06-1234 5678", "a phone number"),
        ("call +31 (0)20 123 4567", "a phone number"),
        ("case 1234567", "a phone number"),
        ("mail jan@example.nl", "an e-mail address"),
        ("from 10.1.2.3", "an IP address"),
        ("seen at 2001:db8::7.", "an IP address"),
        ("CASE-2026-001", None),
        ("court order of 2026-03-01 10:30", None),
        ("ECLI:NL:HR:2026:123", None),
        ("C/13/712345 / HA ZA 22-123", None),
        ("version 1.2.3, meeting 12:30:45", None),
    ],
)
def test_free_text_that_looks_like_personal_data_is_refused_without_echo(
    text: str, kind: str | None
) -> None:
    assert personal_data_in(text) == kind
    if kind is None:
        assert free_text(f" {text} ", "reason (--reason)") == text
        return
    with pytest.raises(InvalidHold) as refused:
        free_text(text, "reason (--reason)")
    assert "--reason" in str(refused.value) and kind in str(refused.value)
    assert text not in str(refused.value)
