"""Reading Hugging Face `CLIPModel` and open_clip `CLIP` models: their options as arguments of
mmtx's `CLIP`, and their weights copied into a model built from those.

`mmtx.models.clip.from_hf_clip` / `from_open_clip` build the model in between; this module
imports no mmtx model. Only the model object is read: nothing is downloaded. An option mmtx
cannot reproduce exactly raises ValueError naming it. Both libraries' towers are what mmtx's are:
pre-norm blocks with q, k, v and output biases, a class token with a learned position table and a
LayerNorm before the first block (vision), a causal text Transformer pooled at its end-of-text
token, and bias-free projections.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .hf_text import _HF_ACT, _copy, _mlp_ratio

_CLIP_ACT = {**_HF_ACT, "quick_gelu": "quick_gelu"}


def _check_same_act(where: str, vision: str, text: str) -> str:
    if vision != text:
        raise ValueError(f"{where}: vision act {vision!r} differs from text act {text!r}; mmtx's "
                         f"CLIP takes one activation for both towers")
    return vision


def _hf_act(key: str, value) -> str:
    if value not in _CLIP_ACT:
        raise ValueError(f"HF CLIP option {key}={value!r} is not supported; expected one of "
                         f"{sorted(_CLIP_ACT)}")
    return _CLIP_ACT[value]


# --- Hugging Face ----------------------------------------------------------------------------


def _check_hf_clip(hf_model) -> None:
    names = ("vision_model", "text_model", "visual_projection", "text_projection", "logit_scale")
    if getattr(getattr(hf_model, "config", None), "model_type", None) != "clip" or \
            not all(hasattr(hf_model, n) for n in names):
        raise ValueError(f"hf_model must be a transformers CLIPModel, got "
                         f"{type(hf_model).__name__}")


def hf_clip_kwargs(hf_model) -> dict:
    """`CLIP` arguments for a transformers `CLIPModel`; ValueError on what mmtx cannot do."""
    _check_hf_clip(hf_model)
    cfg = hf_model.config
    v, t = cfg.vision_config, cfg.text_config
    act = _check_same_act("HF CLIP", _hf_act("vision_config.hidden_act", v.hidden_act),
                          _hf_act("text_config.hidden_act", t.hidden_act))
    return dict(
        img_size=v.image_size, patch_size=v.patch_size, in_chans=v.num_channels,
        dim=v.hidden_size, depth=v.num_hidden_layers, num_heads=v.num_attention_heads,
        mlp_ratio=_mlp_ratio("HF CLIP", "vision_config.intermediate_size", v.intermediate_size,
                             v.hidden_size),
        vocab_size=t.vocab_size, max_len=t.max_position_embeddings, text_dim=t.hidden_size,
        text_depth=t.num_hidden_layers, text_heads=t.num_attention_heads,
        text_mlp_ratio=_mlp_ratio("HF CLIP", "text_config.intermediate_size",
                                  t.intermediate_size, t.hidden_size),
        embed_dim=cfg.projection_dim, act=act, norm_eps=v.layer_norm_eps,
        # eos_token_id 2 marks configs from before HF's fix: they pool at the largest id.
        text_pool="argmax" if t.eos_token_id == 2 else "eos", eos_id=t.eos_token_id,
        attn_drop_rate=v.attention_dropout,
        text_kwargs=dict(norm_eps=t.layer_norm_eps, attn_drop_rate=t.attention_dropout))


def _hf_layer(block: nn.Module, layer: nn.Module) -> None:
    att = layer.self_attn
    block.attn.qkv.weight.copy_(torch.cat([att.q_proj.weight, att.k_proj.weight,
                                           att.v_proj.weight]))  # (3 * dim, dim)
    block.attn.qkv.bias.copy_(torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]))
    _copy(block.attn.proj, att.out_proj)
    _copy(block.norm1, layer.layer_norm1)
    _copy(block.mlp.fc1, layer.mlp.fc1)
    _copy(block.mlp.fc2, layer.mlp.fc2)
    _copy(block.norm2, layer.layer_norm2)


@torch.no_grad()
def load_hf_clip_weights(model: nn.Module, hf_model) -> None:
    """Copy a `CLIPModel`'s weights into a `CLIP` built with `hf_clip_kwargs(hf_model)`."""
    _check_hf_clip(hf_model)
    vm, tm = hf_model.vision_model, hf_model.text_model
    vis, emb = model.visual, vm.embeddings
    vis.cls_token.copy_(emb.class_embedding.view(1, 1, -1))
    vis.patch_embed.proj.weight.copy_(emb.patch_embedding.weight)
    vis.pos_embed.weight.copy_(emb.position_embedding.weight[None])  # (1, 1 + N, dim)
    _copy(vis.norm_pre, vm.pre_layrnorm)
    for block, layer in zip(vis.encoder.blocks, vm.encoder.layers):
        _hf_layer(block, layer)
    _copy(vis.encoder.norm, vm.post_layernorm)  # HF norms the class token only: the same
    _copy(model.text.embed.tok, tm.embeddings.token_embedding)
    _copy(model.text.embed.pos, tm.embeddings.position_embedding)
    for block, layer in zip(model.text.encoder.blocks, tm.encoder.layers):
        _hf_layer(block, layer)
    _copy(model.text.encoder.norm, tm.final_layer_norm)
    _copy(model.visual_proj, hf_model.visual_projection)
    _copy(model.text_proj, hf_model.text_projection)
    model.logit_scale.copy_(hf_model.logit_scale.reshape(()))


