"""Feed-forward layers, the transformer Block, and the one stack behind Encoder and Decoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import Attention, KVCache
from .conditioning import modulate


# Activation names every model's `act=` option takes, each a constructor of a fresh module.
class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
    "quick_gelu": QuickGELU,  # OpenAI CLIP
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}
NORMS = ("layer", "rms")


def _choice(name: str, value: str, options) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")


def make_act(name: str) -> nn.Module:
    """A new activation module by name: one of `ACTIVATIONS` ("gelu", "gelu_tanh",
    "quick_gelu", "relu", "silu"); ValueError naming the choices otherwise."""
    _choice("act", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


def make_norm(kind: str, dim: int, eps: float = 1e-6, affine: bool = True) -> nn.Module:
    """LayerNorm (kind="layer") or RMSNorm (kind="rms") over the last dim `dim`; affine=False
    drops the learned scale and shift (adaLN predicts them from a condition instead)."""
    _choice("norm", kind, NORMS)
    norm = nn.LayerNorm if kind == "layer" else nn.RMSNorm
    return norm(dim, eps=eps, elementwise_affine=affine)


class Mlp(nn.Module):
    """Linear -> activation -> dropout -> Linear -> dropout (the transformer feed-forward)."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None, *,
                 act: str = "gelu", bias: bool = True, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwiGLU(nn.Module):
    """silu(x W1) * (x W3), then W2 (Shazeer 2020). One fused matmul for the gate and the value."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None, *,
                 bias: bool = False, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.drop(self.fc2(self.drop(F.silu(gate) * value)))


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample, rescaling the survivors."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class LayerScale(nn.Module):
    """Per-channel learned scale on a residual branch (CaiT), initialised small."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    """Self-attention [+ cross-attention] + feed-forward, each a residual branch.

    norm_first=True is pre-norm (ViT, GPT-2); False is post-norm (the original Transformer,
    BERT). `forward(x, ...)` returns x, or (x, self_weights, cross_weights) with return_attn.
    `window` makes the self-attention a sliding window (see `Attention`, `local_attention`);
    `lsa` makes it Locality Self-Attention (no attention to oneself, learned temperature).

    adaLN-Zero (DiT; x-transformers' `use_adaptive_layernorm`): given `cond_dim`, the norms lose
    their affine parameters and `forward(x, cond=c)` with c (B, cond_dim) predicts, through
    SiLU -> Linear (zero-initialised), a shift and scale applied after each branch's norm and a
    gate applied where the layer scale sits. Chunk order: attention, MLP, then cross-attention
    (DiT's six first, so a class-conditional block has DiT's layout). At init every gate is 0 and
    the block is the identity.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *,
                 cross_attention: bool = False, causal: bool = False, norm_first: bool = True,
                 drop_path: float = 0.0, layer_scale: float | None = None, norm: str = "layer",
                 norm_eps: float = 1e-6, context_dim: int | None = None,
                 num_kv_heads: int | None = None, qkv_bias: bool = False, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, mlp: str = "mlp",
                 act: str = "gelu", window: int | None = None, cond_dim: int | None = None,
                 lsa: bool = False):
        super().__init__()
        _choice("mlp", mlp, ("mlp", "swiglu"))
        if cond_dim is not None and not norm_first:
            raise ValueError("cond_dim (adaLN-Zero) modulates a pre-norm block; got "
                             "norm_first=False")
        self.causal, self.norm_first = causal, norm_first
        attn_kw = dict(num_kv_heads=num_kv_heads, qkv_bias=qkv_bias, qk_norm=qk_norm,
                       norm_eps=norm_eps, attn_drop=attn_drop, proj_drop=proj_drop)
        affine = cond_dim is None  # adaLN supplies the norms' scale and shift
        self.norm1 = make_norm(norm, dim, norm_eps, affine)
        self.attn = Attention(dim, num_heads, window=window, lsa=lsa, **attn_kw)
        self.cross_attn = Attention(dim, num_heads, context_dim=context_dim, **attn_kw) \
            if cross_attention else None
        self.norm_cross = make_norm(norm, dim, norm_eps, affine) if cross_attention else None
        self.norm2 = make_norm(norm, dim, norm_eps, affine)
        hidden = int(dim * mlp_ratio)
        self.mlp = Mlp(dim, hidden, act=act, drop=proj_drop) if mlp == "mlp" \
            else SwiGLU(dim, hidden, drop=proj_drop)
        scale = (lambda: LayerScale(dim, layer_scale)) if layer_scale else nn.Identity
        self.ls1, self.ls2 = scale(), scale()
        self.ls_cross = scale() if cross_attention else nn.Identity()
        self.drop_path = DropPath(drop_path)
        self.ada = None
        if cond_dim is not None:  # (shift, scale, gate) for each of the 2 or 3 branches
            branches = 3 if cross_attention else 2
            self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 3 * branches * dim))
            nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: every branch starts gated off
            nn.init.zeros_(self.ada[1].bias)

    def _residual(self, x, norm, ls, branch, mod=None):
        """One residual branch in pre- or post-norm form; returns (x, branch's extra output).
        mod: adaLN's (shift, scale, gate), each (B, dim)."""
        h = norm(x) if self.norm_first else x
        if mod is not None:
            h = modulate(h, mod[0], mod[1])
        out = branch(h)
        out, extra = out if isinstance(out, tuple) else (out, None)
        out = ls(out) if mod is None else mod[2][:, None] * ls(out)  # gate (B, 1, dim)
        x = x + self.drop_path(out)
        return (x if self.norm_first else norm(x)), extra

    def forward(self, x, context=None, mask=None, context_mask=None, rope=None, cache=None,
                return_attn=False, cond=None):
        mods = (None, None, None)  # adaLN (shift, scale, gate) of attention, MLP, cross-attn
        if self.ada is not None:
            if cond is None or cond.dim() != 2 or cond.shape[1] != self.ada[1].in_features:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"cond must be (B, {self.ada[1].in_features}) for a block with "
                                 f"cond_dim (adaLN-Zero), got {got}")
            m = self.ada(cond).unflatten(-1, (-1, x.shape[-1])).unbind(1)  # 6|9 x (B, dim)
            mods = (m[0:3], m[3:6], m[6:9] or None)
        elif cond is not None:
            raise ValueError("cond was given to a block built without cond_dim (no adaLN)")
        x, w_self = self._residual(x, self.norm1, self.ls1, lambda h: self.attn(
            h, mask=mask, causal=self.causal, rope=rope, cache=cache, return_attn=return_attn),
            mods[0])
        w_cross = None
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("context must be given to a block with cross_attention=True")
            x, w_cross = self._residual(
                x, self.norm_cross, self.ls_cross, lambda h: self.cross_attn(
                    h, context=context, mask=context_mask, cache=cache, return_attn=return_attn),
                mods[2])
        x, _ = self._residual(x, self.norm2, self.ls2, self.mlp, mods[1])
        return (x, w_self, w_cross) if return_attn else x


