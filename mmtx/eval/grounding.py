"""The pointing game (Zhang et al., 2016): does a map's peak fall on the object it is about?

Maps here are attention over a grid of image patches, so the peak is a patch: a hit when that
patch overlaps the object's mask. The baseline is a patch chosen at random: the share of the
grid's patches that overlap the mask (the object's share of the image, at patch resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_coverage(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool pixel masks -> (N, gh, gw) bool: the patches holding any object pixel."""
    if masks.dim() != 3:
        raise ValueError(f"masks: expected (N, H, W), got {tuple(masks.shape)}")
    gh, gw = grid
    h, w = masks.shape[-2:]
    if h % gh or w % gw:
        raise ValueError(f"masks of {h}x{w} pixels do not tile into a {gh}x{gw} patch grid")
    return F.max_pool2d(masks[:, None].float(), (h // gh, w // gw))[:, 0] > 0  # (N, gh, gw)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """maps (N, gh, gw) attention, masks (N, H, W) bool -> (hit (N,) bool, baseline (N,) float):
    whether each map's peak patch overlaps its mask, and the chance a random patch does."""
    if maps.dim() != 3 or len(maps) != len(masks):
        raise ValueError(f"maps (N, gh, gw) and masks (N, H, W) expected with one N, got "
                         f"{tuple(maps.shape)} and {tuple(masks.shape)}")
    cover = patch_coverage(masks.bool(), tuple(maps.shape[-2:]))  # (N, gh, gw)
    peak = maps.flatten(1).argmax(1)  # (N,)
    hit = cover.flatten(1).gather(1, peak[:, None])[:, 0]
    return hit, cover.flatten(1).float().mean(1)
