"""Written contracts between the model families and the code that drives them.

`Generator` is what the generation task, the samplers and the studies may assume of an image
generator (the DiT, the U-Nets, or a user's own model): checked with `isinstance` (attributes and
`forward`) and by the tests over every registered generator.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

# The condition keywords a generator's forward takes, each optional (None: the null condition).
CONDITION_KWARGS = ("y", "caption_ids", "caption_mask", "cond_drop_mask")


@runtime_checkable
class Generator(Protocol):
    """An image denoiser: forward(x, t, **cond) -> a prediction of x's shape.

    x (B, in_chans, H, W) noisy images; t (B,) or a scalar: a float time in [0, 1] (flow
    matching) or integer DDPM steps; cond: the keywords of `CONDITION_KWARGS` it was built for:
    y (B,) class ids in [0, num_classes] (num_classes = the null class), caption_ids /
    caption_mask (B, L) (no real token = the null caption), cond_drop_mask (B,) bool (rows made
    unconditional). Output (B, out_chans, H, W): out_chans == in_chans, or 2 * in_chans with a
    learned variance (DiT's learn_sigma) in the second half, which `prediction` drops.
    """

    in_chans: int
    out_chans: int
    num_classes: int  # 0: not class-conditional

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                caption_ids: torch.Tensor | None = None,
                caption_mask: torch.Tensor | None = None,
                cond_drop_mask: torch.Tensor | None = None) -> torch.Tensor: ...


def prediction(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A generator's output without its learned-variance channels: (B, C, H, W) for input x
    (B, C, H, W), from out (B, C, H, W) or (B, 2C, H, W); ValueError for any other shape."""
    if out.shape == x.shape:
        return out
    c = x.shape[1]
    if out.shape == (x.shape[0], 2 * c, *x.shape[2:]):
        return out[:, :c]  # the second half is the variance these objectives ignore
    raise ValueError(f"a generator must return the input's shape {tuple(x.shape)} or twice its "
                     f"channels (a learned variance), got {tuple(out.shape)}")
