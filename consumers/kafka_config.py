"""kafka-python client options from the purger's settings (security included)."""

from __future__ import annotations

from typing import Any

from purger.settings import Settings

FETCH_MAX_BYTES = 8 * 1024 * 1024
PARTITION_FETCH_MAX_BYTES = 1024 * 1024
SESSION_TIMEOUT_MS = 10_000


def client_options(settings: Settings) -> dict[str, Any]:
    """Options shared by consumers, producers and admin clients."""
    options: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.kafka_bootstrap_servers.split(",")],
        "client_id": settings.kafka_client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_security_protocol.endswith("SSL"):
        if settings.kafka_ssl_cafile:
            options["ssl_cafile"] = str(settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            options["ssl_certfile"] = str(settings.kafka_ssl_certfile)
        if settings.kafka_ssl_keyfile:
            options["ssl_keyfile"] = str(settings.kafka_ssl_keyfile)
    return options


def consumer_options(settings: Settings) -> dict[str, Any]:
    """Consumer options: manual commits after the database commit, from the earliest offset."""
    return {
        **client_options(settings),
        "group_id": settings.kafka_group_id,
        # Offsets move only after the database commit, never on a timer.
        "enable_auto_commit": False,
        # A new group starts at the beginning: nothing produced before it is skipped.
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.batch_max_records,
        # Fetched but unprocessed messages are the bulk of a worker's memory. One fetch
        # carries at most FETCH_MAX_BYTES whatever the backlog or the number of assigned
        # partitions, and the next is sent only for partitions whose data was consumed.
        "fetch_max_bytes": FETCH_MAX_BYTES,
        "max_partition_fetch_bytes": PARTITION_FETCH_MAX_BYTES,
        # A killed worker's partitions move to the others after this long, not after
        # the 45 s default during which they all stand still.
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": SESSION_TIMEOUT_MS // 3,
        # No partition_assignment_strategy: the default, eager assignors are what
        # Checkpoint.rewind_assigned relies on.
    }


PRODUCER_MAX_REQUEST_BYTES = 1024 * 1024
# How long send() may block waiting for metadata while the broker is away; the
# consumer loop waits out the outage itself, with backoff and a live heartbeat.
PRODUCER_MAX_BLOCK_MS = 10_000


def producer_options(settings: Settings) -> dict[str, Any]:
    """Dead-letter producer options: acknowledged by all in-sync replicas."""
    return {
        **client_options(settings),
        "acks": "all",
        "retries": 5,
        "linger_ms": 5,
        "max_request_size": PRODUCER_MAX_REQUEST_BYTES,
        "max_block_ms": PRODUCER_MAX_BLOCK_MS,
    }
