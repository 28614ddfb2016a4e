"""Vision Transformer (Dosovitskiy et al., 2021) on mmtx.layers, and conversion from timm.

    images (B, C, H, W) -> PatchEmbed -> [class token] + positions -> Encoder -> pool -> head

Any image whose sides are divisible by the patch size works: learned position tables are
resized over the patch grid (bicubic) and fixed 2-D sin-cos tables are recomputed for it.
`from_timm` turns a timm `VisionTransformer` (e.g. one holding a pretrained checkpoint) into
this model with matching eval-mode logits.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import (
    ConvStem,
    Encoder,
    Intermediates,
    LearnedPositionEmbedding,
    PatchEmbed,
    make_norm,
    resize_grid_table,
    sincos_2d_encoding,
)
from .convert.timm import read_timm_checkpoint, timm_vit_kwargs, timm_vit_state_dict
from .examples import images_to_logits, register_example
from .registry import register_model

_POOLS = ("token", "avg", "max", "avgmax")
_POS = ("learn", "sincos", "none")


class ViT(nn.Module):
    """A ViT classifier. `forward_features` -> tokens (B, L, dim); `forward_head` -> logits.

    pool: "token" (class token, needs class_token=True) or "avg" / "max" / "avgmax" over the
    patch tokens. fc_norm (default: on for non-token pools, as timm/BEiT do) moves the final
    norm after pooling. pre_logits_dim adds the original ViT's Linear+tanh representation layer.
    no_embed_class: the position table covers patches only (DeiT-3 / big_vision layout).

    Options for small data sets, each off by default: spt (Shifted Patch Tokenization) and lsa
    (Locality Self-Attention), the two of Lee et al., 2021, "Vision Transformer for Small-Size
    Datasets" (see `PatchEmbed` and `Attention`); conv_stem=C runs two 3x3 convolutions C wide
    (`ConvStem`, CCT's tokenizer convolutions without the pooling) before the patch projection,
    so the patch grid and the token count stay as they are.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, num_classes: int = 1000,
                 dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, *,
                 pool: str = "token", class_token: bool = True, pos_embed: str = "learn",
                 no_embed_class: bool = False, pre_norm: bool = False, final_norm: bool = True,
                 fc_norm: bool | None = None, pre_logits_dim: int | None = None,
                 qkv_bias: bool = True, qk_norm: bool = False, layer_scale: float | None = None,
                 norm: str = "layer", norm_eps: float = 1e-6, act: str = "gelu",
                 drop_rate: float = 0.0, pos_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, drop_path_rate: float = 0.0, spt: bool = False,
                 lsa: bool = False, conv_stem: int = 0):
        super().__init__()
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
        if pos_embed not in _POS:
            raise ValueError(f"pos_embed must be one of {_POS}, got {pos_embed!r}")
        if pool == "token" and not class_token:
            raise ValueError("pool='token' needs class_token=True; use pool='avg' without one")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no head), got {num_classes}")
        self.num_classes, self.pool, self.dim = num_classes, pool, dim
        self.num_prefix_tokens = int(class_token)
        self.no_embed_class = no_embed_class
        fc_norm = pool != "token" if fc_norm is None else fc_norm

        if conv_stem < 0:
            raise ValueError(f"conv_stem must be >= 0 (0 = none), got {conv_stem}")
        self.stem = ConvStem(in_chans, conv_stem, 2) if conv_stem else None
        # A pre-norm (CLIP) makes the patch bias redundant, so timm drops it; so do we.
        self.patch_embed = PatchEmbed(img_size, patch_size, conv_stem or in_chans, dim,
                                      bias=not pre_norm, spt=spt)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.pos_kind = pos_embed
        pos_prefix = 0 if no_embed_class else self.num_prefix_tokens
        if pos_embed == "learn":
            self.pos_embed = LearnedPositionEmbedding(None, dim, grid=self.patch_embed.grid_size,
                                                      num_prefix=pos_prefix)
        else:
            self.pos_embed = None
        if pos_embed == "sincos":  # fixed, not saved: it is recomputed for any grid
            gh, gw = self.patch_embed.grid_size
            self.register_buffer("pos_table", sincos_2d_encoding(gh, gw, dim)[None],
                                 persistent=False)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.norm_pre = make_norm(norm, dim, norm_eps) if pre_norm else nn.Identity()
        self.encoder = Encoder(depth, dim, num_heads, mlp_ratio, drop_path=drop_path_rate,
                               final_norm=final_norm and not fc_norm, qkv_bias=qkv_bias,
                               qk_norm=qk_norm, layer_scale=layer_scale, norm=norm,
                               norm_eps=norm_eps, act=act, attn_drop=attn_drop_rate,
                               proj_drop=proj_drop_rate, lsa=lsa)
        self.fc_norm = make_norm(norm, dim, norm_eps) if final_norm and fc_norm else nn.Identity()
        self.pre_logits = nn.Sequential(nn.Linear(dim, pre_logits_dim), nn.Tanh()) \
            if pre_logits_dim else nn.Identity()
        self.num_features = pre_logits_dim or dim
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.init_weights()

    def init_weights(self) -> None:
        """timm's ViT init: trunc-normal(0.02) linears and learned positions, zero biases.

        The patch projection is initialised like a Linear over the flattened patch (Xavier, as in
        MAE) rather than Conv2d's fan-in default; the class token starts near zero (1e-6) so that
        it begins as a neutral query. The optional stem's convolutions: Kaiming-normal, for the
        ReLUs after them (as CCT's tokenizer). LSA's scales keep their 1/sqrt(head_dim).
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.patch_embed.proj.bias is not None:
            nn.init.zeros_(self.patch_embed.proj.bias)
        for conv in self.stem or ():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed.weight, std=0.02)

    def _sincos(self, grid, ref: torch.Tensor) -> torch.Tensor:
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_table.to(ref.dtype)
        return sincos_2d_encoding(*grid, self.dim)[None].to(ref.device, ref.dtype)  # (1, N, dim)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> tokens (B, prefix + N, dim) with positions added."""
        grid = self.patch_embed.grid_for(*images.shape[-2:])
        if self.stem is not None:
            images = self.stem(images)  # (B, conv_stem, H, W)
        x = self.patch_embed(images)  # (B, N, dim)
        if self.pos_kind == "sincos":
            x = x + self._sincos(grid, x)
        elif self.pos_embed is not None and self.no_embed_class:
            x = self.pos_embed(x, grid=grid)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, dim)
        if self.pos_embed is not None and not self.no_embed_class:
            x = self.pos_embed(x, grid=grid)
        return self.norm_pre(self.pos_drop(x))

    def forward_features(self, images: torch.Tensor, return_attn: bool = False,
                         return_hidden: bool = False):
        """Tokens after the encoder (B, L, dim); with return_attn / return_hidden also the
        Intermediates (self_attn[i] (B, heads, L, L) per block, hidden states)."""
        x = self.embed(images)
        return self.encoder(x, return_attn=return_attn, return_hidden=return_hidden)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, L, dim) -> logits (B, num_classes), or the pooled features with pre_logits."""
        if self.pool == "token":
            x = x[:, 0]  # (B, dim) the class token
        else:
            patches = x[:, self.num_prefix_tokens:]  # (B, N, dim)
            if self.pool == "avg":
                x = patches.mean(1)
            elif self.pool == "max":
                x = patches.amax(1)
            else:
                x = 0.5 * (patches.amax(1) + patches.mean(1))
        x = self.head_drop(self.pre_logits(self.fc_norm(x)))
        return x if pre_logits else self.head(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def set_img_size(self, img_size) -> None:
        """Rebuild for a new default image size; resizes the learned table to the new grid."""
        old = self.patch_embed.grid_size
        pe = PatchEmbed(img_size, self.patch_embed.patch_size, self.patch_embed.in_chans, self.dim)
        self.patch_embed.img_size = pe.img_size
        new = self.patch_embed.grid_size
        if self.pos_embed is not None and new != old:
            pos = self.pos_embed
            p = pos.num_prefix
            with torch.no_grad():
                grid_part = resize_grid_table(pos.weight[:, p:], old, new)  # (1, h2*w2, dim)
                table = torch.cat([pos.weight[:, :p], grid_part], 1)
            pos.weight = nn.Parameter(table)
            pos.grid = new
        if self.pos_kind == "sincos":
            self.pos_table = sincos_2d_encoding(*new, self.dim)[None].to(self.pos_table.device)

    def no_weight_decay(self) -> set[str]:
        """Parameter names an optimizer should not decay (timm's convention)."""
        return {"cls_token", "pos_embed.weight"}


# --- timm interop (the reading of timm models is in convert/timm.py) ---------------------------


def from_timm(timm_vit: nn.Module, img_size=None) -> ViT:
    """Convert a timm VisionTransformer (any weights) into an mmtx ViT with the same outputs.

    `img_size` (optional) builds the ViT for another resolution and resizes the learned position
    table to the new patch grid (bicubic), which is how a checkpoint is fine-tuned at a new size.
    """
    model = ViT(**timm_vit_kwargs(timm_vit, _POOLS))
    model.load_state_dict(timm_vit_state_dict(timm_vit), strict=True)
    if img_size is not None:
        model.set_img_size(img_size)
    return model.to(next(timm_vit.parameters()).device).train(timm_vit.training)


def load_timm_checkpoint(path, timm_name: str, resize_to=None, **timm_kwargs) -> ViT:
    """Convert a timm ViT checkpoint a user has on disk (.safetensors) into an mmtx ViT.

    Builds `timm.create_model(timm_name, pretrained=False, **timm_kwargs)` (so img_size,
    num_classes, ... must describe the checkpoint), loads the file into it and converts it with
    `from_timm`; `resize_to` then moves it to another image size. Nothing is downloaded and
    nothing is unpickled.
    """
    return from_timm(read_timm_checkpoint(path, timm_name, **timm_kwargs), img_size=resize_to)


# --- registered sizes ------------------------------------------------------------------------


# Tests over every registered model: one 32-wide block over 4 px patches of 8 px images.
register_example("vit", images_to_logits(patch_size=4, dim=32, depth=1, num_heads=2,
                                         drop_path_rate=0.1))


def _vit(defaults: dict, overrides: dict) -> ViT:
    return ViT(**{**defaults, **overrides})


_MICRO = dict(in_chans=3, num_classes=10, dim=64, depth=4, num_heads=4, mlp_ratio=2.0)


@register_model(family="vit", task="classification")
def vit_micro_patch2_16(**kw) -> ViT:
    """A very small ViT for 8-16 px images (the 8x8 digits: 16 tokens); CPU-trainable."""
    return _vit(dict(img_size=16, patch_size=2, **_MICRO), kw)


@register_model(family="vit", task="classification")
def vit_micro_patch2_16_spt_lsa(**kw) -> ViT:
    """vit_micro_patch2_16 with Shifted Patch Tokenization and Locality Self-Attention."""
    return _vit(dict(img_size=16, patch_size=2, spt=True, lsa=True, **_MICRO), kw)


@register_model(family="vit", task="classification")
def vit_micro_patch2_16_convstem(**kw) -> ViT:
    """vit_micro_patch2_16 with a two-convolution stem, 32 wide, before the 2x2 patches."""
    return _vit(dict(img_size=16, patch_size=2, conv_stem=32, **_MICRO), kw)


@register_model(family="vit", task="classification")
def vit_micro_patch4_32_spt_lsa(**kw) -> ViT:
    """The micro width for 32 px images over 4x4 patches (64 tokens), with SPT and LSA."""
    return _vit(dict(img_size=32, patch_size=4, spt=True, lsa=True, **_MICRO), kw)


@register_model(family="vit", task="classification")
def vit_tiny_patch2_16(**kw) -> ViT:
    return _vit(dict(img_size=16, patch_size=2, num_classes=10, dim=192, depth=12,
                     num_heads=3), kw)


@register_model(family="vit", task="classification")
def vit_tiny_patch4_32(**kw) -> ViT:
    return _vit(dict(img_size=32, patch_size=4, num_classes=10, dim=192, depth=12,
                     num_heads=3), kw)


@register_model(family="vit", task="classification")
def vit_small_patch4_32(**kw) -> ViT:
    return _vit(dict(img_size=32, patch_size=4, num_classes=10, dim=384, depth=12,
                     num_heads=6), kw)


@register_model(family="vit", task="classification")
def vit_tiny_patch16_224(**kw) -> ViT:
    return _vit(dict(dim=192, depth=12, num_heads=3), kw)


@register_model(family="vit", task="classification")
def vit_small_patch16_224(**kw) -> ViT:
    return _vit(dict(dim=384, depth=12, num_heads=6), kw)


@register_model(family="vit", task="classification")
def vit_base_patch16_224(**kw) -> ViT:
    return _vit(dict(dim=768, depth=12, num_heads=12), kw)


def vit_flops(img_size: int, patch_size: int, in_chans: int, dim: int, depth: int,
              mlp_ratio: float, num_classes: int, class_token: bool = True) -> int:
    """Forward FLOPs per image of the matmuls (2 per multiply-add), by hand; for checks."""
    n = (img_size // patch_size) ** 2
    L = n + int(class_token)
    hidden = int(dim * mlp_ratio)
    block = 2 * L * dim * 3 * dim + 2 * 2 * L * L * dim + 2 * L * dim * dim \
        + 2 * 2 * L * dim * hidden
    return 2 * n * in_chans * patch_size ** 2 * dim + depth * block + 2 * dim * num_classes


__all__ = ["ViT", "from_timm", "load_timm_checkpoint", "vit_flops", "Intermediates"]
