"""Building the libpq connection string: the password is its own parameter, never in a URL."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from purger.errors import ConfigError
from purger.settings import Settings

AWKWARD = "p%40ss/w@rd:x#y 'q' \\z%"


def _settings(url: str, password: str | None) -> Settings:
    return Settings(database_url=url, database_password=password)


def test_without_a_password_override_the_url_is_used_as_it_is() -> None:
    url = "postgresql://u:secret@db:5432/purger?sslmode=require"
    assert _settings(url, None).conninfo() == url


@pytest.mark.parametrize("password", [AWKWARD, "%", "/", "@", ":", "#", "plain"])
def test_the_password_reaches_libpq_unchanged_whatever_its_characters(password: str) -> None:
    info = _settings("postgresql://u@db:5433/purger?sslmode=require", password).conninfo()
    assert conninfo_to_dict(info) == {
        "user": "u",
        "password": password,
        "host": "db",
        "port": "5433",
        "dbname": "purger",
        "sslmode": "require",
    }
    assert not info.startswith("postgresql://")


def test_the_override_wins_over_a_password_in_the_url() -> None:
    info = _settings("postgresql://u:old@db/purger", AWKWARD).conninfo()
    assert conninfo_to_dict(info)["password"] == AWKWARD
    assert "old" not in info


def test_a_key_value_database_url_takes_the_password_too() -> None:
    info = _settings("host=db dbname=purger user=u", AWKWARD).conninfo()
    assert conninfo_to_dict(info) == {
        "host": "db",
        "dbname": "purger",
        "user": "u",
        "password": AWKWARD,
    }


def test_the_result_is_itself_a_valid_database_url() -> None:
    # tests and tools hand conninfo() to a child process as PURGER_DATABASE_URL.
    first = _settings("postgresql://u@db/purger", AWKWARD).conninfo()
    assert Settings(database_url=first).conninfo() == first


def test_an_unparsable_url_is_refused_without_echoing_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        _settings("postgresql://u@db:notaport/purger?bogus_option=1", AWKWARD).conninfo()
    assert AWKWARD not in str(caught.value)
    # Raised from None: a traceback does not show libpq's message either.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
