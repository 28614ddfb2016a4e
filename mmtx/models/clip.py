"""CLIP (Radford et al., 2021): a ViT and a text Transformer trained so that matching image and
caption embeddings are close, on mmtx.layers, with conversion from Hugging Face and open_clip.

    images (B, C, H, W) -> ViT -> class token -> Linear (no bias) -> L2 norm -> (B, D)
    ids (B, L) -> TextEncoder (causal) -> end-of-text token -> Linear (no bias) -> L2 norm -> (B, D)
    logits = exp(logit_scale) * image_features @ text_features.T   (scale clamped at 100)

The loss is `mmtx.models.contrastive.clip_loss` (the global batch under several processes,
NegCLIP hard negatives); `zero_shot_classifier` builds a trained model's zero-shot classifier
(`mmtx.eval.retrieval` scores images against it, and measures retrieval).
`from_hf_clip` / `from_open_clip` load those libraries' CLIP models (the reading of their
modules is in convert/clip.py), so published weights a user has can be used here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contrastive import (
    INIT_TEMPERATURE,
    MAX_LOGIT_SCALE,
    class_embeddings,
    clip_loss,
    logit_scale_from,
    logit_scale_param,
)
from .convert.clip import (
    hf_clip_kwargs,
    load_hf_clip_weights,
    load_open_clip_weights,
    open_clip_kwargs,
)
from .examples import image_and_text, register_example
from .registry import register_model
from .text import TextEncoder
from .vit import ViT


class CLIP(nn.Module):
    """Dual encoder: `visual` (ViT, pre-norm, class token) and `text` (causal TextEncoder).

    Vision options are the ViT's (img_size, patch_size, in_chans, dim, depth, num_heads); the
    text tower is sized by vocab_size, max_len (the context length), text_dim, text_depth,
    text_heads. embed_dim: the shared embedding width. act: "gelu", "gelu_tanh", "relu",
    "silu" or "quick_gelu" (OpenAI CLIP). text_pool: "eos" (the first eos_id, the end of text
    of mmtx tokenizers and current HF configs) or "argmax" (the largest id: open_clip, old HF
    configs), also "cls" / "last". drop_rate: dropout on embeddings and residual branches.
    vision_kwargs / text_kwargs: further ViT / TextEncoder options (converters use them).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, *,
                 vocab_size: int = 49408, max_len: int = 77, text_dim: int = 512,
                 text_depth: int = 12, text_heads: int = 8, text_mlp_ratio: float | None = None,
                 embed_dim: int = 512, act: str = "gelu", norm_eps: float = 1e-5,
                 text_pool: str = "eos", eos_id: int = 2, causal_text: bool = True,
                 init_temperature: float = INIT_TEMPERATURE,
                 max_logit_scale: float = MAX_LOGIT_SCALE, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 vision_kwargs: dict | None = None, text_kwargs: dict | None = None):
        super().__init__()
        self.act, self.init_temperature = act, init_temperature
        self.max_logit_scale = max_logit_scale
        self.visual = ViT(**{**dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
            dim=dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, pool="token",
            pre_norm=True, norm_eps=norm_eps, act=act, pos_drop_rate=drop_rate,
            proj_drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
            drop_path_rate=drop_path_rate), **(vision_kwargs or {})})
        self.text = TextEncoder(**{**dict(
            vocab_size=vocab_size, max_len=max_len, dim=text_dim, depth=text_depth,
            num_heads=text_heads, mlp_ratio=text_mlp_ratio or mlp_ratio, causal=causal_text,
            pool=text_pool, eos_id=eos_id, norm_eps=norm_eps, act=act,
            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            mlm_head=False, pooler=False), **(text_kwargs or {})})
        self.visual_proj = nn.Linear(self.visual.num_features, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = logit_scale_param(init_temperature)
        self.tokenizer = None  # zero_shot_classifier's default tokenizer
        self.init_weights()

    def init_weights(self) -> None:
        """The projections: N(0, width^-0.5), as CLIP, so projected features start at about
        unit scale; the log-scale: log(1 / init_temperature). The towers init themselves
        (timm's ViT init, BERT's text init: `visual.init_weights()`, `text.init_weights()`)."""
        for proj in (self.visual_proj, self.text_proj):
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)
        with torch.no_grad():
            self.logit_scale.copy_(logit_scale_param(self.init_temperature))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, C, H, W) -> (B, embed_dim), L2-normalised unless normalize=False."""
        x = self.visual.forward_head(self.visual.forward_features(images), pre_logits=True)
        x = self.visual_proj(x)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = True) -> torch.Tensor:
        """ids (B, L) [+ attention_mask (B, L), 1 on real tokens] -> (B, embed_dim)."""
        x = self.text.forward_features(ids, attention_mask)
        x = self.text_proj(self.text.pooled(x, attention_mask, ids))
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped to [1, max_logit_scale], the multiplier of the cosines."""
        return logit_scale_from(self.logit_scale, self.max_logit_scale)

    def forward(self, images: torch.Tensor, ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None):
        """-> (image_features (B, D), text_features (B, D), logit_scale), features normalised."""
        return self.encode_image(images), self.encode_text(ids, attention_mask), self.scale()

    def loss(self, image_features: torch.Tensor, text_features: torch.Tensor,
             logit_scale: torch.Tensor, hard_negative_features: torch.Tensor | None = None,
             hard_negative_mask: torch.Tensor | None = None, **loss_kw) -> torch.Tensor:
        """Symmetric contrastive loss over the global batch (`contrastive.clip_loss`; loss_kw:
        gather, ddp_average, group). hard_negative_features (B, D): one foil caption's
        embedding per caption, an extra negative for its image (NegCLIP); hard_negative_mask
        (B,) bool keeps the foils that exist."""
        return clip_loss(image_features, text_features, logit_scale,
                         hard_negatives=hard_negative_features,
                         hard_negative_mask=hard_negative_mask, **loss_kw)

    @torch.no_grad()
    def zero_shot_classifier(self, class_names: Sequence[str],
                             templates: Sequence[str] = ("a {}",),
                             tokenizer=None) -> torch.Tensor:
        """(C, D) unit class embeddings: each class name put in every template ("a {}.",
        `str.format`), encoded, and the templates' embeddings averaged (prompt ensembling).

        `tokenizer`: an mmtx tokenizer (`encode(text) -> ids` with bos/eos), by default
        `self.tokenizer`. A prompt with a word outside its vocabulary (its unknown token), or
        longer than max_len, is a ValueError naming the prompt.
        """
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("tokenizer must be given (or set as model.tokenizer)")
        if not class_names or not templates:
            raise ValueError(f"class_names and templates must be non-empty, got "
                             f"{len(class_names)} class names and {len(templates)} templates")
        prompts = [t.format(c) for c in class_names for t in templates]
        seqs = [tokenizer.encode(p) for p in prompts]
        unk = getattr(tokenizer, "unk_id", None)
        for p, s in zip(prompts, seqs):
            if unk is not None and unk in s:
                raise ValueError(f"prompt {p!r} has a word outside the tokenizer's vocabulary")
            if len(s) > self.text.embed.max_len:
                raise ValueError(f"prompt {p!r} is {len(s)} tokens, more than max_len="
                                 f"{self.text.embed.max_len}")
        device = self.logit_scale.device
        ids = torch.full((len(seqs), max(map(len, seqs))), getattr(tokenizer, "pad_id", 0),
                         dtype=torch.long, device=device)  # (C*P, L), right-padded
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, device=device)
            mask[i, :len(s)] = True
        emb = self.encode_text(ids, mask)  # (C*P, D)
        return class_embeddings(emb.view(len(class_names), len(templates), -1))  # (C, D)


