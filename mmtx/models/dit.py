"""Diffusion Transformer (Peebles & Xie, 2023) on mmtx.layers, and conversion from diffusers.

    x (B, C, H, W) -> PatchEmbed + fixed 2-D sin-cos positions          -> tokens (B, N, dim)
    t -> TimestepEmbedding, y -> LabelEmbedding, caption -> pooled       -> c (B, dim), summed
    tokens -> Encoder of adaLN-Zero Blocks (cond=c) [+ cross-attention to the caption tokens]
           -> final layer (adaLN-modulated norm, Linear) -> unpatchify   -> (B, C, H, W)

The blocks are the shared `mmtx.layers.Block` with `cond_dim` (adaLN-Zero), so qk-norm and the
fused attention paths come with them. Output: the prediction (noise, velocity or data, as the
objective trains it) with the input's shape; (B, 2C, H, W) with `learn_sigma` (DiT's variance
channels). An untrained DiT predicts exactly zero: every gate and the final layer start at zero.

Conditions, and the "null" condition that classifier-free guidance needs:
  - class label y (B,) in [0, num_classes]; num_classes itself is the null class.
  - caption: token ids (B, L) through an mmtx `TextEncoder`, read by cross-attention in every
    block, its mean over real tokens added to c. The null caption is a caption with no real
    token (all ids `pad_id`, or `caption_mask` all zero): such a row reads a learned null
    context token instead, the caption counterpart of the null class. For guidance, pass
    null_cond={"caption_ids": pad_id, "caption_mask": 0}.
  - y=None / caption_ids=None: that condition's null (the unconditional prediction).
In training mode each row's condition is replaced by the null one with probability `cond_drop`
(DiT's label dropout, 0.1), so one network also learns the unconditional prediction; or, given
`cond_drop_mask` (B,) bool, exactly where it is True (`mmtx.models.conditioning` owns the drop).

`from_diffusers_dit` loads a diffusers `DiTTransformer2DModel` (the published DiT-XL/2 weights).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import ConvStem, Encoder, PatchEmbed, modulate, sincos_2d_encoding, unpatchify
from .conditioning import CaptionConditioner, Conditioner, check_labels  # noqa: F401 (old path)
from .convert.diffusers_dit import diffusers_dit_kwargs, load_diffusers_dit_weights
from .examples import noisy_images, register_example
from .registry import register_model

SINCOS = ("mmtx", "diffusers")


def diffusers_sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """(height * width, dim): diffusers' (and DiT's, MAE's) 2-D sin-cos table.

    The same values as `sincos_2d_encoding` in another channel order: column half first, and in
    each half all sines then all cosines instead of interleaved pairs.
    """
    row, col = sincos_2d_encoding(height, width, dim).chunk(2, dim=-1)  # (N, dim/2) each
    # (N, dim/4 frequencies, sin|cos) -> (N, sin|cos, dim/4) -> (N, dim/2)
    halves = [h.reshape(-1, dim // 4, 2).transpose(1, 2).reshape(-1, dim // 2) for h in (col, row)]
    return torch.cat(halves, dim=-1)


class DiT(nn.Module):
    """A diffusion transformer over patch tokens; see the module docstring.

    forward(x (B, in_chans, H, W), t (B,) or scalar, y=None, caption_ids=None,
    caption_mask=None, cond_drop_mask=None) -> (B, out_chans, H, W); any H, W divisible by
    patch_size (the sin-cos table is recomputed for the grid). t: float in [0, 1] (flow
    matching) or integer DDPM steps.
    Captions: vocab_size > 0 adds a `TextEncoder` (text_dim wide, text_depth blocks) whose
    tokens every block reads by cross-attention. sincos="diffusers" lays the fixed tables
    (positions, timestep frequencies) out as diffusers' DiT does, for converted weights.
    long_skip: U-ViT's long skip connections between the first and the last blocks (see
    `Transformer`); each starts as the identity, so an untrained DiT still predicts zero.
    """

    def __init__(self, img_size=32, patch_size=2, in_chans: int = 4, num_classes: int = 1000,
                 dim: int = 1152, depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0,
                 *, learn_sigma: bool = False, cond_drop: float = 0.1, vocab_size: int = 0,
                 max_caption_len: int = 32, text_dim: int = 256, text_depth: int = 2,
                 text_heads: int = 4, pad_id: int = 0, qkv_bias: bool = True,
                 qk_norm: bool = False, norm_eps: float = 1e-6, act: str = "gelu_tanh",
                 freq_dim: int = 256, sincos: str = "mmtx", drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 conv_stem: int = 0, conv_out: bool = False, long_skip: bool = False):
        super().__init__()
        if sincos not in SINCOS:
            raise ValueError(f"sincos must be one of {SINCOS}, got {sincos!r}")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.out_chans = 2 * in_chans if learn_sigma else in_chans
        self.dim, self.sincos = dim, sincos

        # Optional convolutions at pixel level around the patch tokens (both off in DiT): a stem
        # of two 3x3 convolutions before the patch projection (Xiao et al., 2021, "Early
        # convolutions help transformers see better") and a 3x3 convolution after unpatchify
        # (U-ViT's), which lets neighbouring patches agree on the pixels along their borders.
        self.stem = ConvStem(in_chans, conv_stem, 2, act="silu", bias=True) if conv_stem else None
        self.patch_embed = PatchEmbed(img_size, patch_size, conv_stem or in_chans, dim)
        gh, gw = self.patch_embed.grid_size
        self.register_buffer("pos_table", self._sincos_table(gh, gw), persistent=False)
        self.cond = Conditioner(dim, num_classes, vocab_size, cond_drop=cond_drop,
                                freq_dim=freq_dim, time_embed=sincos,
                                max_caption_len=max_caption_len, text_dim=text_dim,
                                text_depth=text_depth, text_heads=text_heads, pad_id=pad_id,
                                drop_rate=drop_rate, attn_drop_rate=attn_drop_rate)
        self.blocks = Encoder(depth, dim, num_heads, mlp_ratio, cond_dim=dim, final_norm=False,
                              cross_attention=vocab_size > 0,
                              context_dim=text_dim if vocab_size else None, qkv_bias=qkv_bias,
                              qk_norm=qk_norm, norm_eps=norm_eps, act=act,
                              attn_drop=attn_drop_rate, proj_drop=drop_rate,
                              drop_path=drop_path_rate, long_skip=long_skip)
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))  # shift, scale
        ph, pw = self.patch_embed.patch_size
        self.head = nn.Linear(dim, ph * pw * self.out_chans)
        self.conv_out = nn.Conv2d(self.out_chans, self.out_chans, 3, padding=1) \
            if conv_out else None
        self.init_weights()

    def init_weights(self) -> None:
        """DiT's init, all here.

        - Linears of the blocks and the final layer: Xavier-uniform, zero bias (DiT's basic
          init); the patch projection likewise, as the Linear over flattened patches it is.
        - timestep MLP and label table: N(0, 0.02) (`Conditioner.init_weights`, DiT's).
        - adaLN projections of every block and of the final layer: zero, so each block starts
          as the identity and the condition acts only once learned (adaLN-Zero).
        - final Linear: zero, so the untrained model predicts exactly 0, a neutral start for
          noise or velocity (DiT's choice).
        - caption encoder: BERT's N(0, 0.02), its null token like the null class row.
        - the optional stem convolutions: PyTorch's default conv init, zero bias.
        - the optional conv_out: the identity (Dirac) kernel, zero bias. A random 3x3 filter
          would blur the linear head's output, and the noise or velocity targets are mostly
          high frequencies: the head would first have to learn to undo it (in a 1,000-step run
          on shapes, the validation loss was 2.4x the plain DiT's). Zero head, zero output.
        - the optional long skips' projections: [I | 0] (`Transformer.init_long_skips`), so
          every block still starts as the identity.
        """
        for m in (*self.blocks.modules(), *self.ada_out.modules(), self.head):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        self.cond.init_weights()
        for conv in (*(self.stem or ()), self.conv_out):
            if isinstance(conv, nn.Conv2d):
                conv.reset_parameters()
                nn.init.zeros_(conv.bias)
        if self.conv_out is not None:
            nn.init.dirac_(self.conv_out.weight)
        self.blocks.init_long_skips()  # after the Xavier loop above, which redrew them
        for lin in (*(b.ada[1] for b in self.blocks.blocks), self.ada_out[1], self.head):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _sincos_table(self, gh: int, gw: int) -> torch.Tensor:
        table = diffusers_sincos_2d if self.sincos == "diffusers" else sincos_2d_encoding
        return table(gh, gw, self.dim)[None]  # (1, N, dim)

    def forward_features(self, x, c, context=None, context_mask=None, return_attn=False):
        """x (B, C, H, W), c (B, dim) -> tokens (B, N, dim) [, Intermediates with return_attn]."""
        # PatchEmbed returns a transposed view; elementwise ops keep their first input's
        # layout, so without the copy the whole residual stream would stay strided and every
        # norm copy it again (about 5% of a step).
        if self.stem is not None:
            if x.shape[1] != self.in_chans:
                raise ValueError(f"x must have {self.in_chans} channels, got {x.shape[1]}")
            x = self.stem(x)  # (B, conv_stem, H, W)
        tokens = self.patch_embed(x)  # (B, N, dim); checks channels, divisibility
        grid = self.patch_embed.grid_for(*x.shape[-2:])
        pos = self.pos_table if tuple(grid) == tuple(self.patch_embed.grid_size) \
            else self._sincos_table(*grid).to(self.pos_table)
        # The table keeps the model's dtype: under autocast the residual stream stays float32.
        tokens = tokens + pos  # (B, N, dim)
        return self.blocks(tokens, context=context, context_mask=context_mask, cond=c,
                           return_attn=return_attn)

    def forward_head(self, tokens, c, height: int, width: int):
        """tokens (B, N, dim), c (B, dim) -> (B, out_chans, height, width)."""
        shift, scale = self.ada_out(c).chunk(2, dim=-1)  # (B, dim) each
        out = self.head(modulate(self.norm_out(tokens), shift, scale))  # (B, N, p*p*out)
        out = unpatchify(out, self.patch_embed.patch_size, height, width)  # (B, out, H, W)
        return out if self.conv_out is None else self.conv_out(out)

    def forward(self, x, t, y=None, caption_ids=None, caption_mask=None, cond_drop_mask=None):
        if x.dim() != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        c, context, context_mask = self.cond(t, y, caption_ids, caption_mask, batch=x.shape[0],
                                             drop=cond_drop_mask)
        tokens = self.forward_features(x, c, context, context_mask)
        return self.forward_head(tokens, c, *x.shape[-2:])


# ---- registered sizes ----

# The DiT paper's widths: (dim, depth, num_heads). Defaults as the paper's 256 px ImageNet model
# (a 32 x 32 x 4 SD-VAE latent, 1000 classes); every factory takes overrides.
_PAPER = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "xl": (1152, 28, 16)}


def _dit(defaults: dict, overrides: dict) -> DiT:
    return DiT(**{**defaults, **overrides})


def _paper(size: str, patch: int, kw: dict) -> DiT:
    dim, depth, heads = _PAPER[size]
    return _dit(dict(img_size=32, patch_size=patch, in_chans=4, num_classes=1000, dim=dim,
                     depth=depth, num_heads=heads), kw)


def _cpu(dim: int, heads: int, patch: int, kw: dict) -> DiT:
    # CPU-sized for 32 px RGB: 6 blocks; micro is the notes' probe (128 wide, 1.9 M params).
    return _dit(dict(img_size=32, patch_size=patch, in_chans=3, num_classes=10, dim=dim,
                     depth=6, num_heads=heads), kw)


@register_model(family="dit", task="generation")
def dit_micro_2(**kw) -> DiT:
    return _cpu(128, 4, 2, kw)


@register_model(family="dit", task="generation")
def dit_micro_4(**kw) -> DiT:
    return _cpu(128, 4, 4, kw)


# U-ViT's changes for small data (Bao et al., 2023): long skips between the first and the last
# blocks and a 3x3 convolution after unpatchify; with them, a two-convolution stem 32 wide.
_UVIT = dict(long_skip=True, conv_out=True, conv_stem=32)


@register_model(family="dit", task="generation")
def dit_micro_2_uvit(**kw) -> DiT:
    return _cpu(128, 4, 2, {**_UVIT, **kw})


@register_model(family="dit", task="generation")
def dit_micro_4_uvit(**kw) -> DiT:
    return _cpu(128, 4, 4, {**_UVIT, **kw})


@register_model(family="dit", task="generation")
def dit_tiny_2(**kw) -> DiT:
    return _cpu(192, 3, 2, kw)


@register_model(family="dit", task="generation")
def dit_tiny_4(**kw) -> DiT:
    return _cpu(192, 3, 4, kw)


@register_model(family="dit", task="generation")
def dit_s_2(**kw) -> DiT:
    return _paper("s", 2, kw)


@register_model(family="dit", task="generation")
def dit_s_4(**kw) -> DiT:
    return _paper("s", 4, kw)


@register_model(family="dit", task="generation")
def dit_s_8(**kw) -> DiT:
    return _paper("s", 8, kw)


@register_model(family="dit", task="generation")
def dit_b_2(**kw) -> DiT:
    return _paper("b", 2, kw)


@register_model(family="dit", task="generation")
def dit_b_4(**kw) -> DiT:
    return _paper("b", 4, kw)


@register_model(family="dit", task="generation")
def dit_b_8(**kw) -> DiT:
    return _paper("b", 8, kw)


@register_model(family="dit", task="generation")
def dit_l_2(**kw) -> DiT:
    return _paper("l", 2, kw)


@register_model(family="dit", task="generation")
def dit_l_4(**kw) -> DiT:
    return _paper("l", 4, kw)


@register_model(family="dit", task="generation")
def dit_l_8(**kw) -> DiT:
    return _paper("l", 8, kw)


@register_model(family="dit", task="generation")
def dit_xl_2(**kw) -> DiT:
    return _paper("xl", 2, kw)


@register_model(family="dit", task="generation")
def dit_xl_4(**kw) -> DiT:
    return _paper("xl", 4, kw)


@register_model(family="dit", task="generation")
def dit_xl_8(**kw) -> DiT:
    return _paper("xl", 8, kw)


register_example("dit", noisy_images(patch_size=2, dim=32, depth=1, num_heads=2))


# ---- conversion from diffusers (the reading of diffusers' models is in convert/diffusers_dit.py)


def from_diffusers_dit(model) -> DiT:
    """A diffusers `DiTTransformer2DModel` (class-conditional, adaLN-Zero) as an mmtx `DiT`.

    Outputs agree to float rounding for the same noisy input, integer timestep and class, in
    eval mode (both drop labels in training). Options mmtx's DiT does not have raise a
    ValueError naming them. diffusers reads any t as a step; mmtx reads a float t in [0, 1] as
    step / 1000, so pass integer steps or t / 1000 to the converted model.
    """
    dit = DiT(**diffusers_dit_kwargs(model))
    load_diffusers_dit_weights(dit, model)
    return dit.to(next(model.parameters()).dtype).train(model.training)
