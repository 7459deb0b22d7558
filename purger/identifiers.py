"""Normalisation of subject identifiers, shared by ingestion, holds and look-ups.

A producer and an operator may write the same identifier differently
(``0612345678`` and ``+31612345678``, ``J.Jansen@Example.NL``); both sides pass
through the same functions so that they match.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers import phonenumberutil
from phonenumbers.phonemetadata import PhoneMetadata
from phonenumbers.phonenumberutil import (
    COUNTRY_CODE_TO_REGION_CODE,
    SUPPORTED_REGIONS,
    ValidationResult,
)

KNOWN_TYPES = ("msisdn", "imsi", "imei", "ip", "email", "cookie_id")
# fullmatch and [0-9], never $ and \d: "$" also matches before a trailing newline,
# and \d matches every Unicode digit (Arabic-Indic, Devanagari, ...).
_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_SEPARATORS = re.compile(r"[\s\-.()/]")
# UTF-8 bytes of an identifier, as written and as normalised: a subject key
# "kind:value" (at most 32 + 1 + 256 bytes) is a GIN index entry, which PostgreSQL
# limits to about 2,700 bytes.
MAX_IDENTIFIER_BYTES = 256
# A code point takes at most 4 bytes in UTF-8: this many characters always fit.
_SURELY_SHORT = MAX_IDENTIFIER_BYTES // 4
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}", re.ASCII)
# The shape of a compressed IPv6 address: lower-case hextets without leading zeros,
# eight of them or fewer around one "::".
_HEXTET = r"(?:0|[1-9a-f][0-9a-f]{0,3})"
_HEXTETS = rf"(?:{_HEXTET}(?::{_HEXTET})*)?"
_IPV6_SHAPE = re.compile(rf"{_HEXTETS}::{_HEXTETS}|{_HEXTET}(?::{_HEXTET}){{7}}", re.ASCII)


class IdentifierError(ValueError):
    """An identifier could not be normalised; the message names the type, never the value."""


class IdentifierTooLong(IdentifierError):
    """An identifier is longer than MAX_IDENTIFIER_BYTES in UTF-8."""


def utf8_length(text: str) -> int:
    """The length of ``text`` in UTF-8 bytes (a lone surrogate counts 3, never raises)."""
    # isascii() reads a flag of the string object: no encoding for the common case.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@lru_cache(maxsize=65536)
def normalise_msisdn(raw: str, default_country_code: int = 31) -> str:
    """A phone number in E.164 (``+31612345678``); national numbers get the default country."""
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    fast = _e164_of_plain_digits(text, default_country_code)
    if fast is not None:
        return fast
    return _parse_msisdn(text, default_country_code)


def _parse_msisdn(text: str, default_country_code: int) -> str:
    region = phonenumbers.region_code_for_country_code(default_country_code)
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        raise IdentifierError("msisdn is not a phone number") from None
    if not phonenumbers.is_possible_number(number):
        raise IdentifierError("msisdn is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# The shapes producers write most: "+" and a country code, or a national number, in
# ASCII digits only. Anything else (separators, letters, extensions, "tel:", other
# digits) is parsed by libphonenumber. Bounded well past E.164's 15 digits: longer
# inputs are never possible numbers, and the library names their error.
_INTERNATIONAL_DIGITS = re.compile(r"\+([1-9][0-9]{2,19})", re.ASCII)
_NATIONAL_DIGITS = re.compile(r"[0-9]{2,20}", re.ASCII)
# National numbers up to this length are looked up in a table (_Numbering.lengths):
# past the 17 digits of a possible number and the 20 of _NATIONAL_DIGITS.
_TABLED_LENGTHS = 22
# Results of _test_number_length for which phonenumbers.parse keeps the national prefix.
_KEEP_PREFIX = frozenset(
    (
        ValidationResult.TOO_SHORT,
        ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
        ValidationResult.INVALID_LENGTH,
    )
)
_POSSIBLE = frozenset((ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY))


# Two of libphonenumber's internal steps, looked up rather than imported: a release
# without them must not stop the purger, only send every number to the full parse
# (tests/unit/test_identifier_fast_paths.py fails then, so that it is noticed).
_strip_national_prefix: Callable[..., tuple[str, str, str]] | None = getattr(
    phonenumberutil, "_maybe_strip_national_prefix_carrier_code", None
)
_test_number_length: Callable[..., int] | None = getattr(
    phonenumberutil, "_test_number_length", None
)


def _e164_of_plain_digits(text: str, default_country_code: int) -> str | None:
    """``normalise_msisdn``'s result for the common shapes, without a full parse; else None.

    The same steps as phonenumbers.parse, is_possible_number and format_number take
    for a string of ASCII digits (after an optional "+"), with the same metadata and
    the library's own functions for what is region-specific (national prefixes, the
    possible lengths). Only a number that would be accepted is returned: whatever the
    library would refuse, or might read another way (an international dialling prefix,
    a national number starting with the country code), returns None and is parsed.
    tests/unit/test_identifier_fast_paths.py holds it to the full parse.
    """
    if _strip_national_prefix is None or _test_number_length is None:
        return None
    if text.startswith("+"):
        match = _INTERNATIONAL_DIGITS.fullmatch(text)
        if match is None:
            return None
        digits = match.group(1)
        country_code, length = _CODE_OF_START[digits[:3]]
        national = digits[length:]
        numbering = _numbering_for_code(country_code) if country_code else None
    else:
        if _NATIONAL_DIGITS.fullmatch(text) is None:
            return None
        numbering = _home(default_country_code)
        if numbering is None:
            return None
        country_code, national = numbering.country_code, text
        idd = numbering.international_prefix
        if (idd is not None and idd.match(text)) or text.startswith(str(country_code)):
            return None
    if numbering is None or len(national) < 2:
        return None
    prefix = numbering.national_prefix
    # The library strips nothing unless this matches: most numbers skip the call.
    matched = prefix.match(national) if prefix is not None else None
    if matched is not None:
        stripped = _without_national_prefix(numbering, national, matched)
        if numbering.length_result(stripped) not in _KEEP_PREFIX:
            national = stripped
    # The national significant number the library would format: all ASCII digits (its
    # leading zeros kept), at most 17 of them, of a possible length for the country.
    if not (2 <= len(national) <= 17 and national.isascii() and national.isdigit()):
        return None
    possible = _numbering_for_code(country_code)
    if possible is None or possible.length_result(national) not in _POSSIBLE:
        return None
    return f"+{country_code}{national}"


def _without_national_prefix(numbering: _Numbering, national: str, matched: re.Match[str]) -> str:
    """What ``_maybe_strip_national_prefix_carrier_code`` leaves of ``national``.

    Its steps, with the patterns compiled once, for a region without a transform
    rule (most regions): the prefix goes unless the number fits the region's
    pattern with it and not without it. A transform rule is left to the library.
    """
    if numbering.transform or _strip_national_prefix is None:
        assert _strip_national_prefix is not None
        return _strip_national_prefix(national, numbering.metadata)[1]
    stripped = national[matched.end() :]
    general = numbering.general
    if general is not None and general.fullmatch(national) and not general.fullmatch(stripped):
        return national
    return stripped


def _split_country_code(digits: str) -> tuple[int, str]:
    # phonenumbers' _extract_country_code: the shortest known prefix of 1 to 3 digits.
    for length in (1, 2, 3):
        code = int(digits[:length])
        if code in COUNTRY_CODE_TO_REGION_CODE:
            return code, digits[length:]
    return 0, digits


# _split_country_code of every 3-digit start (its only input), as (code, its length).
_CODE_OF_START = {
    start: (code, len(start) - len(rest))
    for start in map(str, range(100, 1000))
    for code, rest in [_split_country_code(start)]
}


@dataclass(frozen=True, slots=True)
class _Numbering:
    """A region's metadata as parse reads it, its two prefix patterns compiled once."""

    metadata: PhoneMetadata
    country_code: int
    # national_prefix_for_parsing; None when empty, as the library reads it.
    national_prefix: re.Pattern[str] | None
    international_prefix: re.Pattern[str] | None
    # The region's national number pattern (None when empty) and whether it has a
    # national prefix transform rule, as _maybe_strip_national_prefix_carrier_code reads them.
    general: re.Pattern[str] | None
    transform: bool
    # _test_number_length of a national number, by its length: the library reads
    # nothing of the number but its length (for the type it is called with here).
    lengths: tuple[int, ...]

    def length_result(self, national: str) -> int:
        """``_test_number_length(national, self.metadata)``, looked up."""
        if len(national) < len(self.lengths):
            return self.lengths[len(national)]
        assert _test_number_length is not None
        return _test_number_length(national, self.metadata)


