"""Policy and settings validation: refuse to start, naming file, line, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from purger.errors import ConfigError, PolicyError
from purger.policy import load_policy
from purger.settings import describe_settings, load_settings

REPO = Path(__file__).parents[2]
DEFAULT = (REPO / "config" / "retention.yaml").read_text()


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "retention.yaml"
    path.write_text(text)
    return path


def test_the_default_policy_has_the_four_categories() -> None:
    policy = load_policy(REPO / "config" / "retention.yaml")
    assert {n: c.topic for n, c in policy.categories.items()} == {
        "cdr": "telecom.cdr",
        "call_recordings": "telecom.call-recordings",
        "interception": "telecom.interception-traffic",
        "cookie_stats": "web.cookie-stats",
    }
    assert {n: c.policy.retention.text for n, c in policy.categories.items()} == {
        "cdr": "P6M",
        "call_recordings": "P90D",
        "interception": "P6M",
        "cookie_stats": "P1Y",
    }


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    retention: P90D\n", "    retention: P90X\n", "call_recordings.retention"),
        ("    controller: Lenex IT\n", "    controler: Lenex IT\n", "unknown key"),
        ("topic: web.cookie-stats", "topic: telecom.cdr", "telecom.cdr"),
        ("      callcenter-noord: P1Y", "      callcenter-noord: one year", "callcenter-noord"),
    ],
)
def test_a_bad_policy_names_file_line_and_key(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in DEFAULT
    path = _policy(tmp_path, DEFAULT.replace(old, new, 1))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert str(path) in message
    assert "line " in message
    assert expected in message


def test_a_duplicate_category_is_refused_with_its_line(tmp_path: Path) -> None:
    text = DEFAULT + "  cdr:\n    topic: other\n    retention: P1D\n"
    path = _policy(tmp_path, text)
    with pytest.raises(ConfigError, match=r"line \d+: duplicate key 'cdr'"):
        load_policy(path)


def test_a_missing_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothing-here\.yaml: file not found"):
        load_policy(tmp_path / "nothing-here.yaml")


def test_settings_errors_name_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "purger.yaml"
    config.write_text("log_level: INFO\nhttp_port: seventy\nno_such_setting: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert f"{config}, line 2, key http_port" in message
    assert f"{config}, line 3, key no_such_setting: unknown setting" in message


def test_env_wins_over_the_file_and_secrets_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "purger.yaml"
    config.write_text(
        "batch_max_records: 10\ndatabase_url: postgresql://u:filesecret@db:5432/purger\n"
    )
    monkeypatch.setenv("PURGER_BATCH_MAX_RECORDS", "20")
    monkeypatch.setenv("PURGER_DATABASE_PASSWORD", "envsecret")
    settings = load_settings(config)
    assert settings.batch_max_records == 20
    assert conninfo_to_dict(settings.conninfo()) == {
        "user": "u",
        "password": "envsecret",
        "host": "db",
        "port": "5432",
        "dbname": "purger",
    }
    shown = repr(settings.masked())
    assert "filesecret" not in shown and "envsecret" not in shown


def test_a_bad_env_var_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PURGER_PARTITION_GRANULARITY", "P1M")
    with pytest.raises(ConfigError, match="environment variable PURGER_PARTITION_GRANULARITY"):
        load_settings()


def test_help_lists_every_setting_with_its_env_var() -> None:
    text = describe_settings()
    for name in ("PURGER_DATABASE_URL", "PURGER_PURGE_SCHEDULE", "PURGER_KAFKA_SASL_PASSWORD"):
        assert name in text


def test_the_example_settings_file_loads() -> None:
    settings = load_settings(REPO / "config" / "purger.example.yaml")
    assert settings.policy_file == Path("config/retention.yaml")
