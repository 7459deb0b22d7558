"""Normalisation of subject identifiers, shared by ingestion, holds and look-ups.

A producer and an operator may write the same identifier differently
(``0612345678`` and ``+31612345678``, ``J.Jansen@Example.NL``); both sides pass
through the same functions so that they match.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache

import phonenumbers

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
    region = phonenumbers.region_code_for_country_code(default_country_code)
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        raise IdentifierError("msisdn is not a phone number") from None
    if not phonenumbers.is_possible_number(number):
        raise IdentifierError("msisdn is not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


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
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        raise IdentifierError("ip is not an IP address") from None


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
        value = normalise_msisdn(raw, default_country_code)
    else:
        value = _NORMALISERS.get(kind, normalise_opaque)(raw)
    if len(value) > _SURELY_SHORT and utf8_length(value) > MAX_IDENTIFIER_BYTES:
        raise IdentifierTooLong(f"{kind} is longer than {MAX_IDENTIFIER_BYTES} bytes in UTF-8")
    return value


def valid_type(kind: str) -> bool:
    """True when ``kind`` can be used as an identifier type name."""
    return _TYPE_NAME.fullmatch(kind) is not None


def subject_key(kind: str, value: str) -> str:
    """The indexed look-up key of a normalised identifier, e.g. ``msisdn:+31612345678``."""
    return f"{kind}:{value}"
