"""Dotted keys (SOLVER.EPOCHS) over nested dicts: what config files, overrides and study files share."""
from __future__ import annotations

from typing import Any


class DottedKeyError(ValueError):
    """A dotted key runs through a value where a section was expected."""


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise DottedKeyError(f"{dotted}: {p!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def pop_dotted(d: dict, dotted: str) -> Any:
    parts = dotted.split(".")
    node = d
    for p in parts[:-1]:
        node = node.get(p)
        if not isinstance(node, dict):
            return None
    return node.pop(parts[-1], None)
