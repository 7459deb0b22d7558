"""Identifier normalisation: however a producer or an operator writes it, one key."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from purger.identifiers import IdentifierError, normalise, subject_key


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
