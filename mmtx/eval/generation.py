"""Judging generated images: Frechet distance on our own features, and conditional accuracy.

FID needs an Inception network that cannot be downloaded here, so the distance is computed on
the features of a classifier trained on our data (any nn.Module mapping images (B, C, H, W) to
features (B, D)). It is not FID and must not be reported as FID: report it as `fd_shapes` (or
`fd_<data>`), next to its real-vs-real floor (`frechet_report`), since a Frechet distance
estimated from n samples is biased upward by an amount that depends on n and the features.

Image range: images go to the feature extractor as they are, so they must be in the space it
was trained on; for the shapes data that is [-1, 1] (the dataset's normalisation, and what a
generator trained on it samples). `value_range` (default (-1, 1)) clamps both sets into it
first, as saving samples as PNG would; pass (0, 1) for data in [0, 1], None to skip.

mmtx.eval imports neither mmtx.train nor mmtx.experiments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from torchmetrics.image.fid import FrechetInceptionDistance

FD_NAME = "fd_shapes"  # the key under which the distance on shapes features is reported


class _Features(nn.Module):
    """Wraps an extractor for torchmetrics: declares `num_features` (so torchmetrics makes no
    dummy 299 x 299 uint8 forward, which a small classifier cannot take) and returns float64
    features (so the distance comes back in float64 whatever the extractor computes in)."""

    def __init__(self, extractor: nn.Module | None, num_features: int,
                 value_range: tuple[float, float] | None):
        super().__init__()
        self.extractor, self.num_features, self.value_range = extractor, num_features, value_range

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extractor is None:  # x already holds features
            return x.double()
        if self.value_range is not None:
            x = x.clamp(*self.value_range)
        feats = self.extractor(x)
        if feats.dim() != 2 or feats.shape[1] != self.num_features:
            raise ValueError(f"feature_extractor must map (B, C, H, W) images to (B, "
                             f"{self.num_features}) features, got {tuple(feats.shape)}")
        return feats.double()


def _device(module: nn.Module | None, fallback: torch.device) -> torch.device:
    p = next(module.parameters(), None) if module is not None else None
    return fallback if p is None else p.device


def _batches(x, batch_size: int) -> Iterable[torch.Tensor]:
    """A tensor (N, ...) in chunks, or any iterable of batches as it comes."""
    if isinstance(x, torch.Tensor):
        return x.split(batch_size)
    return x


class _EvalMode:
    """Puts a module in eval mode and no_grad for a block, restoring its mode afterwards."""

    def __init__(self, module: nn.Module | None):
        self.module = module
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.was_training = self.module is not None and self.module.training
        if self.module is not None:
            self.module.eval()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        if self.was_training:
            self.module.train()


def fd_metric(feature_extractor: nn.Module | None, example: torch.Tensor, *,
              value_range: tuple[float, float] | None = (-1.0, 1.0),
              reset_real_features: bool = True) -> FrechetInceptionDistance:
    """A torchmetrics FrechetInceptionDistance on `feature_extractor`'s features.

    `example` is one batch (images, or features when feature_extractor is None) used to read the
    feature size. For streaming use: `m.update(images, real=True/False)`, `m.compute()`;
    reset_real_features=False keeps the real statistics across `reset()` (compute them once per
    run). Call updates inside torch.no_grad() with the extractor in eval mode.
    """
    # Imported here: torchmetrics takes seconds to import, and only this function needs it.
    from torchmetrics.image.fid import FrechetInceptionDistance

    if example.dim() < 2:
        raise ValueError(f"example must be a batch (B, ...), got shape {tuple(example.shape)}")
    with _EvalMode(feature_extractor):
        if feature_extractor is None:
            num_features = example.shape[1]
        else:
            num_features = feature_extractor(example[:2].to(
                _device(feature_extractor, example.device))).shape[-1]
    wrapped = _Features(feature_extractor, int(num_features), value_range)
    # normalize=True: with a custom extractor torchmetrics then passes float images unchanged.
    # sync_on_compute=False: under several processes each one measures the same samples (the
    # engine's judged samples), and torchmetrics' default sums every process's statistics, as
    # if each sample were there once per process (it moved fd_shapes by 0.4% on 2 processes).
    return FrechetInceptionDistance(feature=wrapped, normalize=True,
                                    reset_real_features=reset_real_features,
                                    sync_on_compute=False)


def frechet_distance(real, fake, feature_extractor: nn.Module | None = None, *,
                     batch_size: int = 256,
                     value_range: tuple[float, float] | None = (-1.0, 1.0)) -> float:
    """Frechet distance between Gaussians fitted to the features of two sets.

    ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), covariances with n - 1, in float64.
    real, fake: image tensors (N, C, H, W) or iterables of batches; with feature_extractor None
    they are feature tensors (N, D) already. Report it as `fd_shapes`, never as FID.
    """
    first = real if isinstance(real, torch.Tensor) else None
    if first is None:
        real = list(real)
        first = real[0]
    for name, x in (("real", real), ("fake", fake)):
        if isinstance(x, torch.Tensor) and x.shape[0] < 2:
            raise ValueError(f"{name} must hold at least 2 samples, got {x.shape[0]}")
    metric = fd_metric(feature_extractor, first, value_range=value_range)
    device = _device(feature_extractor, first.device)
    metric = metric.to(device)
    with _EvalMode(feature_extractor):
        for is_real, x in ((True, real), (False, fake)):
            for batch in _batches(x, batch_size):
                metric.update(batch.to(device), real=is_real)
    return float(metric.compute())


def frechet_report(real: torch.Tensor, fake: torch.Tensor, feature_extractor: nn.Module, *,
                   name: str = FD_NAME, generator: torch.Generator | None = None,
                   batch_size: int = 256,
                   value_range: tuple[float, float] | None = (-1.0, 1.0)) -> dict[str, float]:
    """{name: fake vs real, name + "_floor": real vs real}, both at the same sample size.

    Two disjoint random subsets A and B of `real`, each of n = min(len(fake), len(real) // 2):
    the distance is fake[:n] vs A and the floor is B vs A, so both carry the same small-n bias
    and a generator is as good as the data gets when its distance reaches the floor.
    """
    n = min(fake.shape[0], real.shape[0] // 2)
    if n < 2:
        raise ValueError(f"need >= 2 fake and >= 4 real samples, got {fake.shape[0]} fake, "
                         f"{real.shape[0]} real")
    order = torch.randperm(real.shape[0], generator=generator)
    a, b = real[order[:n]], real[order[n:2 * n]]
    kw = dict(batch_size=batch_size, value_range=value_range)
    return {name: frechet_distance(a, fake[:n], feature_extractor, **kw),
            f"{name}_floor": frechet_distance(a, b, feature_extractor, **kw)}


def real_floor(real: torch.Tensor, feature_extractor: nn.Module | None = None, *,
               size: int | None = None, generator: torch.Generator | None = None,
               **kw) -> float:
    """Frechet distance between two disjoint random subsets of `real` of `size` each (default
    half the set): the value a perfect generator would get at that sample size."""
    size = real.shape[0] // 2 if size is None else size
    if size < 2 or 2 * size > real.shape[0]:
        raise ValueError(f"size must be in [2, {real.shape[0] // 2}] (two disjoint subsets of "
                         f"the {real.shape[0]} real samples), got {size}")
    order = torch.randperm(real.shape[0], generator=generator)
    return frechet_distance(real[order[:size]], real[order[size:2 * size]], feature_extractor,
                            **kw)


def _as_named(x, names: Sequence[str] | None, what: str) -> dict[str, torch.Tensor]:
    """Logits or targets as {attribute: tensor}: from a dict, a tuple/list, or one tensor
    ((B, K) logits, (B,) targets, or (B, A) targets with one column per attribute)."""
    if isinstance(x, Mapping):
        return dict(x)
    if isinstance(x, torch.Tensor):
        if what == "targets" and x.dim() == 2:
            x = list(x.unbind(1))
        else:
            x = [x]
    x = list(x)
    names = list(names) if names is not None else \
        (["class"] if len(x) == 1 else [f"attr{i}" for i in range(len(x))])
    if len(names) != len(x):
        raise ValueError(f"names must give one name per attribute ({len(x)} in the {what}), "
                         f"got {names}")
    return dict(zip(names, x))


def conditional_accuracy(classifier: nn.Module, images, targets, *,
                         names: Sequence[str] | None = None,
                         batch_size: int = 256) -> dict[str, float]:
    """Accuracy of an independent classifier on generated images, per attribute.

    classifier(images) returns logits (B, K), a tuple/list of logits per attribute, or a dict
    {attribute: logits}. targets are what the images were conditioned on: (B,), (B, A) (one
    column per attribute, in the classifier's order), a list, or a dict with the same keys.
    Returns {attribute: accuracy}, plus "all" (every attribute right) when there are several.
    """
    if isinstance(images, torch.Tensor) and images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    device = _device(classifier, images.device)
    logits: dict[str, list[torch.Tensor]] = {}
    with _EvalMode(classifier):
        for batch in images.split(batch_size):
            out = _as_named(classifier(batch.to(device)), names, "classifier output")
            for k, v in out.items():
                logits.setdefault(k, []).append(v.argmax(-1).cpu())
    preds = {k: torch.cat(v) for k, v in logits.items()}
    want = _as_named(targets, list(preds) if not isinstance(targets, Mapping) else None,
                     "targets")
    if set(want) != set(preds):
        raise ValueError(f"targets must name the classifier's attributes {sorted(preds)}, "
                         f"got {sorted(want)}")
    right = {}
    for k, p in preds.items():
        t = want[k].reshape(-1).cpu()
        if t.shape != p.shape:
            raise ValueError(f"targets[{k!r}] must have {p.shape[0]} entries (one per image), "
                             f"got {t.shape[0]}")
        right[k] = p == t
    result = {k: r.float().mean().item() for k, r in right.items()}
    if len(right) > 1:
        result["all"] = torch.stack(list(right.values())).all(0).float().mean().item()
    return result
