"""U-Net denoisers: the CNN baseline for the DiT, and the hybrid with attention at low resolution.

    x (B, C, H, W) -> stem conv -> [ResBlocks (+ attention), downsample] per level
                   -> middle (ResBlock, [attention], ResBlock)
                   -> [ResBlocks on (h, skip) (+ attention), upsample] per level, reversed
                   -> GroupNorm, SiLU, conv -> (B, C, H, W)

Residual blocks are GroupNorm-SiLU-conv twice (DDPM, Ho et al. 2020); the conditioning vector
(timestep + class + pooled caption, `mmtx.models.conditioning.Conditioner`) enters every
residual block, as the scale and shift of its second norm (cond_mode="film", ADM's scale-shift
norm, the Block's `modulate`) or added to its features ("add", DDPM's). With no
`attn_resolutions` there is no attention anywhere: a caption reaches the network only through
its pooled embedding. The hybrid adds, at the feature-map sizes
in `attn_resolutions`, the shared `mmtx.layers.Block` over the pixels (self-attention, and
cross-attention to the caption tokens when caption-conditioned): the same attention as the DiT.

Same interface as the DiT: forward(x, t, y=None, caption_ids=None, caption_mask=None,
cond_drop_mask=None), the null class and null caption for classifier-free guidance, `cond_drop`
in training, and an untrained U-Net predicts exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Block, DropPath, modulate
from .conditioning import Conditioner
from .examples import noisy_images, register_example
from .registry import register_model

COND_MODES = ("film", "add")


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, condition, GroupNorm-SiLU-dropout-conv, plus a skip (1x1 conv when
    the width changes). x (B, c_in, H, W), emb (B, emb_dim) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, cond_mode: str = "film",
                 drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.film = cond_mode == "film"
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, (2 if self.film else 1) * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.drop = nn.Dropout(drop)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, c_out, H, W)
        e = self.emb(F.silu(emb))  # (B, 2 c_out | c_out)
        if self.film:
            scale, shift = e.chunk(2, dim=1)  # (B, c_out) each
            h = modulate(self.norm2(h), shift, scale, channel_dim=1)
        else:
            h = self.norm2(h + e[:, :, None, None])  # (B, c_out, 1, 1) over H, W
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + self.drop_path(h)


class SpatialBlock(nn.Module):
    """The shared transformer `Block` over the H*W pixels of a feature map (no positions: the
    convolutions around it already tell pixels apart), with cross-attention to `context` when
    built with context_dim. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, num_heads: int, mlp_ratio: float,
                 context_dim: int | None = None, **block_kw):
        super().__init__()
        self.block = Block(channels, num_heads, mlp_ratio, cross_attention=context_dim is not None,
                           context_dim=context_dim, qkv_bias=True, **block_kw)

    def forward(self, x, context=None, context_mask=None):
        B, C, H, W = x.shape
        h = x.flatten(2).transpose(1, 2).contiguous()  # (B, H*W, C); see DiT.forward_features
        h = self.block(h, context=context, context_mask=context_mask)
        return h.transpose(1, 2).reshape(B, C, H, W)


def _attend(attn: nn.Module, h, context, context_mask):
    """A SpatialBlock where the U-Net has one (nn.Identity marks a level without)."""
    return h if isinstance(attn, nn.Identity) else attn(h, context, context_mask)


class Stage(nn.Module):
    """ResBlocks, each optionally followed by a SpatialBlock, at one resolution."""

    def __init__(self, widths: list[tuple[int, int]], make_res, make_attn):
        super().__init__()
        self.res = nn.ModuleList(make_res(a, b) for a, b in widths)
        self.attn = nn.ModuleList(make_attn(b) for _, b in widths)

    def forward(self, h, emb, context, context_mask, skips=None, collect=None):
        for res, attn in zip(self.res, self.attn):
            if skips is not None:
                h = torch.cat([h, skips.pop()], dim=1)  # (B, C + C_skip, H, W)
            h = _attend(attn, res(h, emb), context, context_mask)
            if collect is not None:
                collect.append(h)
        return h


