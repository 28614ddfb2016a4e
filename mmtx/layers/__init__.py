"""The shared attention library: every mmtx model is built from these parts."""

from .attention import Attention, KVCache, scaled_dot_product_attention
from .blocks import (
    ACTIVATIONS,
    Block,
    Decoder,
    DropPath,
    Encoder,
    Intermediates,
    Mlp,
    SwiGLU,
    Transformer,
    make_act,
    make_norm,
)
from .classic import AdditiveAttention, MultiplicativeAttention
from .conditioning import LabelEmbedding, TimestepEmbedding, modulate, timestep_frequencies
from .config import fused_attn_enabled, use_fused_attn
from .local import local_attention
from .masks import causal_mask, global_local_mask, in_window, padding_mask, sliding_window_mask
from .patch import (
    ConvStem,
    PatchEmbed,
    diagonal_shifts,
    patchify,
    shifted_patches,
    unpatchify,
)
from .position import (
    LearnedPositionEmbedding,
    RotaryEmbedding,
    resize_grid_table,
    sincos_2d_encoding,
    sinusoidal_encoding,
)

__all__ = [
    "Attention", "KVCache", "scaled_dot_product_attention", "use_fused_attn",
    "fused_attn_enabled", "AdditiveAttention", "MultiplicativeAttention", "local_attention",
    "Block", "Decoder", "DropPath", "Encoder", "Intermediates", "Mlp", "SwiGLU", "Transformer",
    "ACTIVATIONS", "make_act", "make_norm",
    "LabelEmbedding", "TimestepEmbedding", "modulate", "timestep_frequencies",
    "causal_mask", "global_local_mask", "in_window", "padding_mask", "sliding_window_mask",
    "ConvStem", "PatchEmbed", "diagonal_shifts", "patchify", "shifted_patches", "unpatchify",
    "LearnedPositionEmbedding", "RotaryEmbedding", "resize_grid_table", "sincos_2d_encoding",
    "sinusoidal_encoding",
]
