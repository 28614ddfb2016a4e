"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers").

Raw attention of one layer says little about which input patches an output depends on, since
each layer mixes tokens again. Rollout follows the mixing through the stack: per layer the
head-fused attention A (L, L) plus the identity for the residual path, rows renormalised,
A' = (A + I) / 2; the product R = A'_n ... A'_1 estimates how much each input token flows into
each output token.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

_FUSIONS = ("mean", "max", "min")


def attention_rollout(attn_maps, head_fusion: str = "mean",
                      discard_ratio: float = 0.0) -> torch.Tensor:
    """Per-layer attention (B, H, L, L) list -> rollout (B, L, L); row i: input weights of token i.

    discard_ratio drops that fraction of the lowest fused weights per layer (keeping the
    diagonal), a common sharpening from the authors' follow-up code; 0 is plain rollout.
    """
    if not attn_maps:
        raise ValueError("attn_maps must be a non-empty list of (B, H, L, L) tensors, got none")
    if head_fusion not in _FUSIONS:
        raise ValueError(f"head_fusion must be one of {_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    rollout = None
    for a in attn_maps:
        if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"each attention map must be (B, H, L, L), got {tuple(a.shape)}")
        a = a.detach().float()
        fused = {"mean": a.mean(1), "max": a.amax(1), "min": a.amin(1)}[head_fusion]  # (B, L, L)
        eye = torch.eye(fused.shape[-1], device=fused.device)
        if discard_ratio > 0:
            flat = fused.flatten(1)  # (B, L*L)
            k = int(flat.shape[1] * discard_ratio)
            low = flat.topk(k, dim=1, largest=False).indices
            flat = flat.scatter(1, low, 0.0).view_as(fused)
            fused = torch.where(eye.bool(), fused, flat)
        fused = 0.5 * fused + 0.5 * eye  # the residual connection carries half the signal
        fused = fused / fused.sum(-1, keepdim=True)
        rollout = fused if rollout is None else fused @ rollout  # (B, L, L)
    return rollout


def supports_rollout(model) -> bool:
    """Whether `rollout_maps` can read `model`: a patch-token model returning attention maps."""
    return callable(getattr(model, "forward_features", None)) and hasattr(model, "patch_embed")


@torch.no_grad()
def rollout_maps(model, images: torch.Tensor, head_fusion: str = "mean",
                 discard_ratio: float = 0.0) -> torch.Tensor:
    """Rollout heatmaps (B, H, W) in [0, 1] at image resolution for a ViT (or any model with
    `forward_features(x, return_attn=True)`, `num_prefix_tokens` and a `patch_embed`).

    With a class token the map is the class token's row; a mean-pooled model reads out the average
    of the patch tokens, so its map is the mean of the patch rows.
    """
    was_training = model.training
    model.eval()
    _, inter = model.forward_features(images, return_attn=True)
    model.train(was_training)
    rollout = attention_rollout(inter.self_attn, head_fusion, discard_ratio)  # (B, L, L)
    prefix = getattr(model, "num_prefix_tokens", 0)
    if prefix and getattr(model, "pool", "token") == "token":
        weights = rollout[:, 0, prefix:]  # (B, N)
    else:
        weights = rollout[:, prefix:, prefix:].mean(1)  # (B, N)
    gh, gw = model.patch_embed.grid_for(*images.shape[-2:])
    maps = weights.reshape(-1, 1, gh, gw)  # (B, 1, gh, gw)
    maps = F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
    maps = maps[:, 0]  # (B, H, W)
    lo = maps.amin((1, 2), keepdim=True)
    hi = maps.amax((1, 2), keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


def plot_rollout(images: torch.Tensor, maps: torch.Tensor, path, titles=None, ncols: int = 8,
                 alpha: float = 0.5, cmap: str = "jet") -> Path:
    """Save a PNG grid: each image with its rollout map overlaid. images (B, C, H, W) in any
    range (each is min-max scaled for display), maps (B, H, W). Returns the path."""
    from .plots import display_image, plt, save_figure  # plots picks the file-only backend

    if images.dim() != 4 or maps.dim() != 3 or images.shape[0] != maps.shape[0]:
        raise ValueError(f"images must be (B, C, H, W) and maps (B, H, W) with the same B, got "
                         f"{tuple(images.shape)} and {tuple(maps.shape)}")
    if titles is not None and len(titles) != images.shape[0]:
        raise ValueError(f"titles must have one entry per image ({images.shape[0]}), "
                         f"got {len(titles)}")
    b = images.shape[0]
    ncols = min(ncols, b)
    nrows = (b + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(2 * ncols, 2 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= b:
            continue
        img = display_image(images[i])
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.imshow(maps[i].detach().float().cpu().numpy(), cmap=cmap, alpha=alpha)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
