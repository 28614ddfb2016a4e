"""The CLIP contrastive loss over the global batch, with optional hard-negative captions.

Under several processes every process gathers the image and text features of all of them and
computes the same (N, N) logits of the global batch (N = sum of the per-process batch sizes),
as open_clip's ClipLoss does with `local_loss=False, gather_with_grad=False`: the gathered
copies are constants, and only each process's own slice is its own tensors, so gradients flow
to the local features. Image i of the global batch matches text i: the labels are
arange(N), and a process's own rows start at `offset`, the sizes of the processes before it.

Gradients. The loss value is the same on every process. The gradient each process gets for
its own features is exactly that slice of the single-process gradient, so summing the
processes' contributions gives the single-process gradient; `logit_scale` gets the whole
single-process gradient on every process. A DDP wrapper *averages* gradients over W processes,
which leaves logit_scale exact but divides the encoders' gradients by W (as in open_clip; with
Adam/AdamW the constant factor barely matters). `ddp_average=True` multiplies the gradient
reaching the local features by W, so that after DDP's averaging every parameter gets exactly
the single-process gradient.

Hard negatives (NegCLIP, Yuksekgonul et al. 2023): one foil caption per caption, its text
embedding (B, D) passed as `hard_negatives`; the image-to-text logits get N more columns, one
per gathered foil, so each image must also prefer its caption to every foil, its own included.
Text-to-image is unchanged: a foil has no image. `hard_negative_mask` (B,) bool drops the foils
that do not exist (False: no foil, e.g. make_foils gave None).

The model owns the temperature: `self.logit_scale = logit_scale_param()` (log(1/0.07)), and
passes `logit_scale_from(self.logit_scale)` (clamped so the scale is at most 100) to the loss.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

INIT_TEMPERATURE = 0.07  # CLIP's initial softmax temperature
MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) here to keep training stable


def class_embeddings(class_embeds: torch.Tensor) -> torch.Tensor:
    """(C, D) unit class vectors; (C, P, D), one row per prompt template, are averaged after
    normalising and normalised again (CLIP's prompt ensembling). What a dual encoder's zero-shot
    classifier is made of; `mmtx.eval.retrieval` scores images against it."""
    if isinstance(class_embeds, torch.Tensor) and class_embeds.dim() == 3:
        class_embeds = F.normalize(class_embeds.float(), dim=-1).mean(dim=1)  # (C, D)
    if not isinstance(class_embeds, torch.Tensor) or class_embeds.dim() != 2:
        got = tuple(class_embeds.shape) if isinstance(class_embeds, torch.Tensor) \
            else type(class_embeds).__name__
        raise ValueError(f"class_embeds: expected a (N, D) tensor, got {got}")
    return F.normalize(class_embeds.float(), dim=-1)


def logit_scale_param(temperature: float = INIT_TEMPERATURE) -> nn.Parameter:
    """A learnable log-scale, log(1 / temperature): log(1/0.07) = 2.659 by default."""
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature!r}")
    return nn.Parameter(torch.tensor(math.log(1.0 / temperature)))


def logit_scale_from(log_scale: torch.Tensor, max_scale: float = MAX_LOGIT_SCALE) -> torch.Tensor:
    """exp(log_scale) clamped to [1, max_scale]; the clamp is differentiable (no gradient past
    the bound) and never writes to the parameter."""
    return log_scale.clamp(0.0, math.log(max_scale)).exp()


@torch.no_grad()
def clamp_logit_scale_(log_scale: torch.Tensor, max_scale: float = MAX_LOGIT_SCALE) -> None:
    """Clamp the parameter itself to [0, log(max_scale)] in place, after an optimiser step
    (open_clip's way: then the parameter never drifts past the bound)."""
    log_scale.clamp_(0.0, math.log(max_scale))


def _world(group) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group), dist.get_rank(group)
    return 1, 0


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `factor` on the way back."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def gather_features(x: torch.Tensor, group=None) -> tuple[torch.Tensor, int]:
    """(global (N, ...) tensor, offset of this process's rows) from every process's (B_r, ...).

    Other processes' rows are constants; this process's rows are `x` itself, so its gradients
    flow. Batch sizes may differ between processes (rows are padded for the exchange). Without
    torch.distributed initialised: (x, 0).
    """
    world, rank = _world(group)
    if world == 1:
        return x, 0
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    padded = x.detach().new_zeros((max(sizes), *x.shape[1:]))  # (B_max, ...)
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    parts = [p[:s] for p, s in zip(parts, sizes)]
    parts[rank] = x  # the local rows keep their graph
    return torch.cat(parts), sum(sizes[:rank])


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor | float, *, hard_negatives: torch.Tensor | None = None,
              hard_negative_mask: torch.Tensor | None = None, gather: bool = True,
              ddp_average: bool = False, group=None) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch: (CE(image->text) + CE(text->image)) / 2.

    Args:
        image_features, text_features: (B, D) this process's embeddings, row i of each a pair;
            normally L2-normalised by the model.
        logit_scale: the multiplier of the cosine similarities, i.e. exp(log-scale), a scalar
            tensor (see logit_scale_from) or a float.
        hard_negatives: optional (B, D) embeddings of one foil caption per caption, extra
            negatives for image->text only.
        hard_negative_mask: optional (B,) bool, True where the foil exists.
        gather: False treats the inputs as the whole batch even under torch.distributed.
        ddp_average: scale the local features' gradients by the world size, so that DDP's
            averaging yields the single-process gradient (see the module docstring).
        group: the torch.distributed process group (default: the world).
    """
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(f"image_features, text_features: expected two (B, D) tensors of one "
                         f"shape, got {tuple(image_features.shape)} and "
                         f"{tuple(text_features.shape)}")
    parts = [image_features, text_features]
    if hard_negatives is not None:
        if hard_negatives.shape != text_features.shape:
            raise ValueError(f"hard_negatives: expected {tuple(text_features.shape)} like "
                             f"text_features, got {tuple(hard_negatives.shape)}")
        parts.append(hard_negatives)
    elif hard_negative_mask is not None:
        raise ValueError("hard_negative_mask: given without hard_negatives")
    if hard_negative_mask is not None:
        if hard_negative_mask.shape != (len(image_features),):
            raise ValueError(f"hard_negative_mask: expected shape ({len(image_features)},), "
                             f"got {tuple(hard_negative_mask.shape)}")
        parts.append(hard_negative_mask.to(image_features)[:, None])  # (B, 1) of 0/1

    world = _world(group)[0] if gather else 1
    dim = image_features.shape[1]
    packed = torch.cat(parts, dim=1)  # (B, 2D, 3D or 3D+1): one exchange for all of them
    if world > 1:
        if ddp_average:
            packed = _ScaleGrad.apply(packed, float(world))
        packed, _ = gather_features(packed, group)  # (N, 2D, 3D or 3D+1)
    images, texts = packed[:, :dim], packed[:, dim : 2 * dim]  # (N, D) each

    logits_per_image = logit_scale * images @ texts.T  # (N, N)
    logits_per_text = logits_per_image.T  # (N, N): text i against every image
    if hard_negatives is not None:
        foils = packed[:, 2 * dim : 3 * dim]  # (N, D)
        foil_logits = logit_scale * images @ foils.T  # (N, N)
        if hard_negative_mask is not None:
            keep = packed[:, 3 * dim].detach() > 0.5  # (N,)
            foil_logits = foil_logits.masked_fill(~keep[None, :], float("-inf"))
        logits_per_image = torch.cat([logits_per_image, foil_logits], dim=1)  # (N, 2N)
    labels = torch.arange(len(images), device=images.device)
    return (F.cross_entropy(logits_per_image, labels)
            + F.cross_entropy(logits_per_text, labels)) / 2


class ClipLoss(nn.Module):
    """clip_loss with its options fixed: loss = ClipLoss()(img, txt, scale, hard_negatives=...)."""

    def __init__(self, gather: bool = True, ddp_average: bool = False, group=None):
        super().__init__()
        self.gather, self.ddp_average, self.group = gather, ddp_average, group

    def forward(self, image_features, text_features, logit_scale, hard_negatives=None,
                hard_negative_mask=None) -> torch.Tensor:
        return clip_loss(image_features, text_features, logit_scale,
                         hard_negatives=hard_negatives, hard_negative_mask=hard_negative_mask,
                         gather=self.gather, ddp_average=self.ddp_average, group=self.group)