def _clip(defaults: dict, overrides: dict) -> CLIP:
    return CLIP(**{**defaults, **overrides})


_SHAPES = dict(img_size=32, patch_size=4, vocab_size=64, max_len=32)  # the shapes captions


@register_model(family="clip", task="contrastive")
def clip_tiny_patch4_32(**overrides) -> CLIP:
    """ViT 128 wide, 4 deep on 32 px images (the captioner's), text 128 wide, 2 deep."""
    return _clip(dict(**_SHAPES, dim=128, depth=4, num_heads=4, text_dim=128, text_depth=2,
                      text_heads=4, embed_dim=128), overrides)


@register_model(family="clip", task="contrastive")
def clip_small_patch4_32(**overrides) -> CLIP:
    """ViT 256 wide, 6 deep on 32 px images, text 256 wide, 3 deep."""
    return _clip(dict(**_SHAPES, dim=256, depth=6, num_heads=4, text_dim=256, text_depth=3,
                      text_heads=4, embed_dim=256), overrides)


@register_model(family="clip", task="contrastive")
def clip_base_patch32_224(**overrides) -> CLIP:
    """OpenAI CLIP ViT-B/32's shape (quick_gelu, 49408-token BPE, context 77): load its weights
    with from_hf_clip / from_open_clip."""
    return _clip(dict(img_size=224, patch_size=32, dim=768, depth=12, num_heads=12,
                      text_dim=512, text_depth=12, text_heads=8, embed_dim=512,
                      act="quick_gelu", text_pool="argmax"), overrides)


class PairLogits(nn.Module):
    """A dual encoder's (image_features, text_features, logit_scale) as one (B, B) tensor of
    image-to-text logits: what the example over every registered model checks and
    backpropagates."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, ids):
        image_features, text_features, scale = self.model(images, ids)
        return scale * image_features @ text_features.T


register_example("clip", image_and_text("pairs", PairLogits, embed_dim=16))


# --- conversion (the reading of the other libraries' models is in convert/clip.py) -----------


def from_hf_clip(hf_model) -> CLIP:
    """A `CLIP` with the weights of a Hugging Face `CLIPModel`: image and text embeddings
    agree to 1e-4 (fp32). Options mmtx cannot reproduce raise ValueError naming them."""
    model = CLIP(**hf_clip_kwargs(hf_model))
    load_hf_clip_weights(model, hf_model)
    return model.to(hf_model.logit_scale.device).train(hf_model.training)


def from_open_clip(oc_model) -> CLIP:
    """A `CLIP` with the weights of an open_clip `CLIP` (or `CustomTextCLIP` with its own text
    Transformer): embeddings agree to 1e-4 (fp32). Unsupported options (timm or ResNet towers,
    attentional pooling, custom blocks, SigLIP's logit bias, ...) raise ValueError naming them."""
    model = CLIP(**open_clip_kwargs(oc_model))
    load_open_clip_weights(model, oc_model)
    return model.to(oc_model.logit_scale.device).train(oc_model.training)


__all__ = ["CLIP", "from_hf_clip", "from_open_clip"]



