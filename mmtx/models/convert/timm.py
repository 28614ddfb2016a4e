"""Reading timm `VisionTransformer` models: their options as arguments of mmtx's `ViT`, their
state dict under mmtx's parameter names, and checkpoints a user has on disk.

`mmtx.models.vit.from_timm` / `load_timm_checkpoint` build the model in between; this module
imports no mmtx model, so the ViT can import it. Nothing is downloaded; nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

# timm / torch activation classes -> mmtx.layers names (timm has its own GELU/GELUTanh classes)
_ACTS = {"GELU": "gelu", "GELUTanh": "gelu_tanh", "ReLU": "relu", "SiLU": "silu", "Swish": "silu"}


def timm_vit_kwargs(tv, pools) -> dict:
    """A timm VisionTransformer's architecture as `ViT` arguments; ValueError naming anything
    unsupported. `pools`: the pooling modes (timm's global_pool values) the ViT has."""
    from timm.layers import LayerNorm as TimmLayerNorm
    from timm.layers import Mlp as TimmMlp
    from timm.models.vision_transformer import Attention as TimmAttention
    from timm.models.vision_transformer import Block as TimmBlock
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(tv, VisionTransformer):
        raise ValueError(f"timm_vit must be a timm VisionTransformer, got {type(tv).__name__}")

    bad = []
    blk = tv.blocks[0]
    if type(blk) is not TimmBlock:
        bad.append(f"block_fn={type(blk).__name__}")
    if type(blk.attn) is not TimmAttention:
        bad.append(f"attn_layer={type(blk.attn).__name__}")
    if type(blk.mlp) is not TimmMlp:
        bad.append(f"mlp_layer={type(blk.mlp).__name__}")
    if not isinstance(blk.norm1, (nn.LayerNorm, TimmLayerNorm)):
        bad.append(f"norm_layer={type(blk.norm1).__name__}")
    if getattr(tv, "reg_token", None) is not None:
        bad.append(f"reg_tokens={tv.num_reg_tokens}")
    if tv.global_pool not in pools:
        bad.append(f"global_pool={tv.global_pool!r}")
    if getattr(tv, "pool_include_prefix", False):
        bad.append("pool_include_prefix=True")
    if not isinstance(tv.patch_drop, nn.Identity):
        bad.append("patch_drop_rate>0")
    if not isinstance(getattr(tv.patch_embed, "norm", nn.Identity()), nn.Identity):
        bad.append("embed_norm_layer")
    if not isinstance(getattr(blk.attn, "norm", nn.Identity()), nn.Identity):
        bad.append("scale_attn_norm=True")
    if not isinstance(getattr(blk.mlp, "norm", nn.Identity()), nn.Identity):
        bad.append("scale_mlp_norm=True")
    if blk.attn.proj.bias is None or blk.mlp.fc1.bias is None:
        bad.append("proj_bias=False")  # mmtx Block always has projection / MLP biases
    if getattr(tv.patch_embed, "flatten", True) is False and not tv.dynamic_img_size:
        bad.append("patch_embed flatten=False")
    act = blk.mlp.act
    act_name = _ACTS.get(type(act).__name__)
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        act_name = "gelu_tanh"
    if act_name is None:
        bad.append(f"act_layer={type(act).__name__}")
    if bad:
        raise ValueError(f"from_timm: unsupported timm VisionTransformer options: {', '.join(bad)}")
    pe = tv.patch_embed
    return dict(
        img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size),
        in_chans=pe.proj.in_channels, num_classes=tv.num_classes, dim=tv.embed_dim,
        depth=len(tv.blocks), num_heads=blk.attn.num_heads,
        mlp_ratio=blk.mlp.fc1.out_features / tv.embed_dim,
        pool=tv.global_pool, class_token=tv.cls_token is not None,
        pos_embed="none" if tv.pos_embed is None else "learn",
        no_embed_class=tv.no_embed_class, pre_norm=not isinstance(tv.norm_pre, nn.Identity),
        final_norm=not (isinstance(tv.norm, nn.Identity) and isinstance(tv.fc_norm, nn.Identity)),
        fc_norm=not isinstance(tv.fc_norm, nn.Identity),
        qkv_bias=blk.attn.qkv.bias is not None,
        qk_norm=not isinstance(blk.attn.q_norm, nn.Identity),
        layer_scale=1.0 if not isinstance(blk.ls1, nn.Identity) else None,
        norm_eps=blk.norm1.eps, act=act_name,
    )


def _timm_key(key: str) -> str:
    """A timm ViT parameter name -> mmtx's (the blocks and final norm sit in `encoder`)."""
    if key.startswith("blocks."):
        return "encoder." + key
    if key.startswith("norm."):
        return "encoder." + key
    if key == "pos_embed":
        return "pos_embed.weight"
    return key


def timm_vit_state_dict(tv) -> dict[str, torch.Tensor]:
    """A timm VisionTransformer's state dict under mmtx `ViT` parameter names."""
    return {_timm_key(k): v for k, v in tv.state_dict().items()}


def read_timm_checkpoint(path, timm_name: str, **timm_kwargs) -> nn.Module:
    """`timm.create_model(timm_name, pretrained=False, **timm_kwargs)` with the weights of the
    .safetensors file `path`; FileNotFoundError / ValueError naming the file otherwise."""
    import timm
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"timm checkpoint not found: {path}")
    if path.suffix != ".safetensors":
        raise ValueError(f"path must be a .safetensors file (pickles are not loaded), got {path}")
    tv = timm.create_model(timm_name, pretrained=False, **timm_kwargs)
    try:
        tv.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as e:  # missing / unexpected keys or shapes: the kwargs do not fit it
        raise ValueError(f"checkpoint {path} does not fit timm model {timm_name!r} with "
                         f"{timm_kwargs}: {e}") from None
    return tv.eval()