# --- open_clip -------------------------------------------------------------------------------


def _open_clip_text(oc_model) -> dict:
    """The text tower's parts: open_clip's CLIP keeps them on the model, CustomTextCLIP in
    `.text`."""
    from open_clip.model import CLIP as OpenClipCLIP
    from open_clip.transformer import TextTransformer

    if isinstance(oc_model, OpenClipCLIP):
        m = oc_model
        return dict(tok=m.token_embedding, pos=m.positional_embedding, blocks=m.transformer,
                    norm=m.ln_final, proj=m.text_projection, pool=m.text_pool_type,
                    eos_id=getattr(m, "text_eos_id", None), causal=m.attn_mask is not None,
                    cls_emb=None, pad_mask=False)
    text = getattr(oc_model, "text", None)
    if isinstance(text, TextTransformer) and hasattr(oc_model, "visual"):
        return dict(tok=text.token_embedding, pos=text.positional_embedding,
                    blocks=text.transformer, norm=text.ln_final, proj=text.text_projection,
                    pool=text.pool_type, eos_id=text.eos_id, causal=text.attn_mask is not None,
                    cls_emb=text.cls_emb, pad_mask=getattr(text, "use_pad_mask", False))
    raise ValueError(f"oc_model must be an open_clip CLIP (or CustomTextCLIP with an open_clip "
                     f"TextTransformer), got {type(oc_model).__name__}"
                     + (f" with text tower {type(text).__name__}" if text is not None else ""))


def _open_clip_blocks(where: str, blocks, bad: list) -> dict:
    """Block options of one open_clip Transformer; unsupported ones are added to `bad`."""
    from open_clip.transformer import LayerScale, QuickGELU, ResidualAttentionBlock

    first = blocks.resblocks[0]
    if any(type(b) is not ResidualAttentionBlock for b in blocks.resblocks):
        bad.append(f"{where} block_type={type(first).__name__} (qk_norm, scaled_cosine_attn, "
                   f"scale_heads, scale_attn, scale_fc)")
        return {}
    if first.attn.in_proj_weight is None or first.attn.in_proj_bias is None or \
            first.attn.out_proj.bias is None:
        bad.append(f"{where} attention without a fused biased q, k, v projection")
    if not isinstance(first.ln_1, nn.LayerNorm):
        bad.append(f"{where} norm_layer={type(first.ln_1).__name__}")
    act = first.mlp.gelu
    if isinstance(act, QuickGELU):
        act_name = "quick_gelu"
    elif type(act) is nn.GELU:
        act_name = "gelu_tanh" if act.approximate == "tanh" else "gelu"
    else:
        act_name = None
        bad.append(f"{where} act_layer={type(act).__name__}")
    width = first.attn.embed_dim
    return dict(depth=len(blocks.resblocks), num_heads=first.attn.num_heads, act=act_name,
                mlp_ratio=_mlp_ratio("open_clip", f"{where} mlp width",
                                     first.mlp.c_fc.out_features, width),
                norm_eps=getattr(first.ln_1, "eps", 1e-5), attn_drop=first.attn.dropout,
                layer_scale=1.0 if isinstance(first.ls_1, LayerScale) else None)