def _numbering(metadata: PhoneMetadata | None) -> _Numbering | None:
    if metadata is None or metadata.country_code is None:
        return None
    national = metadata.national_prefix_for_parsing
    international = metadata.international_prefix
    test = _test_number_length
    general = metadata.general_desc.national_number_pattern if metadata.general_desc else None
    return _Numbering(
        metadata,
        metadata.country_code,
        re.compile(national) if national else None,
        re.compile(international) if international is not None else None,
        re.compile(general) if general else None,
        bool(metadata.national_prefix_transform_rule),
        tuple(test("0" * n, metadata) for n in range(_TABLED_LENGTHS)) if test else (),
    )


# Keyed by the known country codes only (about 250).
@lru_cache(maxsize=512)
def _numbering_for_code(country_code: int) -> _Numbering | None:
    # What parse and is_possible_number look up for a country code (the main region's).
    region = phonenumbers.region_code_for_country_code(country_code)
    return _numbering(PhoneMetadata.metadata_for_region_or_calling_code(country_code, region))


@lru_cache(maxsize=64)
def _home(default_country_code: int) -> _Numbering | None:
    """The region of national numbers, as parse reads it."""
    region = phonenumbers.region_code_for_country_code(default_country_code)
    if region not in SUPPORTED_REGIONS:
        # parse refuses a national number without a region (a non-geographic code too).
        return None
    return _numbering(PhoneMetadata.metadata_for_region(region))