class UNet(nn.Module):
    """A conditional U-Net denoiser; see the module docstring.

    channels: width per level (len(channels) - 1 down-samplings); num_res_blocks per level,
    on the way down and again on the way up (each reading one skip); mid_blocks ResBlocks at
    the lowest side between the two (each followed by attention in the hybrid). Down-sampling
    is a strided conv, up-sampling nearest-neighbour x2. attn_resolutions: the
    feature-map sides (at img_size) that get a SpatialBlock, e.g. (8,) for 32 px input with
    three levels; () is the attention-free baseline. Any in_chans; any H, W divisible by
    2 ** (len(channels) - 1). drop_path_rate: stochastic depth, the same for every block.
    """

    def __init__(self, img_size: int = 32, in_chans: int = 3, num_classes: int = 10,
                 channels=(32, 64, 96), num_res_blocks: int = 1, attn_resolutions=(),
                 num_heads: int = 4, mlp_ratio: float = 2.0, *, mid_blocks: int = 1,
                 emb_dim: int | None = None, cond_mode: str = "film", groups: int = 8,
                 learn_sigma: bool = False, cond_drop: float = 0.1, vocab_size: int = 0,
                 max_caption_len: int = 32, text_dim: int = 128, text_depth: int = 2,
                 text_heads: int = 4, pad_id: int = 0, freq_dim: int = 256,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        channels = tuple(channels)
        if cond_mode not in COND_MODES:
            raise ValueError(f"cond_mode must be one of {COND_MODES}, got {cond_mode!r}")
        if any(c % groups for c in channels):
            raise ValueError(f"every width in channels={channels} must be divisible by "
                             f"groups={groups}")
        self.down_factor = 2 ** (len(channels) - 1)
        if img_size % self.down_factor:
            raise ValueError(f"img_size must be divisible by {self.down_factor} "
                             f"(2 ** (len(channels) - 1)), got {img_size}")
        sides = [img_size // 2 ** i for i in range(len(channels))]
        unknown = sorted(set(attn_resolutions) - set(sides))
        if unknown:
            raise ValueError(f"attn_resolutions {unknown} are not feature-map sides of this "
                             f"U-Net at img_size={img_size}; choose from {sides}")
        self.in_chans, self.num_classes = in_chans, num_classes
        self.out_chans = 2 * in_chans if learn_sigma else in_chans
        emb_dim = emb_dim or 4 * channels[0]
        self.cond = Conditioner(emb_dim, num_classes, vocab_size, cond_drop=cond_drop,
                                freq_dim=freq_dim, max_caption_len=max_caption_len,
                                text_dim=text_dim, text_depth=text_depth, text_heads=text_heads,
                                pad_id=pad_id, drop_rate=drop_rate,
                                attn_drop_rate=attn_drop_rate)
        context_dim = text_dim if vocab_size else None

        def res(a, b):
            return ResBlock(a, b, emb_dim, groups, cond_mode, drop_rate, drop_path_rate)

        def attn_at(side):
            def make(c):
                if side not in attn_resolutions:
                    return nn.Identity()
                return SpatialBlock(c, num_heads, mlp_ratio, context_dim, drop_path=drop_path_rate,
                                    attn_drop=attn_drop_rate, proj_drop=drop_rate)
            return make

        self.stem = nn.Conv2d(in_chans, channels[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skip_widths, c = [], channels[0]
        for i, w in enumerate(channels):
            widths = [(c if j == 0 else w, w) for j in range(num_res_blocks)]
            self.down.append(Stage(widths, res, attn_at(sides[i])))
            skip_widths += [w] * num_res_blocks
            c = w
            if i < len(channels) - 1:  # strided conv halves the side
                self.downsample.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid = Stage([(c, c)] * mid_blocks, res, attn_at(sides[-1]))
        self.up = nn.ModuleList()
        for i in reversed(range(len(channels))):
            w = channels[i]
            widths = []
            for _ in range(num_res_blocks):
                widths.append((c + skip_widths.pop(), w))
                c = w
            self.up.append(Stage(widths, res, attn_at(sides[i])))
        self.norm_out = nn.GroupNorm(groups, channels[0])
        self.conv_out = nn.Conv2d(channels[0], self.out_chans, 3, padding=1)
        self.init_weights()

    def init_weights(self) -> None:
        """All init, here.

        - convolutions and linears: PyTorch's default (Kaiming-uniform over the fan-in), the
          fan-based uniform init DDPM's U-Net also uses.
        - the last conv of every residual block, and the output projections of every attention
          block (attention and MLP): zero, so each block starts as its skip path and the hybrid
          starts as the plain U-Net (ADM's zero_module).
        - the output conv: zero, so the untrained U-Net predicts exactly 0, as the DiT.
        - timestep MLP, label table, caption encoder: the `Conditioner`'s init (DiT's).
        """
        conditioner = {id(m) for m in self.cond.modules()}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in conditioner:
                m.reset_parameters()
        self.cond.init_weights()
        zero = [self.conv_out]
        for m in self.modules():
            if isinstance(m, ResBlock):
                zero.append(m.conv2)
            elif isinstance(m, SpatialBlock):
                b = m.block
                zero += [b.attn.proj, b.mlp.fc2] + ([b.cross_attn.proj] if b.cross_attn else [])
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x, t, y=None, caption_ids=None, caption_mask=None, cond_drop_mask=None):
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x must be (B, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2] % self.down_factor or x.shape[-1] % self.down_factor:
            raise ValueError(f"image size must be divisible by {self.down_factor} (the U-Net's "
                             f"down-sampling), got H={x.shape[-2]}, W={x.shape[-1]}")
        emb, context, context_mask = self.cond(t, y, caption_ids, caption_mask,
                                               batch=x.shape[0],
                                               drop=cond_drop_mask)  # emb (B, emb_dim)
        h, skips = self.stem(x), []  # (B, channels[0], H, W)
        for i, stage in enumerate(self.down):
            h = stage(h, emb, context, context_mask, collect=skips)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, C, H / 2, W / 2)
        h = self.mid(h, emb, context, context_mask)
        for i, stage in enumerate(self.up):
            if i > 0:  # nearest x2; the next ResBlock's conv (over h and the skip) smooths it
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")  # (B, C, 2 H, 2 W)
            h = stage(h, emb, context, context_mask, skips=skips)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_chans, H, W)




# ---- registered sizes ----


def _unet(defaults: dict, overrides: dict, attn_lowest: bool = False) -> UNet:
    kw = {**defaults, **overrides}
    if attn_lowest and "attn_resolutions" not in overrides:  # the lowest side for any img_size
        kw["attn_resolutions"] = (kw["img_size"] // 2 ** (len(kw["channels"]) - 1),)
    return UNet(**kw)


_SMALL = dict(img_size=32, in_chans=3, num_classes=10, channels=(32, 64, 96), num_res_blocks=1)
_BASE = dict(img_size=32, in_chans=3, num_classes=10, channels=(64, 128, 192),
             num_res_blocks=2)


@register_model(family="unet", task="generation")
def unet_small(**kw) -> UNet:
    """The notes' CPU baseline: 32/64/96 channels, 2 down-samplings, FiLM, no attention."""
    return _unet(_SMALL, kw)


@register_model(family="unet", task="generation")
def unet_hybrid_small(**kw) -> UNet:
    """unet_small with self-attention (and caption cross-attention) at the lowest side."""
    return _unet(_SMALL, kw, attn_lowest=True)


@register_model(family="unet", task="generation")
def unet_base(**kw) -> UNet:
    return _unet(_BASE, kw)


@register_model(family="unet", task="generation")
def unet_hybrid_base(**kw) -> UNet:
    return _unet(_BASE, kw, attn_lowest=True)


register_example("unet", noisy_images(channels=(8, 16), num_heads=2))
