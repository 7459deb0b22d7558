"""Shared test helpers: paths to the copied sample data."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: sample messages and expiry vectors copied from the project brief."""
    return DATA
