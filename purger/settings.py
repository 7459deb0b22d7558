"""Settings: one validated, frozen model loaded once at start-up.

Sources, strongest first: ``PURGER_*`` environment variables, then the YAML
settings file (``--config`` or ``PURGER_CONFIG``), then the defaults below.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.conninfo import make_conninfo
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from purger.durations import parse_duration
from purger.errors import ConfigError, DurationError
from purger.schedules import trigger_for
from purger.yamlfile import line_of, load_yaml

ENV_PREFIX = "PURGER_"
CONFIG_ENV = "PURGER_CONFIG"


class Settings(BaseSettings):
    """Every setting of the purger. Each is also read from ``PURGER_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", case_sensitive=False
    )

    database_url: SecretStr = Field(
        SecretStr("postgresql://purger:purger@127.0.0.1:5432/purger"),
        description="libpq URL of the PostgreSQL database (secret)",
    )
    database_password: SecretStr | None = Field(
        None,
        description="password overriding the one in database_url, given to libpq as its own "
        "parameter, never pasted into the URL: any character is fine (secret)",
    )
    database_runtime_user: str | None = Field(
        None,
        description="login role that `purger migrate` makes a member of purger_runtime, the "
        "least-privilege role of consumers, scheduler and operator commands (empty: none)",
    )
    kafka_bootstrap_servers: str = Field("127.0.0.1:19092", description="comma-separated brokers")
    kafka_group_id: str = Field("purger", description="consumer group of all workers")
    kafka_client_id: str = Field("purger", description="Kafka client id")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (secret)")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for TLS")
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate for mTLS")
    kafka_ssl_keyfile: Path | None = Field(None, description="client key for mTLS")
    policy_file: Path = Field(Path("config/retention.yaml"), description="retention policy YAML")
    dead_letter_suffix: str = Field(".dlq", description="dead-letter topic = <topic><suffix>")
    dead_letter_replication_factor: int = Field(
        1, ge=1, le=32, description="replicas of the dead-letter topics the purger creates"
    )
    audit_anchor_topic: str = Field(
        "purger.audit-anchors",
        min_length=1,
        description="Kafka topic each purge pass publishes the audit chain head to, one topic "
        "per database; `purger audit verify --anchors` checks the chain against every head in it",
    )
    topic_check_interval_seconds: int = Field(
        3600, ge=0, description="seconds between checks of the topics' retention (0: never)"
    )
    default_country_code: int = Field(
        31, ge=1, le=999, description="country code given to national phone numbers"
    )
    future_tolerance: str = Field(
        "P1D", description="records dated further ahead are dead-lettered (ISO-8601)"
    )
    partition_granularity: str = Field(
        "P1D", description="expiry range of one partition (ISO-8601: P1D, PT6H, P7D)"
    )
    partitions_ahead: int = Field(
        3, ge=0, le=366, description="partitions created ahead of need at start-up"
    )
    batch_max_records: int = Field(5000, ge=1, description="records per poll and transaction")
    poll_timeout_ms: int = Field(500, ge=10, description="Kafka poll timeout")
    write_behind: bool = Field(
        True,
        description="store a batch on a writer thread while the next one is polled and "
        "decoded (offsets still move only after the database commit); off is faster only "
        "where the workers and PostgreSQL already keep every core busy",
    )
    http_host: str = Field("127.0.0.1", description="address of /metrics, /healthz, /readyz")
    http_port: int = Field(9108, ge=0, le=65535, description="port of the HTTP endpoints")
    purge_schedule: str = Field("0 * * * *", description="cron schedule of purge passes (UTC)")
    purge_misfire_grace_seconds: int = Field(
        86400, ge=1, description="a missed pass still runs if at most this late"
    )
    lock_timeout_ms: int = Field(2000, ge=1, description="lock_timeout of purge sessions")
    statement_timeout_ms: int = Field(300000, ge=1, description="statement_timeout of purges")
    delete_batch_size: int = Field(10000, ge=1, description="rows per DELETE batch")
    retag_budget_seconds: float = Field(
        60.0,
        gt=0,
        description="seconds per scheduler tick spent re-tagging records after a policy "
        "change (resumable; the rest goes on next tick)",
    )
    purge_leader_max_failures: int = Field(
        3,
        ge=0,
        description="passes in a row ending failure or timed_out after which the scheduler "
        "leader steps down (0: never)",
    )
    purge_leader_cooldown_ticks: int = Field(
        2, ge=0, description="ticks a replica that stepped down waits before leading again"
    )
    overdue_refresh_seconds: int = Field(60, ge=1, description="refresh of the overdue gauge")
    lag_refresh_seconds: int = Field(10, ge=1, description="refresh of the consumer lag gauge")
    db_retry_max_backoff_seconds: float = Field(
        30.0, gt=0, description="longest wait between retries of an outage or systemic fault"
    )
    liveness_timeout_seconds: float = Field(
        180.0,
        ge=10,
        description="/healthz fails when a worker has neither polled nor finished a batch "
        "for this long",
    )
    log_format: Literal["text", "json"] = Field("text", description="log line format")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in as init kwargs; env must win over them.
        return (env_settings, init_settings)

    @field_validator("future_tolerance", "partition_granularity")
    @classmethod
    def _duration(cls, value: str) -> str:
        try:
            parse_duration(value)
        except DurationError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("partition_granularity")
    @classmethod
    def _granularity(cls, value: str) -> str:
        duration = parse_duration(value)
        seconds = duration.exact.total_seconds()
        if duration.months or seconds < 3600 or not (86400 % seconds == 0 or seconds % 86400 == 0):
            raise ValueError("use whole hours dividing a day (PT1H..PT12H) or whole days (P1D..)")
        return value

    @field_validator("purge_schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        # The scheduler's own parser: 5 fields, or 6 with seconds first.
        try:
            trigger_for(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("purge_schedule: ")) from None
        return value

    @property
    def future_tolerance_delta(self) -> timedelta:
        """``future_tolerance`` as a timedelta."""
        return parse_duration(self.future_tolerance).exact

    @property
    def granularity(self) -> timedelta:
        """``partition_granularity`` as a timedelta."""
        return parse_duration(self.partition_granularity).exact

    def conninfo(self) -> str:
        """The libpq connection string with the password override applied (never log it).

        ``database_url`` as it is when no ``database_password`` is set; otherwise libpq's
        ``key=value`` form of it with the password as a separate, quoted parameter (a URL
        would need it percent-encoded: ``%``, ``/``, ``@``, ``:`` or ``#`` would break it).
        """
        url = self.database_url.get_secret_value()
        if self.database_password is None:
            return url
        try:
            return make_conninfo(url, password=self.database_password.get_secret_value())
        except psycopg.Error:
            # libpq's parse error may quote part of the URL, password included.
            raise ConfigError(
                "database_url: not a valid libpq URL or key=value connection string"
            ) from None

    def masked(self) -> dict[str, Any]:
        """The effective settings with secrets masked, for the one start-up log line."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def load_settings(config_file: Path | None = None) -> Settings:
    """Load the settings; ConfigError names the file and line or the env var at fault."""
    path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    data: dict[str, Any] = {}
    lines: dict[tuple[str | int, ...], int] = {}
    if path is not None:
        loaded, lines = load_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of setting names to values")
        data = loaded
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "(top level)"
            env = f"{ENV_PREFIX}{key.upper()}"
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown setting"
            if env in os.environ and err["type"] != "extra_forbidden":
                where = f"environment variable {env}"
            elif path is not None and (key,) in lines:
                where = f"{path}, line {line_of(lines, (key,))}, key {key}"
            else:
                where = f"setting {key}"
            problems.append(f"{where}: {message}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None


def describe_settings() -> str:
    """Every setting with its env var, default and meaning, for ``--help``."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = "(secret)"
        rows.append(f"  {ENV_PREFIX}{name.upper():<34} {field.description} [default: {default}]")
    return "settings (YAML file keys, or environment variables, which win):\n" + "\n".join(rows)
