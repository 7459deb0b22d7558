"""Identifier normalisation: however a producer or an operator writes it, one key."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from purger.identifiers import (
    MAX_IDENTIFIER_BYTES,
    IdentifierError,
    IdentifierTooLong,
    normalise,
    subject_key,
    utf8_length,
    valid_type,
)


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("msisdn", "0612345678", "+31612345678"),
        ("msisdn", "+31 6 1234 5678", "+31612345678"),
        ("msisdn", "0031612345678", "+31612345678"),
        ("msisdn", "+32 470 12 34 56", "+32470123456"),
        ("email", "Jan.Jansen@Example.NL", "jan.jansen@example.nl"),
        ("ip", "192.168.1.10", "192.168.1.10"),
        ("ip", "2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("imsi", "204081234567890", "204081234567890"),
        ("imei", "35-693803-564380-9", "356938035643809"),
    ],
)
def test_normalise(kind: str, raw: str, expected: str) -> None:
    assert normalise(kind, raw) == expected


@pytest.mark.parametrize(
    ("kind", "raw"),
    [("msisdn", "not-a-number"), ("email", "no-at-sign"), ("ip", "999.1.1.1"), ("imsi", "12")],
)
def test_invalid_identifiers_are_refused_without_echoing_them(kind: str, raw: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normalise(kind, raw)
    assert raw not in str(caught.value)


def test_default_country_code_applies_to_national_numbers() -> None:
    assert normalise("msisdn", "0470123456", 32) == "+32470123456"


@given(st.integers(min_value=600000000, max_value=699999999))
def test_national_and_international_forms_agree(number: int) -> None:
    national = normalise("msisdn", f"0{number}")
    assert national == normalise("msisdn", f"+31{number}") == normalise("msisdn", national)


@given(st.ip_addresses())
def test_ip_normalisation_is_idempotent(address: object) -> None:
    once = normalise("ip", str(address))
    assert normalise("ip", once) == once


def test_subject_key() -> None:
    assert subject_key("msisdn", "+31612345678") == "msisdn:+31612345678"


@given(st.lists(st.integers(0, 300), min_size=3, max_size=5), st.sampled_from(["", "0", "00"]))
def test_the_ipv4_fast_path_agrees_with_the_ipaddress_module(octets: list[int], pad: str) -> None:
    # Dotted strings, valid or not, with and without leading zeros: the result (or
    # the refusal) is exactly what ipaddress gives.
    text = ".".join(pad + str(o) if i == 1 else str(o) for i, o in enumerate(octets))
    try:
        expected: str | None = ipaddress.ip_address(text).compressed
    except ValueError:
        expected = None
    try:
        got: str | None = normalise("ip", text)
    except IdentifierError:
        got = None
    assert got == expected


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        # \d matches these; an IMSI or IMEI is ASCII digits.
        ("imsi", "\u0662\u0660\u0664\u0660\u0668\u0661\u0662\u0663\u0664\u0665"),
        ("imei", "\u0969\u096b\u096c\u096f\u0969\u096e\u0966\u0969\u096b\u096c\u096a\u0969\u096e"),
        ("imsi", "2040812345\x00"),
        ("cookie_id", "ck\x00"),
        ("cookie_id", "ck\ud800"),
        ("email", "a@b\udfff.nl"),
    ],
)
def test_non_ascii_digits_nul_and_lone_surrogates_are_refused(kind: str, raw: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normalise(kind, raw)
    assert raw not in str(caught.value)


def test_a_type_name_is_matched_whole() -> None:
    assert valid_type("msisdn")
    assert valid_type("x" * 32)
    for name in ("msisdn\n", "x" * 33, "MSISDN", "1abc", "", "m\u0131sisdn"):
        assert not valid_type(name), name


@pytest.mark.parametrize(
    ("raw", "fits"),
    [
        ("c" * MAX_IDENTIFIER_BYTES, True),
        ("c" * (MAX_IDENTIFIER_BYTES + 1), False),
        ("\U0001f600" * (MAX_IDENTIFIER_BYTES // 4), True),  # 64 characters, 256 bytes
        ("\U0001f600" * (MAX_IDENTIFIER_BYTES // 4) + "c", False),
        ("\u20ac" * 86, False),  # 86 characters, 258 bytes
        # Surrounding spaces count as written: the bound protects the normaliser too.
        (" " * 200 + "c" * 100, False),
    ],
)
def test_identifiers_are_bounded_in_utf8_bytes(raw: str, fits: bool) -> None:
    if fits:
        assert utf8_length(normalise("cookie_id", raw)) <= MAX_IDENTIFIER_BYTES
    else:
        with pytest.raises(IdentifierTooLong):
            normalise("cookie_id", raw)


def test_the_bound_holds_after_lower_casing_too() -> None:
    raw = "\u0130" * 120 + "@example.nl"  # 251 bytes; each I-dot lower-cases to 3 bytes
    assert utf8_length(raw) <= MAX_IDENTIFIER_BYTES
    with pytest.raises(IdentifierTooLong):
        normalise("email", raw)


@given(st.text(max_size=80))
def test_utf8_length_is_the_encoded_length(text: str) -> None:
    assert utf8_length(text) == len(text.encode("utf-8", "surrogatepass"))
