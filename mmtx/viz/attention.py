"""Where a captioner looked for each word: cross-attention maps over the image (PNG)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F


def plot_word_attention(images: torch.Tensor, captions: list[str], maps: torch.Tensor, path,
                        max_words: int = 12) -> Path:
    """One row per image: the image, then one panel per word of its caption with that word's
    attention map (B, T, gh, gw), upsampled to the image, overlaid. images (B, C, H, W) in any
    range (each is min-max scaled for display)."""
    from .plots import display_image, plt, save_figure  # plots picks the file-only backend

    if images.dim() != 4 or maps.dim() != 4 or len(images) != len(maps) != len(captions):
        raise ValueError(f"images (B, C, H, W), maps (B, T, gh, gw) and B captions expected, got "
                         f"{tuple(images.shape)}, {tuple(maps.shape)} and {len(captions)}")
    words = [c.split()[:max_words] for c in captions]
    cols = 1 + max((len(w) for w in words), default=0)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.6 * cols, 1.8 * len(images)),
                             squeeze=False)
    size = images.shape[-2:]
    up = F.interpolate(maps.float().cpu(), size=size, mode="bilinear", align_corners=False)
    for b, row in enumerate(axes):
        img = display_image(images[b])
        for ax in row:
            ax.axis("off")
        row[0].imshow(img, cmap="gray" if img.ndim == 2 else None)
        row[0].set_title("image", fontsize=8)
        for t, word in enumerate(words[b]):
            if t >= up.shape[1]:
                break
            row[t + 1].imshow(img, cmap="gray" if img.ndim == 2 else None)
            row[t + 1].imshow(up[b, t].numpy(), cmap="jet", alpha=0.5)
            row[t + 1].set_title(word, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
