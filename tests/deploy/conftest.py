"""Fixtures of the deploy checks: the helm and promtool binaries and rendered charts.

The tools are found through PURGER_HELM / PURGER_PROMTOOL, else the cache that
scripts/install-tools.sh fills (``$PURGER_TOOLS_HOME`` or ``~/.cache/purger-tools``), else
PATH. A missing tool fails the test with one message saying how to install it: these checks
never skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "purger"
RELEASE = "purger"
NAMESPACE = "purger"

INSTALL_HINT = "run `scripts/install-tools.sh` (or `make tools`) to install it"


def _tools_home() -> Path:
    return Path(os.environ.get("PURGER_TOOLS_HOME", Path.home() / ".cache" / "purger-tools"))


def _find_tool(name: str, env_var: str) -> str:
    override = os.environ.get(env_var)
    if override:
        if Path(override).is_file() and os.access(override, os.X_OK):
            return override
        pytest.fail(
            f"{env_var}={override} is not an executable file; {INSTALL_HINT}", pytrace=False
        )
    cached = _tools_home() / "bin" / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(
        f"`{name}` was not found (not in ${env_var}, {cached} or PATH); {INSTALL_HINT}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def helm() -> str:
    return _find_tool("helm", "PURGER_HELM")


@pytest.fixture(scope="session")
def promtool() -> str:
    return _find_tool("promtool", "PURGER_PROMTOOL")


def run(cmd: list[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; never raises on a non-zero exit."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, timeout=120)


Renderer = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Renderer]:
    """``render(values_file=None, *sets, release=RELEASE)`` -> the rendered objects (cached)."""
    cache: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    # helm writes its cache and config under HOME; keep it out of the user's.
    home = tmp_path_factory.mktemp("helm-home")
    env_args = [
        f"--repository-cache={home / 'repository'}",
        f"--repository-config={home / 'repositories.yaml'}",
    ]

    def _render(
        values_file: Path | None = None, *sets: str, release: str = RELEASE
    ) -> list[dict[str, Any]]:
        key = (values_file, sets, release)
        if key not in cache:
            cmd = [helm, "template", release, str(CHART), "--namespace", NAMESPACE, *env_args]
            if values_file is not None:
                cmd += ["--values", str(values_file)]
            for s in sets:
                cmd += ["--set", s]
            result = run(cmd)
            assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
            docs = [d for d in yaml.safe_load_all(result.stdout) if d]
            assert docs, f"{' '.join(cmd)} rendered nothing"
            cache[key] = docs
        return cache[key]

    yield _render
