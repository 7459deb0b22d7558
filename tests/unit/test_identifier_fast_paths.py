"""The identifier fast paths give exactly what the full parses give, for any input.

``reference_normalise_msisdn`` and ``reference_normalise_ip`` are the normalisers as
they were before their fast paths: the differential tests hold the new ones to them,
result and error message alike.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable

import phonenumbers
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from phonenumbers.phonemetadata import PhoneMetadata

from purger.identifiers import (
    _CANONICAL_IPV4,
    _CODE_OF_START,
    IdentifierError,
    _canonical_ipv6,
    _e164_of_plain_digits,
    _numbering,
    _numbering_for_code,
    _split_country_code,
    _strip_national_prefix,
    _test_number_length,
    _without_national_prefix,
    normalise_ip,
    normalise_msisdn,
)


def reference_normalise_msisdn(raw: str, default_country_code: int = 31) -> str:
    """normalise_msisdn before the fast path (uncached): the full parse for every input."""
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    region = phonenumbers.region_code_for_country_code(default_country_code)
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        raise IdentifierError("msisdn is not a phone number") from None
    if not phonenumbers.is_possible_number(number):
        raise IdentifierError("msisdn is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _outcome(function: Callable[[str, int], str], raw: str, country: int) -> tuple[str, str]:
    try:
        return ("ok", function(raw, country))
    except IdentifierError as exc:
        return (type(exc).__name__, str(exc))


# __wrapped__: the function itself, not its cache.
_NEW = normalise_msisdn.__wrapped__


def _check(raw: str, country: int) -> None:
    expected = _outcome(reference_normalise_msisdn, raw, country)
    assert _outcome(_NEW, raw, country) == expected, (raw, country)
    # The fast path answers only for what the full parse accepts, and the same way.
    text = raw.strip()
    fast = _e164_of_plain_digits("+" + text[2:] if text.startswith("00") else text, country)
    assert fast is None or expected == ("ok", fast), (raw, country, fast)


# Default country codes: ours, shared codes (NANPA), regions with an international
# prefix national numbers could start with (US 011, AU 0011, JP 010), Italian leading
# zeros, national prefix transform rules (AR, MX, BR), a non-geographic code and
# codes no region has.
COUNTRIES = [31, 32, 1, 7, 44, 49, 39, 54, 52, 55, 61, 81, 86, 225, 262, 379, 800, 999, 0]
REGIONS = ["NL", "BE", "DE", "GB", "US", "CA", "IT", "AR", "MX", "BR", "AU", "JP", "IN"]
REGIONS += ["RU", "KZ", "CN", "CI", "SM", "VA", "FR", "RE", "YT", "FI", "AX", "SE", "HU"]

_UNICODE_DIGITS = "\u0660\u0661\u0669\u06f0\u06f5\u0966\u0967\uff10\uff11\uff19\u1040"
_SEPARATORS = " -.()/\t\u00a0\u2010\u3000~\u2053"
_CHARACTERS = st.sampled_from(
    list("0123456789" * 4)
    + list("+#*;,xXeEa=:")
    + list(_UNICODE_DIGITS)
    + list(_SEPARATORS)
    + ["\uff0b", "\n", "\x1c", "\u200b"]
)
_PREFIXES = st.sampled_from(
    [
        *["", "", "+", "+", "00", "00", "0", "0", "+0", "++", "000", "011", "0011", "010"],
        *["+00", "8", "810", "tel:", "tel:+", " ", "\uff0b", "00 ", "+ ", "0 0", "Tel: ", "(0)"],
    ]
)
_SUFFIXES = st.sampled_from(
    [
        *["", "", "", "x12", " ext 5", " ext. 123", "#", " 12#", ";ext=7", ";isub=12", ";5"],
        *[";phone-context=+31", ";phone-context=example.nl", ",,12", " ", "\n", "-", "/x2"],
        *[" x", "abc", "\u0661"],
    ]
)


@st.composite
def adversarial(draw: st.DrawFn) -> str:
    """Digit runs of every length with prefixes, separators, odd digits and extensions."""
    digits = draw(st.text(alphabet="0123456789", min_size=0, max_size=26))
    if digits and draw(st.booleans()):
        # Separators or stray characters inside the digits.
        at = draw(st.integers(0, len(digits)))
        digits = digits[:at] + draw(st.text(_CHARACTERS, max_size=3)) + digits[at:]
    return draw(_PREFIXES) + digits + draw(_SUFFIXES)


def _lengths(region: str) -> list[int]:
    metadata = PhoneMetadata.metadata_for_region(region)
    assert metadata is not None
    return [n for n in metadata.general_desc.possible_length if n > 0]


@st.composite
def plausible(draw: st.DrawFn) -> str:
    """Numbers of several countries, of their possible lengths (and one off), in every shape."""
    region = draw(st.sampled_from(REGIONS))
    code = phonenumbers.country_code_for_region(region)
    example_number = phonenumbers.example_number_for_type(
        region, draw(st.sampled_from([phonenumbers.PhoneNumberType.MOBILE] * 2 + [0, 1, 3, 4]))
    )
    if example_number is not None and draw(st.booleans()):
        national = phonenumbers.national_significant_number(example_number)
        if draw(st.booleans()):
            # The example's leading digits, the rest random.
            keep = draw(st.integers(0, len(national)))
            tail = draw(st.text("0123456789", min_size=len(national), max_size=len(national)))
            national = national[:keep] + tail[keep:]
    else:
        length = draw(st.sampled_from(_lengths(region))) + draw(st.sampled_from([0, 0, 0, -1, 1]))
        national = draw(st.text("0123456789", min_size=max(length, 0), max_size=max(length, 0)))
    shape = draw(st.sampled_from(["+cc", "00cc", "0", "", "cc", "+cc0", "8"]))
    prefix = {"+cc": f"+{code}", "00cc": f"00{code}", "cc": str(code), "+cc0": f"+{code}0"}
    return prefix.get(shape, shape) + national


_COUNTRY = st.sampled_from(COUNTRIES)


@settings(max_examples=1500, deadline=None)
@given(raw=adversarial(), country=_COUNTRY)
@example(raw="+31612345678", country=31)
@example(raw="0612345678", country=31)
@example(raw="0031612345678", country=31)
@example(raw="+310612345678", country=31)
@example(raw="31612345678", country=31)
@example(raw="01161234567890", country=1)
@example(raw="+390612345678", country=39)
@example(raw="0612345678", country=800)
@example(raw="+8001234567", country=31)
@example(raw="+12", country=31)
@example(raw="+123", country=31)
@example(raw="+3100", country=31)
def test_adversarial_input_gives_what_the_full_parse_gives(raw: str, country: int) -> None:
    _check(raw, country)


@settings(max_examples=1500, deadline=None)
@given(raw=plausible(), country=_COUNTRY)
def test_numbers_of_many_countries_give_what_the_full_parse_gives(raw: str, country: int) -> None:
    _check(raw, country)


@settings(max_examples=300, deadline=None)
@given(raw=st.text(max_size=30), country=_COUNTRY)
def test_any_text_gives_what_the_full_parse_gives(raw: str, country: int) -> None:
    _check(raw, country)


@pytest.mark.parametrize(
    ("raw", "country"),
    [
        ("+31612345678", 31),
        ("0031612345678", 31),
        ("0612345678", 31),
        ("  +31612345678\n", 31),
        ("+32470123456", 31),
        ("0470123456", 32),
        ("+442071838750", 31),
        ("+390612345678", 31),
        ("+4915123456789", 31),
        ("+12025550123", 31),
    ],
)
def test_the_common_shapes_take_the_fast_path(raw: str, country: int) -> None:
    text = raw.strip()
    text = "+" + text[2:] if text.startswith("00") else text
    fast = _e164_of_plain_digits(text, country)
    assert fast is not None
    assert fast == reference_normalise_msisdn(raw, country)


def test_the_length_tables_give_what_the_library_gives() -> None:
    assert _test_number_length is not None
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    checked = 0
    for code in codes:
        numbering = _numbering_for_code(code)
        if numbering is None:
            continue
        for length in range(len(numbering.lengths) + 3):
            # Different digits of one length: the library must read only the length.
            for digit in "0259":
                national = digit * length
                expected = _test_number_length(national, numbering.metadata)
                assert numbering.length_result(national) == expected, (code, length)
                checked += 1
    assert checked > 200 * 20


@settings(max_examples=500, deadline=None)
@given(digits=st.from_regex(r"[1-9][0-9]{2,19}", fullmatch=True))
def test_the_country_code_table_gives_what_the_split_gives(digits: str) -> None:
    code, length = _CODE_OF_START[digits[:3]]
    assert (code, digits[length:]) == _split_country_code(digits)


# Every region whose numbers can carry a national prefix, with its own metadata.
_WITH_PREFIX = [
    numbering
    for region in sorted(phonenumbers.SUPPORTED_REGIONS)
    if (numbering := _numbering(PhoneMetadata.metadata_for_region(region))) is not None
    and numbering.national_prefix is not None
]


@settings(max_examples=3000, deadline=None)
@given(data=st.data())
def test_the_national_prefix_step_gives_what_the_library_gives(data: st.DataObject) -> None:
    numbering = data.draw(st.sampled_from(_WITH_PREFIX))
    metadata = numbering.metadata
    prefix = numbering.national_prefix
    assert prefix is not None and _strip_national_prefix is not None
    general = st.from_regex(numbering.general, fullmatch=True) if numbering.general else st.just("")
    # Numbers of the region's own pattern, with and without a prefix before them (the
    # case where stripping would leave a number the pattern refuses), and any digits.
    number = data.draw(
        st.builds(
            lambda p, n: p + n,
            st.from_regex(prefix, fullmatch=True) | st.just(""),
            general | st.from_regex(r"[0-9]{0,20}", fullmatch=True),
        )
    )
    matched = prefix.match(number)
    if matched is None:
        return
    expected = _strip_national_prefix(number, metadata)[1]
    assert _without_national_prefix(numbering, number, matched) == expected, (
        metadata.id,
        number,
    )


def reference_normalise_ip(raw: str) -> str:
    """normalise_ip before IPv6 addresses went straight to IPv6Address."""
    text = raw.strip()
    if _CANONICAL_IPV4.fullmatch(text):
        return text
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        raise IdentifierError("ip is not an IP address") from None


def test_canonical_ipv6_is_recognised_exactly() -> None:
    # Every arrangement of zero, short and long hextets: the zero runs decide the form.
    checked = 0
    for hextets in itertools.product(["0", "1", "ab0"], repeat=8):
        address = ipaddress.IPv6Address(":".join(hextets))
        texts = {address.compressed, address.exploded, ":".join(hextets)}
        # "::" for any run of zero hextets, whole or in part, not only the longest.
        for start, end in itertools.combinations(range(9), 2):
            if all(h == "0" for h in hextets[start:end]):
                texts.add(":".join(hextets[:start]) + "::" + ":".join(hextets[end:]))
        for text in texts:
            canonical = ipaddress.IPv6Address(text).compressed == text
            assert _canonical_ipv6(text) == canonical, text
            checked += 1
    assert checked > 3**8 * 4
    for text in ("::ffff:1.2.3.4", "fe80::1%eth0", "A::1", "01::1", ":::", "1:::2", "::1::"):
        assert not _canonical_ipv6(text), text


def _ip_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address, form: str) -> str:
    if form == "exploded":
        return address.exploded
    if form == "upper":
        return address.compressed.upper()
    if form == "scoped" and address.version == 6:
        return f"{address.compressed}%eth0"
    if form == "mapped":
        return f"::ffff:{ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)}"
    return address.compressed


_IP_ALPHABET = st.sampled_from(list("0123456789abcdefABCDEF:::...%/ g\u0661\uff10"))


@settings(max_examples=1000, deadline=None)
@given(
    raw=st.builds(
        _ip_text,
        st.ip_addresses(),
        st.sampled_from(["compressed", "exploded", "upper", "scoped", "mapped"]),
    )
    | st.text(_IP_ALPHABET, max_size=45),
    pad=st.sampled_from(["", " ", "\n", "\u3000"]),
)
@example(raw="1.2.3.4:80", pad="")
@example(raw="::1.2.3.4", pad="")
@example(raw="1::2::3", pad="")
def test_ip_addresses_give_what_ip_address_gives(raw: str, pad: str) -> None:
    text = pad + raw + pad
    assert _outcome(lambda r, _: normalise_ip(r), text, 0) == _outcome(
        lambda r, _: reference_normalise_ip(r), text, 0
    )
