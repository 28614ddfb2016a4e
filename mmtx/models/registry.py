"""The model registry: one-line size factories, created by name (timm's pattern).

Each entry records the factory, its module, its family and its default task, so that listings
and tests over every model need neither name parsing nor private dicts. The registry imports no
model family: `mmtx/models/__init__.py` imports them, and their decorators fill it.
"""

from __future__ import annotations

import fnmatch
import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from ..keys import check_kwargs, nearest


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of one model name."""

    name: str
    fn: Callable[..., nn.Module]  # fn(**overrides) -> nn.Module
    module: str  # where the factory is defined, e.g. "mmtx.models.vit"
    family: str  # e.g. "vit", "cnn", "text"
    task: str | None  # the task it is built for by default, e.g. "classification", "causal_lm"


_MODELS: dict[str, ModelInfo] = {}
# name prefix -> builder of a model named by the rest, e.g. "timm/" -> cnn.timm_model
_PREFIXES: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, family: str | None = None,
                   task: str | None = None):
    """Register `fn(**overrides) -> nn.Module` under its function name.

    Bare (`@register_model`) or with metadata (`@register_model(family="vit",
    task="classification")`); family defaults to the last part of the factory's module name.
    """
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        module = fn.__module__
        _MODELS[name] = ModelInfo(name, fn, module, family or module.rsplit(".", 1)[-1], task)
        return fn

    return add if fn is None else add(fn)


def register_prefix(prefix: str, fn: Callable[..., nn.Module]) -> None:
    """Let `create_model(prefix + rest, **kw)` call `fn(rest, **kw)` (e.g. "timm/resnet50")."""
    if prefix in _PREFIXES:
        raise ValueError(f"model name prefix {prefix!r} is registered twice")
    _PREFIXES[prefix] = fn


def _unknown(name: str) -> ValueError:
    close = nearest(name, _MODELS)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `mmtx models`"
    return ValueError(f"unknown model name {name!r}{hint}")


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Sorted registered names matching a shell-style pattern, e.g. "vit_*", of one family
    (e.g. "vit", "text") or all."""
    if family is not None:
        families = {info.family for info in _MODELS.values()}
        if family not in families:
            raise ValueError(f"unknown model family {family!r}; known families: "
                             f"{', '.join(sorted(families))}")
    return sorted(name for name, info in _MODELS.items() if fnmatch.fnmatch(name, pattern)
                  and (family is None or info.family == family))


def model_info(name: str) -> ModelInfo:
    """The registry's record of `name`: factory, module, family and default task."""
    if name not in _MODELS:
        raise _unknown(name)
    return _MODELS[name]


def create_model(name: str, **overrides) -> nn.Module:
    """Build a registered model; keyword overrides replace the factory's defaults.

    A registered prefix builds models of another library by name: "timm/<name>" builds any timm
    model (CNN baselines beyond ours).
    """
    for prefix, fn in _PREFIXES.items():
        if name.startswith(prefix):
            return fn(name[len(prefix):], **overrides)
    fn = model_info(name).fn
    try:
        return fn(**overrides)
    except TypeError as e:  # an override the model does not take: a user's config mistake
        if "unexpected keyword argument" not in str(e):
            raise
        cls = _returned_class(fn)
        if cls is not None:  # name the nearest arguments the model's class does take
            check_kwargs(cls, overrides, "override", f"model {name!r}")
        raise ValueError(f"model {name!r} does not take that override: {e}") from None


def _returned_class(fn: Callable) -> type | None:
    """The class a factory says it returns (`-> ViT`), or None when it does not say."""
    try:
        cls = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve: no suggestions, the error stands
        return None
    return cls if isinstance(cls, type) else None
