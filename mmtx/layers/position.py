"""Position information: fixed sinusoidal tables (1-D, 2-D), learned tables, rotary embeddings."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoidal_encoding(length: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """(length, dim) table of "Attention Is All You Need": sin on even channels, cos on odd.

    PE[p, 2i] = sin(p / base^(2i/dim)), PE[p, 2i+1] = cos(p / base^(2i/dim)).
    """
    if length <= 0 or dim <= 0 or dim % 2:
        raise ValueError(f"length must be > 0 and dim even and > 0, got length={length}, "
                         f"dim={dim}")
    pos = torch.arange(length, dtype=torch.float64)[:, None]  # (L, 1)
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table.float()


def sincos_2d_encoding(height: int, width: int, dim: int) -> torch.Tensor:
    """(height * width, dim) fixed table for a patch grid, row-major (the order of `patchify`).

    The first dim/2 channels encode the row, the last dim/2 the column (MAE's layout).
    """
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for a 2-D sin-cos table, got {dim}")
    rows = sinusoidal_encoding(height, dim // 2)  # (H, dim/2)
    cols = sinusoidal_encoding(width, dim // 2)  # (W, dim/2)
    return torch.cat([rows[:, None].expand(height, width, -1),
                      cols[None, :].expand(height, width, -1)], dim=-1).reshape(height * width, dim)


class LearnedPositionEmbedding(nn.Module):
    """A learned (num_positions, dim) table added to the tokens, for sequences or patch grids.

    With `grid=(h, w)` the table covers `num_prefix` leading tokens (class token, registers) then an
    h x w patch grid; `forward(x, grid=(h2, w2))` bicubically resizes the grid part when an image
    of another size comes in, which is how a checkpoint is used at a new resolution.
    """

    def __init__(self, num_positions: int | None, dim: int, *, grid: tuple[int, int] | None = None,
                 num_prefix: int = 0, init_std: float = 0.02):
        super().__init__()
        if grid is not None:
            num_positions = num_prefix + grid[0] * grid[1]
        if not num_positions or num_positions <= 0:
            raise ValueError(f"num_positions must be > 0, got {num_positions}")
        self.grid, self.num_prefix = grid, num_prefix
        self.weight = nn.Parameter(torch.zeros(1, num_positions, dim))
        nn.init.trunc_normal_(self.weight, std=init_std)

    def table(self, length: int | None = None, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """(1, L, dim): the table for a sequence of `length` or a patch grid of `grid`."""
        if grid is None or self.grid is None or tuple(grid) == tuple(self.grid):
            n = self.weight.shape[1] if length is None else length
            if n > self.weight.shape[1]:
                raise ValueError(f"sequence length {n} exceeds the position table "
                                 f"({self.weight.shape[1]} positions)")
            return self.weight[:, :n]
        return torch.cat([self.weight[:, :self.num_prefix],
                          resize_grid_table(self.weight[:, self.num_prefix:], self.grid, grid)], 1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        return x + self.table(x.shape[1] if grid is None else None, grid).to(x.dtype)


def resize_grid_table(table: torch.Tensor, old: tuple[int, int], new: tuple[int, int]):
    """(1, h*w, dim) -> (1, h2*w2, dim) by bicubic interpolation over the grid.

    antialias=True, as timm resamples position tables, so converted timm models give timm's
    numbers at any image size (it changes the cubic kernel when upsampling too)."""
    dim = table.shape[-1]
    t = table.reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)  # (1, dim, h, w)
    t = F.interpolate(t.float(), size=tuple(new), mode="bicubic", align_corners=False,
                      antialias=True)
    return t.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], dim).to(table.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer): rotates q and k so q.k depends on i - j only.

    1-D by default. With `grid=(h, w)` it is 2-D axial: half the rotary channels follow the row,
    half the column, for patch tokens in `patchify` order; `num_prefix` leading tokens (class
    token) are left unrotated. Call as `q, k = rope(q, k, offset)` on (B, H, L, head_dim) tensors;
    `offset` is the position of the first token (the KV-cache length while decoding).
    """

    def __init__(self, head_dim: int, base: float = 10000.0, *,
                 grid: tuple[int, int] | None = None, num_prefix: int = 0):
        super().__init__()
        axes = 1 if grid is None else 2
        if head_dim % (2 * axes):
            raise ValueError(f"head_dim must be divisible by {2 * axes}, got {head_dim}")
        self.head_dim, self.base, self.grid, self.num_prefix = head_dim, base, grid, num_prefix
        d = head_dim // axes
        self.register_buffer("inv_freq", base ** (-torch.arange(0, d, 2).float() / d),
                             persistent=False)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (L,) or (L, 2) -> angles (L, head_dim)."""
        pos = positions.float()[:, None] if positions.dim() == 1 else positions.float()
        theta = (pos[:, :, None] * self.inv_freq.to(pos.device)).flatten(1)  # (L, axes * d/2)
        return torch.cat([theta, theta], dim=-1)  # duplicated for the rotate-half pairing

    def positions(self, length: int, offset: int, device) -> torch.Tensor:
        if self.grid is None:
            return torch.arange(offset, offset + length, device=device)
        h, w = self.grid
        if length != h * w:
            raise ValueError(f"2-D rotary expects {h * w} patch tokens for grid {self.grid}, "
                             f"got {length}")
        return torch.stack(torch.meshgrid(torch.arange(h, device=device),
                                          torch.arange(w, device=device), indexing="ij"),
                           dim=-1).reshape(-1, 2)  # (h*w, 2) row, col

    def rotate(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        prefix, x = x[..., :self.num_prefix, :], x[..., self.num_prefix:, :]
        theta = self.angles(self.positions(x.shape[-2], offset, x.device))  # (L, head_dim)
        cos, sin = theta.cos().to(x.dtype), theta.sin().to(x.dtype)
        return torch.cat([prefix, x * cos + _rotate_half(x) * sin], dim=-2)

    def forward(self, q, k, offset: int = 0):
        return self.rotate(q, offset), self.rotate(k, offset)

