"""docs/architecture.md matches the code, and the code keeps the shape it promises."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("purger", "consumers")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "sql" in path.relative_to(REPO).parts:
                continue  # markers of the SQL data folders, no code
            out[path.relative_to(REPO).as_posix()] = path
    return out


def _name(rel: str) -> str:
    name = rel.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Project modules imported at module level, and those imported inside functions."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    lazy: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        names = [n for n in names if n.split(".")[0] in PACKAGES]
        if not names:
            continue
        (top if node in tree.body else lazy).update(names)
    return top, lazy


def test_the_map_names_every_module_and_only_modules_that_exist() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:purger|consumers)/[\w/]+\.py)`", text))
    modules = set(_modules())
    markers = {m for m in modules if m.endswith("/__init__.py") and m.count("/") == 1}
    assert modules - markers <= named, f"not on the map: {sorted(modules - markers - named)}"
    assert named <= modules, f"on the map but gone: {sorted(named - modules)}"


def test_no_module_is_a_big_room() -> None:
    big = {
        rel: n
        for rel, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"over {MAX_LINES} lines: {big}"


def test_the_core_never_imports_the_kafka_side_and_nothing_imports_lazily() -> None:
    for rel, path in _modules().items():
        top, lazy = _imports(path)
        assert not lazy, f"{rel} imports {sorted(lazy)} inside a function"
        if rel.startswith("purger/"):
            assert not any(n.startswith("consumers") for n in top), f"{rel} imports consumers"


def test_there_is_no_import_cycle() -> None:
    modules = {_name(rel): path for rel, path in _modules().items()}
    graph = {
        name: {n for n in _imports(path)[0] if n in modules and n != name}
        for name, path in modules.items()
    }
    # A package's __init__ importing its own submodules is how packages work, not a cycle.
    graph = {
        name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, " -> ".join([*visiting[visiting.index(node) :], node])
        visiting.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
