"""Experiments: study kinds in a registry (`kind:` in the YAML), sharing one spec reader, one
worker pool, one run cache, one cached training call and one report writer.

    mmtx run experiments/cnn_vs_vit.yaml            # kind: grid (the default)
    run_experiment("experiments/rnn_vs_transformer.yaml", out_dir="runs/x")

A new study is a module here with a schema dataclass (a `runs.Spec`: name, description, base,
jobs; its `check` adds the kind's checks) and a `@register_kind(name, Schema)` function
`run(spec, out_dir) -> dict` that lists its runs (`runs.Run`: a config from `spec.config`, a
measure function), trains them with `runs.train_runs` and writes its report; imported below.
"""

from . import (  # noqa: F401  each registers its kind
    generation_study,
    grid,
    relation,
    rnn_vs_transformer,
    vision_language,
)
from .grid import load_experiment, run_config
from .registry import list_kinds, register_kind, run_experiment

__all__ = ["run_experiment", "load_experiment", "run_config", "list_kinds", "register_kind"]
