"""The model registry: one-line size factories, created by name (timm's pattern)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register `fn(**overrides) -> nn.Module` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def _load_families() -> None:
    # Importing the family modules runs their @register_model decorators.
    from . import families  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching a shell-style pattern, e.g. "vit_*"."""
    _load_families()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; keyword overrides replace the factory's defaults.

    "timm/<name>" builds any timm model by name (CNN baselines beyond ours).
    """
    _load_families()
    if name.startswith("timm/"):
        from .cnn import timm_model

        return timm_model(name[len("timm/"):], **overrides)
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `mmtx models`"
        raise ValueError(f"unknown model name {name!r}{hint}")
    try:
        return _MODELS[name](**overrides)
    except TypeError as e:  # an override the model does not take: a user's config mistake
        if "unexpected keyword argument" not in str(e):
            raise
        raise ValueError(f"model {name!r} does not take that override: {e}") from None
