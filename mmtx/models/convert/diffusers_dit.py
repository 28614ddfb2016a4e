"""Reading diffusers' `DiTTransformer2DModel` (the published DiT-XL/2 weights): its options as
arguments of mmtx's `DiT`, and its weights copied into a DiT built from those.

`mmtx.models.dit.from_diffusers_dit` builds the model in between; this module imports no mmtx
model, so the DiT can import it. Only the model object is read: nothing is downloaded.
"""

from __future__ import annotations

import torch
import torch.nn as nn

_ACTS = {"gelu-approximate": "gelu_tanh", "gelu": "gelu"}


def _shared_embedding(blocks) -> dict:
    """diffusers gives every block its own timestep + label embedding; mmtx's DiT has one.
    Published DiT weights hold the same copy in every block; anything else is refused."""
    first = blocks[0].norm1.emb.state_dict()
    for i, block in enumerate(blocks[1:], 1):
        other = block.norm1.emb.state_dict()
        if any(not torch.equal(first[k], other[k]) for k in first):
            raise ValueError(f"transformer_blocks[{i}].norm1.emb differs from block 0's: mmtx's "
                             "DiT shares one timestep and label embedding across blocks (as the "
                             "published DiT weights do)")
    return first


def diffusers_dit_kwargs(model) -> dict:
    """A `DiTTransformer2DModel`'s options as `DiT` arguments; ValueError naming the options
    mmtx's DiT does not have."""
    cfg = model.config
    bad = {}
    if cfg.norm_type != "ada_norm_zero":
        bad["norm_type"] = cfg.norm_type
    if cfg.norm_elementwise_affine:
        bad["norm_elementwise_affine"] = True
    if cfg.activation_fn not in _ACTS:
        bad["activation_fn"] = cfg.activation_fn
    out_chans = cfg.out_channels or cfg.in_channels
    if out_chans not in (cfg.in_channels, 2 * cfg.in_channels):
        bad["out_channels"] = cfg.out_channels
    blocks = model.transformer_blocks
    if blocks[0].attn1.to_out[0].bias is None:
        bad["attention_out_bias"] = False
    if blocks[0].ff.net[0].proj.out_features != 4 * model.inner_dim:
        bad["ff_inner_dim"] = blocks[0].ff.net[0].proj.out_features
    if bad:
        raise ValueError(f"from_diffusers_dit: unsupported DiTTransformer2DModel option(s) "
                         f"{bad}; supported: norm_type='ada_norm_zero', "
                         f"norm_elementwise_affine=False, activation_fn in {sorted(_ACTS)}, "
                         f"out_channels in (None, in_channels, 2 * in_channels)")
    return dict(img_size=cfg.sample_size, patch_size=cfg.patch_size, in_chans=cfg.in_channels,
                num_classes=cfg.num_embeds_ada_norm, dim=model.inner_dim, depth=cfg.num_layers,
                num_heads=cfg.num_attention_heads, learn_sigma=out_chans != cfg.in_channels,
                qkv_bias=cfg.attention_bias, act=_ACTS[cfg.activation_fn], sincos="diffusers",
                drop_rate=cfg.dropout)


def load_diffusers_dit_weights(dit: nn.Module, model) -> None:
    """Copy a `DiTTransformer2DModel`'s weights into `dit`, built from `diffusers_dit_kwargs`."""
    cfg, blocks = model.config, model.transformer_blocks
    for block in dit.blocks.blocks:
        # diffusers normalises before the MLP with config.norm_eps (before attention: 1e-6).
        block.norm2.eps = cfg.norm_eps

    src = model.state_dict()
    emb = _shared_embedding(blocks)
    sd = {"patch_embed.proj.weight": src["pos_embed.proj.weight"],
          "patch_embed.proj.bias": src["pos_embed.proj.bias"],
          "cond.t_embed.mlp.0.weight": emb["timestep_embedder.linear_1.weight"],
          "cond.t_embed.mlp.0.bias": emb["timestep_embedder.linear_1.bias"],
          "cond.t_embed.mlp.2.weight": emb["timestep_embedder.linear_2.weight"],
          "cond.t_embed.mlp.2.bias": emb["timestep_embedder.linear_2.bias"],
          "cond.y_embed.table.weight": emb["class_embedder.embedding_table.weight"],
          "ada_out.1.weight": src["proj_out_1.weight"], "ada_out.1.bias": src["proj_out_1.bias"],
          "head.weight": src["proj_out_2.weight"], "head.bias": src["proj_out_2.bias"]}
    for i in range(cfg.num_layers):
        d, m = f"transformer_blocks.{i}.", f"blocks.blocks.{i}."
        pairs = {"ada.1": "norm1.linear", "attn.proj": "attn1.to_out.0",
                 "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2"}
        for ours, theirs in pairs.items():
            for p in ("weight", "bias"):
                sd[f"{m}{ours}.{p}"] = src[f"{d}{theirs}.{p}"]
        for p in ("weight", "bias") if cfg.attention_bias else ("weight",):
            # q, k, v (dim, dim) each -> one fused (3 dim, dim) projection
            sd[f"{m}attn.qkv.{p}"] = torch.cat([src[f"{d}attn1.to_{n}.{p}"] for n in "qkv"])
    dit.load_state_dict(sd, strict=True)