def open_clip_kwargs(oc_model) -> dict:
    """`CLIP` arguments for an open_clip `CLIP` / `CustomTextCLIP`; ValueError naming every
    option mmtx cannot reproduce."""
    from open_clip.transformer import VisionTransformer

    text = _open_clip_text(oc_model)
    visual = oc_model.visual
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"open_clip vision tower {type(visual).__name__} is not supported "
                         f"(timm_model_name or a ResNet); mmtx converts VisionTransformer only")
    bad = []
    vb = _open_clip_blocks("vision", visual.transformer, bad)
    tb = _open_clip_blocks("text", text["blocks"], bad)
    if visual.attn_pool is not None:
        bad.append("attentional_pool")
    if not isinstance(visual.patch_dropout, nn.Identity):
        bad.append("patch_dropout>0")
    if isinstance(visual.ln_pre, nn.Identity):
        bad.append("no_ln_pre=True")
    if not visual.positional_embedding.requires_grad:
        bad.append("pos_embed_type='sin_cos_2d'")
    if visual.pool_type not in ("tok", "avg"):
        bad.append(f"vision pool_type={visual.pool_type!r}")
    if visual.proj is None:
        bad.append("vision output_dim=None (no projection)")
    if text["cls_emb"] is not None:
        bad.append("embed_cls=True")
    if text["pad_mask"]:
        bad.append("use_pad_mask=True")
    if text["pool"] not in ("first", "last", "argmax", "eos"):
        bad.append(f"text pool_type={text['pool']!r}")
    proj = text["proj"]
    if proj is None:
        bad.append("text proj_type='none'")
    elif isinstance(proj, nn.Linear) and proj.bias is not None:
        bad.append("text proj_bias=True")
    elif not isinstance(proj, (nn.Linear, nn.Parameter)):
        bad.append(f"text proj_type={type(proj).__name__}")
    if getattr(oc_model, "logit_bias", None) is not None:
        bad.append("init_logit_bias (SigLIP)")
    if bad:
        raise ValueError(f"from_open_clip: unsupported open_clip options: {', '.join(bad)}")
    act = _check_same_act("open_clip", vb["act"], tb["act"])
    width = visual.conv1.out_channels
    return dict(
        img_size=tuple(visual.image_size), patch_size=tuple(visual.patch_size),
        in_chans=visual.conv1.in_channels, dim=width, depth=vb["depth"],
        num_heads=vb["num_heads"], mlp_ratio=vb["mlp_ratio"],
        vocab_size=text["tok"].num_embeddings, max_len=text["pos"].shape[0],
        text_dim=text["tok"].embedding_dim, text_depth=tb["depth"], text_heads=tb["num_heads"],
        text_mlp_ratio=tb["mlp_ratio"], embed_dim=visual.proj.shape[1], act=act,
        norm_eps=vb["norm_eps"], text_pool={"first": "cls"}.get(text["pool"], text["pool"]),
        eos_id=text["eos_id"] if text["eos_id"] is not None else 2, causal_text=text["causal"],
        attn_drop_rate=vb["attn_drop"],
        vision_kwargs=dict(pool="token" if visual.pool_type == "tok" else "avg",
                           fc_norm=bool(visual.final_ln_after_pool),
                           layer_scale=vb["layer_scale"]),
        text_kwargs=dict(norm_eps=tb["norm_eps"], attn_drop_rate=tb["attn_drop"],
                         layer_scale=tb["layer_scale"]))


def _open_clip_block(block: nn.Module, b: nn.Module) -> None:
    block.attn.qkv.weight.copy_(b.attn.in_proj_weight)  # rows q, k, v in both
    block.attn.qkv.bias.copy_(b.attn.in_proj_bias)
    _copy(block.attn.proj, b.attn.out_proj)
    _copy(block.norm1, b.ln_1)
    _copy(block.norm2, b.ln_2)
    _copy(block.mlp.fc1, b.mlp.c_fc)
    _copy(block.mlp.fc2, b.mlp.c_proj)
    if not isinstance(b.ls_1, nn.Identity):
        block.ls1.gamma.copy_(b.ls_1.gamma)
        block.ls2.gamma.copy_(b.ls_2.gamma)


@torch.no_grad()
def load_open_clip_weights(model: nn.Module, oc_model) -> None:
    """Copy an open_clip model's weights into a `CLIP` built with `open_clip_kwargs`."""
    text, visual, vis = _open_clip_text(oc_model), oc_model.visual, model.visual
    vis.patch_embed.proj.weight.copy_(visual.conv1.weight)
    vis.cls_token.copy_(visual.class_embedding.view(1, 1, -1))
    vis.pos_embed.weight.copy_(visual.positional_embedding[None])  # (1, 1 + N, dim)
    _copy(vis.norm_pre, visual.ln_pre)
    for block, b in zip(vis.encoder.blocks, visual.transformer.resblocks):
        _open_clip_block(block, b)
    # ln_post normalises every token before pooling, or the pooled one (final_ln_after_pool)
    _copy(vis.fc_norm if isinstance(vis.fc_norm, nn.LayerNorm) else vis.encoder.norm,
          visual.ln_post)
    model.visual_proj.weight.copy_(visual.proj.T)  # open_clip stores (width, embed_dim)
    _copy(model.text.embed.tok, text["tok"])
    model.text.embed.pos.weight.copy_(text["pos"])
    for block, b in zip(model.text.encoder.blocks, text["blocks"].resblocks):
        _open_clip_block(block, b)
    _copy(model.text.encoder.norm, text["norm"])
    proj = text["proj"]
    model.text_proj.weight.copy_(proj.weight if isinstance(proj, nn.Linear) else proj.T)
    model.logit_scale.copy_(oc_model.logit_scale.reshape(()))
