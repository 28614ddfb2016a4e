"""An image captioner: a ViT encoder and a TextDecoder that cross-attends to its patch tokens.

    images (B, C, H, W) -> ViT -> patch tokens (B, N, dim)  ....................  context
    caption ids (B, L) -> TextDecoder (causal self-attention, cross-attention) -> logits (B, L, V)

Both halves are the existing mmtx models, so every attention is `mmtx.layers.Attention`.
Captions are `bos ... eos` then padding (mmtx tokenizers: pad 0, bos 1, eos 2), as
`mmtx.data.CaptionCollate` makes them; teacher forcing feeds ids[:, :-1] and predicts ids[:, 1:].
Right padding needs no mask: the decoder is causal, so no real token reads a later pad.

`caption` decodes with the KV cache (the patch tokens' cross-attention keys and values projected
once per image, also under beam search) and returns strings when a tokenizer is attached;
`score` gives each caption's log-likelihood, so a caption can be ranked against its foils.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .decoding import trim_finished
from .examples import image_and_text, register_example
from .registry import register_model
from .text import TextDecoder, check_ids
from .vit import ViT


class ImageCaptioner(nn.Module):
    """ViT (no class token; all patch tokens, final-normed) + cross-attending TextDecoder.

    The vision options (img_size, patch_size, in_chans, dim, depth, num_heads) are the ViT's;
    text_dim / text_depth / text_heads size the decoder (text_dim defaults to dim; when they
    differ, each cross-attention projects the patch tokens to its own width). drop_rate is the
    dropout on embeddings and residual branches of both. vision_pos: the ViT's position
    embedding ("learn", or "sincos": fixed 2-D sin-cos, where the patch positions that words
    like "left of" depend on are there from the first step). `tokenizer` (an attribute, None by
    default) turns `caption`'s token ids into strings.
    """

    def __init__(self, img_size=32, patch_size=4, in_chans: int = 3, dim: int = 128,
                 depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0, *,
                 vocab_size: int = 64, max_len: int = 32, text_dim: int | None = None,
                 text_depth: int = 2, text_heads: int | None = None, pos: str = "learned",
                 act: str = "gelu", drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, bos_id: int = 1, eos_id: int = 2,
                 pad_id: int = 0, vision_pos: str = "learn"):
        super().__init__()
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.max_len, self.vocab_size = max_len, vocab_size
        drops = dict(attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        self.visual = ViT(img_size, patch_size, in_chans, 0, dim, depth, num_heads, mlp_ratio,
                          pool="avg", class_token=False, fc_norm=False, act=act,
                          pos_embed=vision_pos,
                          pos_drop_rate=drop_rate, proj_drop_rate=drop_rate, **drops)
        self.decoder = TextDecoder(vocab_size, max_len, text_dim or dim, text_depth,
                                   text_heads or num_heads, mlp_ratio, pos=pos, act=act,
                                   drop_rate=drop_rate, cross_attention=True, context_dim=dim,
                                   **drops)
        self.tokenizer = None

    def init_weights(self) -> None:
        """Each half keeps its own init: timm's for the ViT, GPT-2's for the decoder."""
        self.visual.init_weights()
        self.decoder.init_weights()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> patch tokens (B, N, dim), the decoder's context."""
        return self.visual.forward_features(images)

    def _check_captions(self, ids: torch.Tensor, name: str = "caption_ids") -> None:
        check_ids(ids, self.vocab_size, name)
        if ids.shape[1] > self.max_len:
            raise ValueError(f"{name} has length {ids.shape[1]}, more than max_len="
                             f"{self.max_len}; cut captions to max_len (CaptionCollate(max_len=))")

    def forward(self, images: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: images (B, C, H, W), caption_ids (B, L) -> logits (B, L, V); the
        logits at position t predict token t + 1."""
        self._check_captions(caption_ids)
        return self.decoder(caption_ids, context=self.encode_image(images))

    def score(self, images: torch.Tensor, caption_ids: torch.Tensor,
              caption_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each caption's log-likelihood given its image, (B,): the sum of log p(token) over
        its tokens after bos (eos included), padding (caption_mask False) left out."""
        self._check_captions(caption_ids)
        logits = self.decoder(caption_ids[:, :-1], context=self.encode_image(images))
        target = caption_ids[:, 1:]  # (B, L - 1)
        logp = logits.float().log_softmax(-1).gather(-1, target[..., None])[..., 0]
        if caption_mask is not None:
            if caption_mask.shape != caption_ids.shape:
                raise ValueError(f"caption_mask must have the shape of caption_ids "
                                 f"{tuple(caption_ids.shape)}, got {tuple(caption_mask.shape)}")
            logp = logp.masked_fill(~caption_mask[:, 1:].bool(), 0.0)
        return logp.sum(-1)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_new_tokens: int | None = None,
                 beam_size: int = 1, *, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True, stop_at_eos: bool = True,
                 length_penalty: float = 1.0, generator: torch.Generator | None = None):
        """Token ids (B, 1 + T): bos, then up to max_new_tokens (default max_len - 1) tokens,
        eos-filled after eos, up to the step where every row has ended. Greedy by default;
        beam_size > 1 is beam search."""
        return self._generate(self.encode_image(images), max_new_tokens, beam_size,
                              temperature=temperature, top_k=top_k, top_p=top_p,
                              use_cache=use_cache, stop_at_eos=stop_at_eos,
                              length_penalty=length_penalty, generator=generator)

    def _generate(self, context, max_new_tokens, beam_size, *, temperature: float = 0.0,
                  stop_at_eos: bool = True, **kw):
        max_new_tokens = self.max_len - 1 if max_new_tokens is None else max_new_tokens
        start = torch.full((len(context), 1), self.bos_id, dtype=torch.long,
                           device=context.device)
        eos = self.eos_id if stop_at_eos else None
        out = self.decoder.generate(start, max_new_tokens, temperature, eos_id=eos,
                                    context=context, beam_width=beam_size, **kw)
        return out if eos is None else trim_finished(out, eos, start=1)

    @torch.no_grad()
    def caption(self, images: torch.Tensor, max_new_tokens: int | None = None,
                beam_size: int = 1, tokenizer=None, return_attn: bool = False, **generate_kw):
        """Captions of `images` (B, C, H, W): a list of B strings with a tokenizer (the argument,
        else `self.tokenizer`), else the generated token ids (B, T) (bos dropped). Greedy by
        default; generate_kw: `generate`'s options (temperature, top_k, use_cache, ...).

        return_attn=True also returns attention maps (B, T, gh, gw): for generated token t, the
        last decoder layer's cross-attention over the gh x gw patch grid (heads averaged; each
        map sums to 1) of the query that produced it. They come from one teacher-forced pass
        over the decoded tokens, which computes what decoding computed, for any beam_size.
        """
        context = self.encode_image(images)
        ids = self._generate(context, max_new_tokens, beam_size, **generate_kw)  # (B, 1 + T)
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        out = ids[:, 1:] if tokenizer is None else [
            tokenizer.decode(_until_eos(row, self.eos_id)) for row in ids[:, 1:].tolist()]
        if not return_attn:
            return out
        grid = self.visual.patch_embed.grid_for(*images.shape[-2:])
        return out, self._attention_maps(context, ids[:, :-1], grid)

    def _attention_maps(self, context, ids, grid) -> torch.Tensor:
        """Last layer's cross-attention, heads averaged: (B, T, gh, gw) for ids (B, T)."""
        _, inter = self.decoder.forward_features(ids, context=context, return_attn=True)
        attn = inter.cross_attn[-1].float().mean(1)  # (B, T, N)
        return attn.reshape(*attn.shape[:2], *grid)  # (B, T, gh, gw), patches row-major


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[:ids.index(eos_id)] if eos_id in ids else ids


def _captioner(defaults: dict, overrides: dict) -> ImageCaptioner:
    return ImageCaptioner(**{**defaults, **overrides})


@register_model(family="captioner", task="captioning")
def captioner_tiny_patch4_32(**overrides) -> ImageCaptioner:
    """ViT 128 wide, 4 deep on 8 x 8 patches of 32 px images; a 2-block decoder (~1.3M)."""
    return _captioner(dict(img_size=32, patch_size=4, dim=128, depth=4, num_heads=4,
                           text_depth=2), overrides)


@register_model(family="captioner", task="captioning")
def captioner_small_patch4_32(**overrides) -> ImageCaptioner:
    """ViT 256 wide, 6 deep on 32 px images; a 3-block decoder (~8M)."""
    return _captioner(dict(img_size=32, patch_size=4, dim=256, depth=6, num_heads=4,
                           text_depth=3), overrides)


register_example("captioner", image_and_text("tokens"))


__all__ = ["ImageCaptioner"]

