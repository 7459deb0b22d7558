"""The cache of normalised identifiers: bounded, and errors are never cached."""

from __future__ import annotations

import pytest

from purger import identifiers
from purger.identifiers import IdentifierError, normalise


def test_repeated_identifiers_hit_the_cache_and_give_the_same_value() -> None:
    identifiers._normalise.cache_clear()
    first = normalise("msisdn", "0612345678")
    assert normalise("msisdn", "0612345678") == first == "+31612345678"
    assert identifiers._normalise.cache_info().hits == 1


def test_the_cache_is_bounded() -> None:
    info = identifiers._normalise.cache_info()
    assert info.maxsize == identifiers.NORMALISED_CACHE_SIZE


def test_invalid_identifiers_raise_every_time() -> None:
    for _ in range(2):
        with pytest.raises(IdentifierError):
            normalise("imsi", "12")
    with pytest.raises(IdentifierError):
        normalise("msisdn", ["+31612345678"])  # type: ignore[arg-type]


def test_the_default_country_is_part_of_the_key() -> None:
    assert normalise("msisdn", "0612345678", 31) != normalise("msisdn", "0612345678", 32)
