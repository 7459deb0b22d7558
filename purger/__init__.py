"""Event-driven retention purger for telecom records."""

__version__ = "0.1.0"
