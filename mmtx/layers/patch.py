"""Images <-> patch tokens: a learned patch embedding (optionally over shifted copies of the
image), the exact reshapes both ways, and a small convolutional stem that runs before either."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import make_act


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


def diagonal_shifts(images: torch.Tensor, shift) -> torch.Tensor:
    """(B, C, H, W) -> (B, 5C, H, W): the image, then four copies moved diagonally by `shift`
    (sy, sx) pixels, zero where a copy has no pixel. Channel blocks, at pixel (i, j):
    x[i, j], x[i - sy, j - sx], x[i - sy, j + sx], x[i + sy, j - sx], x[i + sy, j + sx]."""
    sy, sx = _to_2tuple(shift)
    x = F.pad(images, (sx, sx, sy, sy))  # (B, C, H + 2 sy, W + 2 sx)
    H, W = images.shape[-2:]
    copies = [x[..., dy:dy + H, dx:dx + W] for dy in (0, 2 * sy) for dx in (0, 2 * sx)]
    return torch.cat([images, *copies], dim=1)  # (B, 5C, H, W)


def shifted_patches(images: torch.Tensor, patch_size) -> torch.Tensor:
    """Shifted Patch Tokenization's patches (Lee et al., 2021, "Vision Transformer for
    Small-Size Datasets"): (B, C, H, W) -> (B, N, p*p*5C), `patchify` of the image concatenated
    with its four half-patch diagonal shifts (`diagonal_shifts`). Each token thus also holds
    the pixels half a patch beyond its borders, which a plain patch never sees."""
    p = _to_2tuple(patch_size)
    _check_images(images, p)
    if min(p) < 2:
        raise ValueError(f"shifted patches need patch_size >= 2 (the shift is half a patch), "
                         f"got {p}")
    return patchify(diagonal_shifts(images, (p[0] // 2, p[1] // 2)), p)


class ConvStem(nn.Sequential):
    """n x (Conv k x k, stride 1, same padding -> activation [-> MaxPool 3/2]) at pixel level:
    (B, in_chans, H, W) -> (B, out_chans, H', W'), H' = H without pooling.

    Early convolutions give a transformer the locality a CNN has (Xiao et al., 2021, "Early
    convolutions help transformers see better"; CCT's tokenizer is this stem with pooling).
    Layers are `hidden` wide (default out_chans) except the last.
    """

    def __init__(self, in_chans: int, out_chans: int, num_layers: int = 2, *,
                 kernel_size: int = 3, hidden: int | None = None, act: str = "relu",
                 bias: bool = False, pool: bool = False):
        if num_layers <= 0 or out_chans <= 0:
            raise ValueError(f"num_layers and out_chans must be > 0, got {num_layers}, "
                             f"{out_chans}")
        chans = [in_chans] + [hidden or out_chans] * (num_layers - 1) + [out_chans]
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=bias),
                       make_act(act)]
            if pool:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        super().__init__(*layers)
        self.in_chans, self.out_chans, self.num_layers, self.pool = \
            in_chans, out_chans, num_layers, pool

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The output's (H', W') for an input of height x width."""
        for _ in range(self.num_layers if self.pool else 0):  # max-pool(3, 2, 1): half, rounded up
            height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        return height, width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"images must be (B, {self.in_chans}, H, W), got shape "
                             f"{tuple(images.shape)}")
        return super().forward(images)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches, each linearly projected to `dim` (a strided convolution).

    (B, C, H, W) -> (B, H/p * W/p, dim). `img_size` sets the default grid (for position tables);
    any image whose sides are divisible by the patch size is accepted.

    spt=True is Shifted Patch Tokenization (Lee et al., 2021): each patch of the image and of its
    four half-patch diagonal shifts (`shifted_patches`, p*p*5C values), then LayerNorm, then a
    Linear to `dim`, as the paper's tokenizer does. The grid and the token count are unchanged.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, dim: int = 768,
                 bias: bool = True, *, spt: bool = False):
        super().__init__()
        self.img_size, self.patch_size = _to_2tuple(img_size), _to_2tuple(patch_size)
        if self.img_size[0] % self.patch_size[0] or self.img_size[1] % self.patch_size[1]:
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size "
                             f"{self.patch_size}")
        self.in_chans, self.spt = in_chans, spt
        if spt:
            if min(self.patch_size) < 2:
                raise ValueError(f"spt=True needs patch_size >= 2 (the shift is half a patch), "
                                 f"got {self.patch_size}")
            patch_dim = 5 * in_chans * self.patch_size[0] * self.patch_size[1]
            self.norm = nn.LayerNorm(patch_dim)
            self.proj = nn.Linear(patch_dim, dim, bias=bias)
        else:
            self.proj = nn.Conv2d(in_chans, dim, self.patch_size, stride=self.patch_size,
                                  bias=bias)

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
        if self.spt:
            return self.proj(self.norm(shifted_patches(images, self.patch_size)))  # (B, N, dim)
        # (B, dim, gh, gw) -> (B, N, dim); contiguous, or every later norm and residual add of
        # a model without a class token to concatenate works on a strided view (~5-13% slower)
        return self.proj(images).flatten(2).transpose(1, 2).contiguous()
