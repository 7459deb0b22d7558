"""Kafka client options derived from the settings."""

from __future__ import annotations

from pathlib import Path

from consumers.kafka_config import consumer_options, producer_options
from purger.settings import Settings


def test_the_consumer_commits_by_hand_from_the_earliest_offset() -> None:
    options = consumer_options(Settings(kafka_bootstrap_servers="a:9092, b:9092"))
    assert options["enable_auto_commit"] is False
    assert options["auto_offset_reset"] == "earliest"
    assert options["bootstrap_servers"] == ["a:9092", "b:9092"]


def test_dead_letters_wait_for_every_in_sync_replica() -> None:
    assert producer_options(Settings())["acks"] == "all"


def test_sasl_ssl_options_carry_the_secret_only_to_the_client() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="purger",
        kafka_sasl_password="s3cret",
        kafka_ssl_cafile=Path("/etc/ca.pem"),
    )
    options = consumer_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == "s3cret"
    assert options["ssl_cafile"] == "/etc/ca.pem"
    assert "s3cret" not in repr(settings) and "s3cret" not in repr(settings.masked())


def test_fetched_data_is_bounded_whatever_the_number_of_partitions() -> None:
    # A worker's memory must not grow with its assignment: one fetch is capped in
    # total, and a single partition can never claim more than the cap.
    options = consumer_options(Settings())
    assert options["fetch_max_bytes"] <= 16 * 1024 * 1024
    assert options["max_partition_fetch_bytes"] <= options["fetch_max_bytes"]