@dataclass
class Intermediates:
    """What a stack hands back besides its output: per-block attention maps and hidden states.

    self_attn[i] (B, H, Lq, Lq_total), cross_attn[i] (B, H, Lq, Lctx); hidden[0] is the stack's
    input and hidden[i + 1] the output of block i (before the final norm).
    """

    self_attn: list = field(default_factory=list)
    cross_attn: list = field(default_factory=list)
    hidden: list = field(default_factory=list)


class Transformer(nn.Module):
    """`depth` Blocks and an optional final norm. Stochastic depth rises linearly to `drop_path`.

    Extra keyword arguments go to every Block (causal, cross_attention, norm, qkv_bias,
    cond_dim, ...); `forward(..., cond=c)` hands the adaLN condition to every block.

    long_skip=True adds U-ViT's long skip connections (Bao et al., 2023, "All are Worth Words"):
    with n = (depth - 1) // 2, the outputs of the first n blocks are kept, and the input of
    each of the last n blocks is concatenated with them in mirror order (block depth - 1 with
    block 0's output, ...) and projected back to `dim` by a Linear (2 dim -> dim). The one or two
    middle blocks have none. Each projection starts as [I | 0] (`init_long_skips`), so the stack
    starts as the same stack without skips, and learns how much of the early tokens to mix in;
    U-ViT draws these weights at random.
    """

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_ratio: float = 4.0, *,
                 drop_path: float = 0.0, final_norm: bool = True, long_skip: bool = False,
                 **block_kwargs):
        super().__init__()
        if depth <= 0:
            raise ValueError(f"depth must be > 0, got {depth}")
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # (meta-safe)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, drop_path=r, **block_kwargs) for r in rates
        )
        norm = make_norm(block_kwargs.get("norm", "layer"), dim, block_kwargs.get("norm_eps", 1e-6))
        self.norm = norm if final_norm else nn.Identity()
        pairs = (depth - 1) // 2 if long_skip else 0
        self.skips = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(pairs))
        self.init_long_skips()

    def init_long_skips(self) -> None:
        """Every long-skip projection to [I | 0], zero bias: the stack's own tokens pass, the
        skipped ones are added only once learned. A model's init_weights calls this after its
        own init of Linears, which would otherwise redraw them."""
        for lin in self.skips:
            dim = lin.out_features
            with torch.no_grad():
                lin.weight.zero_()
                lin.weight[:, :dim].copy_(torch.eye(dim))
                lin.bias.zero_()

    def new_cache(self) -> list[KVCache]:
        """One empty KV cache per block, for incremental decoding."""
        return [KVCache() for _ in self.blocks]

    def forward(self, x, context=None, mask=None, context_mask=None, rope=None, cache=None,
                return_attn=False, return_hidden=False, cond=None):
        inter = Intermediates(hidden=[x] if return_hidden else [])
        n, first_out = len(self.skips), len(self.blocks) - len(self.skips)
        kept = []  # the first n blocks' outputs, for the long skips
        for i, block in enumerate(self.blocks):
            if i >= first_out:  # (B, L, 2 dim) -> (B, L, dim)
                x = self.skips[i - first_out](torch.cat([x, kept.pop()], dim=-1))
            out = block(x, context=context, mask=mask, context_mask=context_mask, rope=rope,
                        cache=None if cache is None else cache[i], return_attn=return_attn,
                        cond=cond)
            if return_attn:
                x, w_self, w_cross = out
                inter.self_attn.append(w_self)
                if w_cross is not None:
                    inter.cross_attn.append(w_cross)
            else:
                x = out
            if i < n:
                kept.append(x)
            if return_hidden:
                inter.hidden.append(x)
        x = self.norm(x)
        return (x, inter) if (return_attn or return_hidden) else x


class Encoder(Transformer):
    """Bidirectional stack (ViT, BERT): no causal mask, no cross-attention."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_ratio: float = 4.0, **kwargs):
        super().__init__(depth, dim, num_heads, mlp_ratio, causal=False, **kwargs)


class Decoder(Transformer):
    """Causal stack (GPT); with cross_attention=True it reads an encoder's output (`context`)."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_ratio: float = 4.0, *,
                 cross_attention: bool = False, **kwargs):
        super().__init__(depth, dim, num_heads, mlp_ratio, causal=True,
                         cross_attention=cross_attention, **kwargs)
