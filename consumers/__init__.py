"""Kafka consumption: the only part of the project that talks to Kafka for ingestion."""
