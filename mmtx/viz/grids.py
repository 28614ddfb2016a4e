"""Sample grids: generated images (N, C, H, W) in [-1, 1] as one PNG, written atomically.

    check_grid(1000, (3, 32, 32))              # refuses, before sampling, what PIL cannot hold
    save_grid(images, "grid.png", cols=8)      # 8 per row, 2 grey pixels between, each pixel 2x2
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid_size(n: int, image_shape, cols: int | None = None, pad: int = 2,
              scale: int = 2) -> tuple[int, int, int, int]:
    """(rows, cols, height, width), the last two in pixels, of the grid `save_grid` draws."""
    _, h, w = image_shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return rows, cols, (rows * (h + pad) + pad) * scale, (cols * (w + pad) + pad) * scale


def image_format(path, what: str = "out") -> str:
    """PIL's format for `path`'s suffix (grid.png -> PNG); another suffix is a ValueError."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ValueError(f"{what} {str(path)!r}: expected an image file name (.png, .jpg, ...), "
                         f"got the suffix {suffix or 'none'!r}")
    return fmt


def check_grid(n: int, image_shape, cols: int | None = None, pad: int = 2, scale: int = 2,
               what: str = "n") -> None:
    """Refuse a grid larger than PIL.Image.MAX_IMAGE_PIXELS: PIL would refuse to open it."""
    from PIL import Image

    if cols is not None and (isinstance(cols, bool) or not isinstance(cols, int) or cols < 1):
        raise ValueError(f"cols: expected an int >= 1 (images per row), got {cols!r}")
    _, _, height, width = grid_size(n, image_shape, cols, pad, scale)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and height * width > limit:
        raise ValueError(f"{what}: a grid of {n:,} images of {tuple(image_shape)} is "
                         f"{width:,} x {height:,} pixels, more than PIL's limit of {limit:,} "
                         f"(PIL.Image.MAX_IMAGE_PIXELS); ask for fewer images")


def save_grid(images: torch.Tensor, path, cols: int | None = None, pad: int = 2,
              scale: int = 2) -> Path:
    """Images (N, C, H, W) in [-1, 1] -> one PNG grid (`cols` per row, default ~sqrt(N)),
    `pad` grey pixels between cells, each pixel drawn `scale` x `scale`. Written atomically
    (mmtx.io): a full disk leaves no half-written image."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must be (N >= 1, 1 or 3, H, W), got shape "
                         f"{tuple(images.shape)}")
    from PIL import Image

    n, c, h, w = images.shape
    check_grid(n, (c, h, w), cols, pad, scale, what="images")
    fmt = image_format(path, "path")
    rows, cols, height, width = grid_size(n, (c, h, w), cols, pad, scale=1)
    pixels = to_uint8(images)  # (N, H, W, C)
    canvas = np.full((height, width, c), 128, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y:y + h, x:x + w] = pixels[i]
    if scale > 1:
        canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(tmp, format=fmt)
    return path
