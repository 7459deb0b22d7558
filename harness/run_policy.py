"""A run's own copy of the project's retention policy, its topics in the run's namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

POLICY_TEMPLATE = Path(__file__).resolve().parents[1] / "config" / "retention.yaml"


def write_run_policy(directory: Path, namespace: str) -> Path:
    """``directory/retention.yaml``: the project's policy, every topic ``namespace.topic``."""
    data: dict[str, Any] = yaml.safe_load(POLICY_TEMPLATE.read_text(encoding="utf-8"))
    for category in data["categories"].values():
        category["topic"] = f"{namespace}.{category['topic']}"
    path = directory / "retention.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path
