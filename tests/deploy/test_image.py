"""What the container image is built from: the Dockerfile's shape and the wheel it installs.

No Docker engine runs here, so the image itself is not built; these checks cover what a
build would get wrong silently: SQL files missing from the wheel (the service would fail
at start-up), an entry point lost, a root user or build tools in the final stage.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO

pytestmark = pytest.mark.deploy

DOCKERFILE = REPO / "Dockerfile"


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into build stages."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_image_is_multi_stage_and_runs_purger_as_a_numeric_non_root_user() -> None:
    stages = _stages()
    assert len(stages) >= 2, "build and runtime stages expected"
    final = stages[-1]
    users = [ln.split(None, 1)[1] for ln in final if ln.upper().startswith("USER ")]
    assert users, "the final stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    arg_defaults = dict(
        re.findall(r"^ARG (\w+)=(\S+)$", "\n".join(final), flags=re.MULTILINE),
    )
    uid = arg_defaults.get(uid.strip("${}"), uid)
    assert uid.isdigit() and int(uid) > 0, f"USER {users[-1]} is not a numeric non-root uid"
    assert 'ENTRYPOINT ["purger"]' in final


def test_the_final_stage_installs_no_build_tools() -> None:
    final = " ".join(_stages()[-1])
    for tool in ("apt-get install", "gcc", "build-essential", "pip install"):
        assert tool not in final, f"the runtime stage runs {tool!r}"
    copies = re.findall(r"COPY (--from=\S+ )?(\S+)", final)
    # Only the built virtualenv and the default policy enter the final image.
    assert {src for _, src in copies} == {"/opt/venv", "config/retention.yaml"}


def test_the_wheel_carries_the_sql_the_markers_and_the_entry_points(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(
            zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    sql_files = {p.relative_to(REPO).as_posix() for p in (REPO / "purger" / "sql").rglob("*.sql")}
    assert sql_files, "no SQL in the repository?"
    assert sql_files <= names, f"missing from the wheel: {sorted(sql_files - names)}"
    assert {"purger/py.typed", "consumers/py.typed", "consumers/service.py"} <= names
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/", "soak/")) for n in names)
    # The demo and its sample generator are examples, not part of the shipped packages.
    assert not any(n.rsplit("/", 1)[-1] in ("demo.py", "samples.py") for n in names)
    assert "purger = purger.cli:main" in entry_points
    assert "kafka = consumers.service" in entry_points
