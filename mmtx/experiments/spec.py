"""Reading experiment files: YAML, then `--set KEY=VALUE` overrides, then typed fields.

Every study kind declares its file as a dataclass (the schema). Overrides are applied to the
raw YAML tree first (so `grid.0.seed=[3]` or `base.train.max_steps=2` reach into lists and
free-form training configs), then the tree is read into the schema with the training config's
typed reader: a wrong type or an unknown key is an error naming the nearest valid keys. The
`base` training config, where a kind has one, is checked as `mmtx train` would check it, before
any run starts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..train.config import load_config, merge_dataclass, parse_override, read_yaml


def set_key(tree: dict, dotted: str, value) -> None:
    """tree["a"]["b"] = value for dotted "a.b", creating mappings on the way."""
    *parents, last = dotted.split(".")
    for key in parents:  # a number indexes a list, e.g. "grid.0.seed"
        if isinstance(tree, list):
            tree = tree[_index(tree, key, dotted)]
        else:
            tree = _mapping(tree, dotted).setdefault(key, {})
    if isinstance(tree, list):
        tree[_index(tree, last, dotted)] = value
    else:
        _mapping(tree, dotted)[last] = value


def _mapping(tree, dotted: str) -> dict:
    if not isinstance(tree, dict):
        raise ValueError(f"--set {dotted}: reaches inside {tree!r}, which is not a mapping")
    return tree


def _index(items: list, key: str, dotted: str) -> int:
    if not key.lstrip("-").isdigit() or not -len(items) <= int(key) < len(items):
        raise ValueError(f"--set {dotted}: {key!r} must index a list of {len(items)} entries")
    return int(key)


def read_tree(path, overrides=()) -> dict:
    """An experiment YAML as a dict with `--set KEY=VALUE` overrides applied (untyped)."""
    tree = read_yaml(path, "experiment file")
    for item in overrides or ():
        set_key(tree, *parse_override(item))
    return tree


def load_spec(path, overrides, schema: type):
    """The experiment file at `path` read into the dataclass `schema`, overrides applied."""
    path = Path(path)
    tree = read_tree(path, overrides)
    spec = schema()
    try:
        merge_dataclass(spec, tree)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if not getattr(spec, "name", None):
        spec.name = path.stem
    base = getattr(spec, "base", None)
    if base is not None:
        try:
            load_config(base)  # the same checks as `mmtx train`, before anything trains
        except ValueError as e:
            raise ValueError(f"{path}: base: {e}") from None
    if hasattr(spec, "check"):  # the kind's own checks of the whole file (mmtx.experiments.runs)
        spec.check()
    return spec


def spec_dict(spec) -> dict:
    return dataclasses.asdict(spec)
