"""Compact Convolutional Transformer (CCT; Hassani et al., 2021, "Escaping the Big Data Paradigm
with Compact Transformers", arXiv:2104.05704): a conv tokenizer, the mmtx.layers Encoder, and
sequence pooling instead of a class token.

    images (B, C, H, W) -> [conv k x k -> ReLU -> max-pool 3/2] x n -> tokens (B, N, dim)
    -> + positions -> Encoder -> seq-pool: softmax(x w) over the N tokens, weighted sum -> head

The convolutions give ViT the locality and translation bias a CNN has, which is why CCT trains
well on small data sets. The paper's claims (not reproduced here): its best model reaches 98%
CIFAR-10 accuracy trained from scratch with 3.7 M parameters (CCT-7/3x1, a long schedule), and
its smallest models have 0.28 M parameters. CCT-7/3x1 is also quoted at 94.78% (200 epochs)
and 96.53% (300 epochs) on CIFAR-10 (not re-checked against the paper here).

Names follow the paper: cct_<layers>_<kernel>x<conv layers>_<image size>.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import ConvStem, Encoder, LearnedPositionEmbedding, sincos_2d_encoding
from .examples import images_to_logits, register_example
from .registry import register_model


class ConvTokenizer(nn.Module):
    """n x (Conv k x k, stride 1, no bias -> ReLU -> MaxPool 3/2); (B,C,H,W) -> (B, N, dim).
    The convolutions are the shared `ConvStem` with pooling (the ViT's conv stem is the same
    stem without it)."""

    def __init__(self, in_chans: int, dim: int, kernel_size: int = 3, num_layers: int = 1,
                 hidden: int = 64):
        super().__init__()
        self.layers = ConvStem(in_chans, dim, num_layers, kernel_size=kernel_size, hidden=hidden,
                               act="relu", bias=False, pool=True)
        self.in_chans, self.num_layers = in_chans, num_layers

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return self.layers.grid_for(height, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images).flatten(2).transpose(1, 2)  # (B, dim, h, w) -> (B, h*w, dim)


class CCT(nn.Module):
    """Conv tokenizer + Encoder + sequence pooling. Any image size: learned positions are
    resized over the token grid, sin-cos ones recomputed."""

    def __init__(self, img_size=32, in_chans: int = 3, num_classes: int = 10,
                 dim: int = 256, depth: int = 7, num_heads: int = 4, mlp_ratio: float = 2.0, *,
                 kernel_size: int = 3, conv_layers: int = 1, conv_hidden: int = 64,
                 pos_embed: str = "learn", drop_rate: float = 0.0, attn_drop_rate: float = 0.1,
                 drop_path_rate: float = 0.1):
        super().__init__()
        if pos_embed not in ("learn", "sincos", "none"):
            raise ValueError(f"pos_embed must be 'learn', 'sincos' or 'none', got {pos_embed!r}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no head), got {num_classes}")
        self.dim, self.num_classes, self.pos_kind = dim, num_classes, pos_embed
        self.tokenizer = ConvTokenizer(in_chans, dim, kernel_size, conv_layers, conv_hidden)
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.grid = self.tokenizer.grid_for(h, w)
        self.pos_embed = LearnedPositionEmbedding(None, dim, grid=self.grid) \
            if pos_embed == "learn" else None
        self.encoder = Encoder(depth, dim, num_heads, mlp_ratio, drop_path=drop_path_rate,
                               qkv_bias=False, norm_eps=1e-5, attn_drop=attn_drop_rate,
                               proj_drop=drop_rate)
        self.attn_pool = nn.Linear(dim, 1)  # sequence pooling: one score per token
        self.num_features = dim
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """As the paper's code: trunc-normal(0.02) linears with zero bias, Kaiming convs."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed.weight, std=0.2)  # the paper's code uses 0.2

    def forward_features(self, images: torch.Tensor, return_attn: bool = False):
        """(B, C, H, W) -> tokens (B, N, dim) [, Intermediates with per-block attention maps]."""
        grid = self.tokenizer.grid_for(*images.shape[-2:])
        x = self.tokenizer(images)  # (B, N, dim)
        if self.pos_embed is not None:
            x = self.pos_embed(x, grid=grid)
        elif self.pos_kind == "sincos":
            x = x + sincos_2d_encoding(*grid, self.dim).to(x.device, x.dtype)
        return self.encoder(x, return_attn=return_attn)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        w = self.attn_pool(x).softmax(dim=1)  # (B, N, 1) weights over the tokens
        x = (w.transpose(1, 2) @ x).squeeze(1)  # (B, 1, N) @ (B, N, dim) -> (B, dim)
        return x if pre_logits else self.head(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


def _cct(defaults: dict, overrides: dict) -> CCT:
    return CCT(**{**defaults, **overrides})


@register_model(family="hybrid", task="classification")
def cct_2_3x1_8(**kw) -> CCT:
    """CCT-2 with one conv layer for 8-16 px images (8x8 digits -> 16 tokens)."""
    return _cct(dict(img_size=8, dim=128, depth=2, num_heads=2, mlp_ratio=1.0, conv_layers=1), kw)


@register_model(family="hybrid", task="classification")
def cct_2_3x2_32(**kw) -> CCT:
    return _cct(dict(img_size=32, dim=128, depth=2, num_heads=2, mlp_ratio=1.0, conv_layers=2), kw)


@register_model(family="hybrid", task="classification")
def cct_7_3x1_32(**kw) -> CCT:
    return _cct(dict(img_size=32, dim=256, depth=7, num_heads=4, mlp_ratio=2.0, conv_layers=1), kw)


register_example("hybrid", images_to_logits(dim=32, depth=1, num_heads=2))
