"""Images <-> patch tokens: a learned patch embedding, and the exact reshapes both ways."""

from __future__ import annotations

import torch
import torch.nn as nn


def _to_2tuple(x) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else tuple(x)


def _check_images(images: torch.Tensor, patch: tuple[int, int], channels: int | None = None):
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():  # e.g. uint8 pixels straight from a file
        raise ValueError(f"images must be a float tensor (normalised as in training), got "
                         f"{images.dtype}")
    _, c, h, w = images.shape
    if channels is not None and c != channels:
        raise ValueError(f"images must have {channels} channels, got {c} "
                         f"(shape {tuple(images.shape)})")
    if h % patch[0] or w % patch[1]:
        raise ValueError(f"image size must be divisible by patch_size {patch}, got H={h}, W={w}")


def patchify(images: torch.Tensor, patch_size) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C); patches row-major, pixels (py, px, c) inside."""
    p = _to_2tuple(patch_size)
    _check_images(images, p)
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // p[0], p[0], W // p[1], p[1])  # (B, C, gh, py, gw, px)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, py, px, C)
    return x.reshape(B, (H // p[0]) * (W // p[1]), p[0] * p[1] * C)


def unpatchify(tokens: torch.Tensor, patch_size, height: int, width: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, height, width); the inverse of `patchify`."""
    p = _to_2tuple(patch_size)
    if height % p[0] or width % p[1]:
        raise ValueError(f"height, width must be divisible by patch_size {p}, "
                         f"got {height}, {width}")
    gh, gw = height // p[0], width // p[1]
    B, N, D = tokens.shape
    if N != gh * gw or D % (p[0] * p[1]):
        raise ValueError(f"tokens must be (B, {gh * gw}, p*p*C) for a {height}x{width} image "
                         f"with patch {p}, got shape {tuple(tokens.shape)}")
    C = D // (p[0] * p[1])
    x = tokens.reshape(B, gh, gw, p[0], p[1], C)  # (B, gh, gw, py, px, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, py, gw, px)
    return x.reshape(B, C, height, width)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches, each linearly projected to `dim` (a strided convolution).

    (B, C, H, W) -> (B, H/p * W/p, dim). `img_size` sets the default grid (for position tables);
    any image whose sides are divisible by the patch size is accepted.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, dim: int = 768,
                 bias: bool = True):
        super().__init__()
        self.img_size, self.patch_size = _to_2tuple(img_size), _to_2tuple(patch_size)
        if self.img_size[0] % self.patch_size[0] or self.img_size[1] % self.patch_size[1]:
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size "
                             f"{self.patch_size}")
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, dim, self.patch_size, stride=self.patch_size, bias=bias)

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return (height // self.patch_size[0], width // self.patch_size[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, self.patch_size, self.in_chans)
        # (B, dim, gh, gw) -> (B, N, dim); contiguous, or every later norm and residual add of
        # a model without a class token to concatenate works on a strided view (~5-13% slower)
        return self.proj(images).flatten(2).transpose(1, 2).contiguous()
