"""Study kinds: `kind:` in an experiment file picks the module that runs it (default `grid`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..io import exclusive
from .spec import load_spec, read_tree

DEFAULT_KIND = "grid"


@dataclass(frozen=True)
class StudyKind:
    name: str
    schema: type  # the experiment file's dataclass
    run: Callable  # run(spec, out_dir: Path) -> dict


_KINDS: dict[str, StudyKind] = {}


def register_kind(name: str, schema: type):
    """Decorator for `run(spec, out) -> dict`: experiment files with `kind: name` run it."""

    def wrap(fn):
        if name in _KINDS:
            raise ValueError(f"study kind {name!r} is registered twice")
        _KINDS[name] = StudyKind(name, schema, fn)
        return fn

    return wrap


def list_kinds() -> list[str]:
    return sorted(_KINDS)


def get_kind(name) -> StudyKind:
    if name not in _KINDS:
        raise ValueError(f"unknown experiment kind {name!r}; known kinds: "
                         f"{', '.join(list_kinds())}")
    return _KINDS[name]


def load(path, overrides=()):
    """(kind, typed spec) of an experiment file."""
    kind = get_kind(read_tree(path, overrides).get("kind", DEFAULT_KIND))
    return kind, load_spec(path, overrides, kind.schema)


def run_experiment(path, out_dir=None, overrides=()) -> dict:
    """Run (or finish) an experiment file of any kind; writes and prints its report.

    Finished runs are read back, never trained again; the result dict holds "experiment",
    "out_dir" and the kind's own results."""
    kind, spec = load(path, overrides)
    out = Path(out_dir) if out_dir else Path("runs") / spec.name
    with exclusive(out, "experiment directory"):  # one `mmtx run` per directory at a time
        return kind.run(spec, out)
