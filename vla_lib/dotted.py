"""Dotted parameter names (`train.lr`, `runtime.limits.force_limit_n`) on a config tree: nested dicts (params files,
overrides, sweep members) or the config's dataclasses, read and written by the same two functions."""
from __future__ import annotations

from typing import Any


def _child(node, key: str, create: bool):
    if isinstance(node, dict):
        return node.setdefault(key, {}) if create else node[key]
    return getattr(node, key)


def get_dotted(tree, dotted: str) -> Any:
    """The value at `dotted`; KeyError / AttributeError when a part is missing."""
    node = tree
    for key in dotted.split("."):
        node = _child(node, key, create=False)
    return node


def set_dotted(tree, dotted: str, value, create: bool = False) -> None:
    """Set the value at `dotted`; `create` makes missing dict levels (else a missing part raises)."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = _child(node, key, create)
    if isinstance(node, dict):
        node[leaf] = value
    else:
        setattr(node, leaf, value)


def flatten(tree: dict, keep: tuple[str, ...] = (), prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {dotted name: value}; a dict under a key named in `keep` stays one value (its keys are data,
    not settings)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in keep:
            out.update(flatten(value, keep, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