def normalise_email(raw: str) -> str:
    """An e-mail address, trimmed and lower-cased."""
    text = raw.strip().lower()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or " " in text:
        raise IdentifierError("email is not an e-mail address")
    return text


def normalise_ip(raw: str) -> str:
    """An IPv4 or IPv6 address in canonical (compressed) form."""
    text = raw.strip()
    # Most addresses arrive as canonical dotted quads; recognising them is several
    # times cheaper than building an ip_address, and gives the same string.
    if _CANONICAL_IPV4.fullmatch(text):
        return text
    if _canonical_ipv6(text):
        return text
    try:
        if ":" in text:
            # No IPv4 address has a colon: ip_address would try IPv4 first, and fail.
            return ipaddress.IPv6Address(text).compressed
        return ipaddress.ip_address(text).compressed
    except ValueError:
        raise IdentifierError("ip is not an IP address") from None


def _canonical_ipv6(text: str) -> bool:
    """True when ``text`` is an IPv6 address written as ``IPv6Address.compressed`` writes it.

    RFC 5952's form: lower-case hextets without leading zeros, the longest run of two
    or more zero hextets (the first of equal runs) written as "::". Building the
    address and writing it again costs about 7 us; this reads the text once.
    """
    if len(text) > 39 or _IPV6_SHAPE.fullmatch(text) is None:
        return False
    head, double, tail = text.partition("::")
    if not double:
        return _longest_zero_run(head.split(":")) < 2
    left = head.split(":") if head else []
    right = tail.split(":") if tail else []
    gap = 8 - len(left) - len(right)
    # The run "::" stands for: two or more zero hextets, no zero hextet next to it
    # (it would belong to the run), no longer run beside it, no equal one before it.
    return (
        gap >= 2
        and (not left or left[-1] != "0")
        and (not right or right[0] != "0")
        and _longest_zero_run(left) < gap
        and _longest_zero_run(right) <= gap
    )


