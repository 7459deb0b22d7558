"""YAML loading that remembers where every key was, for errors that name the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from purger.errors import ConfigError

Location = tuple[str | int, ...]


def load_yaml(path: Path) -> tuple[Any, dict[Location, int]]:
    """Load ``path``; return the data and a map from key path to 1-based line.

    Duplicate keys are refused (PyYAML would silently keep the last one).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.__class__.__name__})") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{where}: {problem}") from None
    lines: dict[Location, int] = {}
    if node is None:
        return {}, lines
    return _convert(node, (), lines, path), lines


def _convert(node: yaml.Node, loc: Location, lines: dict[Location, int], path: Path) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(" ").construct_object(key_node)
            if key in out:
                raise ConfigError(
                    f"{path}, line {key_node.start_mark.line + 1}: duplicate key {key!r}"
                    + (f" under {'.'.join(map(str, loc))}" if loc else "")
                )
            lines[(*loc, key)] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, (*loc, key), lines, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, (*loc, i), lines, path) for i, item in enumerate(node.value)]
    return yaml.SafeLoader(" ").construct_object(node)


def line_of(lines: dict[Location, int], loc: Location) -> int | None:
    """The line of ``loc`` or of its nearest parent that has one."""
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())