def _longest_zero_run(hextets: list[str]) -> int:
    longest = run = 0
    for hextet in hextets:
        run = run + 1 if hextet == "0" else 0
        longest = max(longest, run)
    return longest


def _digits(kind: str, low: int, high: int) -> Callable[[str], str]:
    def normalise(raw: str) -> str:
        text = _SEPARATORS.sub("", raw)
        if not _DIGITS.fullmatch(text) or not low <= len(text) <= high:
            raise IdentifierError(f"{kind} must be {low} to {high} digits")
        return text

    return normalise


def normalise_opaque(raw: str) -> str:
    """Identifiers compared exactly (cookie ids, custom types): trimmed only."""
    text = raw.strip()
    if not text:
        raise IdentifierError("identifier is empty")
    return text


_NORMALISERS: dict[str, Callable[[str], str]] = {
    "imsi": _digits("imsi", 6, 15),
    "imei": _digits("imei", 14, 16),
    "ip": normalise_ip,
    "email": normalise_email,
    "cookie_id": normalise_opaque,
}


# Identifiers normalised lately, valid ones only: a CDR stream names the same subscribers
# all day. Bounded, since a key is at most about 2 x 256 bytes of text: a few MB at most.
NORMALISED_CACHE_SIZE = 32768


def normalise(kind: str, raw: str, default_country_code: int = 31) -> str:
    """Normalise one identifier of type ``kind``; IdentifierError when it is not valid."""
    if not isinstance(raw, str):
        raise IdentifierError(f"{kind} must be a string")
    return _normalise(kind, raw, default_country_code)


@lru_cache(maxsize=NORMALISED_CACHE_SIZE)
def _normalise(kind: str, raw: str, default_country_code: int) -> str:
    # An error is raised, never cached: a repeated invalid identifier is checked again.
    if not raw.strip():
        raise IdentifierError(f"{kind} is empty")
    if "\x00" in raw:
        raise IdentifierError(f"{kind} contains a NUL character")
    if not raw.isascii():
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise IdentifierError(f"{kind} is not valid Unicode (a lone surrogate)") from None
    # Before normalising, so that a huge value costs nothing; after, because
    # lower-casing can lengthen a string ("İ" becomes two code points).
    if len(raw) > _SURELY_SHORT and utf8_length(raw) > MAX_IDENTIFIER_BYTES:
        raise IdentifierTooLong(f"{kind} is longer than {MAX_IDENTIFIER_BYTES} bytes in UTF-8")
    if kind == "msisdn":
        # Past normalise_msisdn's own cache: this one just missed for the same input.
        value = normalise_msisdn.__wrapped__(raw, default_country_code)
    else:
        value = _NORMALISERS.get(kind, normalise_opaque)(raw)
    if len(value) > _SURELY_SHORT and utf8_length(value) > MAX_IDENTIFIER_BYTES:
        raise IdentifierTooLong(f"{kind} is longer than {MAX_IDENTIFIER_BYTES} bytes in UTF-8")
    return value


_KNOWN = frozenset(KNOWN_TYPES)


def valid_type(kind: str) -> bool:
    """True when ``kind`` can be used as an identifier type name."""
    # The known names (every message names some) match the pattern: no regex for them.
    return kind in _KNOWN or _TYPE_NAME.fullmatch(kind) is not None


def subject_key(kind: str, value: str) -> str:
    """The indexed look-up key of a normalised identifier, e.g. ``msisdn:+31612345678``."""
    return f"{kind}:{value}"
