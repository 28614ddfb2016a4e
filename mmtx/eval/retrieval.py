"""Retrieval recall@k both ways, zero-shot accuracy and foil accuracy, from embeddings.

Every measure ranks by cosine similarity (embeddings are L2-normalised here) and breaks ties
against the model: a positive tied with a negative counts as ranked below it, so degenerate
embeddings (all equal) score zero, not one.

    m = retrieval_recall(image_emb, text_emb)                        # image i <-> text i
    m = retrieval_recall(image_emb, text_emb, text_to_image=img_of)  # several captions each
    m["image_to_text_R@1"], m["text_to_image_R@5"]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.contrastive import class_embeddings  # noqa: F401 (also a name of mmtx.eval)

_CHUNK = 1024  # query rows scored at once: bounds memory at _CHUNK x N similarities


def _check_2d(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a (N, D) tensor, got {got}")
    return F.normalize(x.float(), dim=-1)


def _check_ks(ks) -> tuple[int, ...]:
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks: expected positive ints, got {ks!r}")
    return ks


def retrieval_ranks(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                    text_to_image: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks of the first correct answer: (image->text (N_img,), text->image (N_txt,)).

    text_to_image: (N_txt,) long, the image index of each text; default arange (N_img ==
    N_txt, image i matches text i). An image's rank counts the non-matching texts scoring at
    least as high as its best-scoring caption; a text's rank counts the other images scoring at
    least as high as its own image.
    """
    images, texts = _check_2d("image_embeds", image_embeds), _check_2d("text_embeds", text_embeds)
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"image_embeds, text_embeds: expected one width D, got "
                         f"{images.shape[1]} and {texts.shape[1]}")
    n_img, n_txt = len(images), len(texts)
    if text_to_image is None:
        if n_img != n_txt:
            raise ValueError(f"text_to_image: needed when there are {n_img} images and "
                             f"{n_txt} texts (image i matches text i only when counts agree)")
        text_to_image = torch.arange(n_txt)
    text_to_image = torch.as_tensor(text_to_image, device=texts.device).long()
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image: expected shape ({n_txt},), got "
                         f"{tuple(text_to_image.shape)}")
    if n_txt and (text_to_image.min() < 0 or text_to_image.max() >= n_img):
        raise ValueError(f"text_to_image: expected image indices in [0, {n_img}), got values in "
                         f"[{int(text_to_image.min())}, {int(text_to_image.max())}]")
    captions_per_image = torch.bincount(text_to_image, minlength=n_img)
    if (captions_per_image == 0).any():
        missing = torch.nonzero(captions_per_image == 0).flatten()
        raise ValueError(f"text_to_image: {len(missing)} image(s) have no caption, e.g. image "
                         f"{int(missing[0])}; pass only images that some text matches")

    image_ranks = torch.empty(n_img, dtype=torch.long, device=texts.device)
    for s in range(0, n_img, _CHUNK):
        sims = images[s : s + _CHUNK] @ texts.T  # (c, N_txt)
        rows = torch.arange(s, s + len(sims), device=texts.device)
        positive = text_to_image[None, :] == rows[:, None]  # (c, N_txt)
        best = sims.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # (c, 1)
        image_ranks[s : s + len(sims)] = ((sims >= best) & ~positive).sum(dim=1)

    text_ranks = torch.empty(n_txt, dtype=torch.long, device=texts.device)
    for s in range(0, n_txt, _CHUNK):
        sims = texts[s : s + _CHUNK] @ images.T  # (c, N_img)
        own = sims.gather(1, text_to_image[s : s + len(sims), None])  # (c, 1)
        text_ranks[s : s + len(sims)] = (sims >= own).sum(dim=1) - 1  # minus the image itself
    return image_ranks, text_ranks


def retrieval_recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                     text_to_image: torch.Tensor | None = None,
                     ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways: the share of images whose top k texts hold one of their captions
    ("image_to_text_R@k") and of texts whose top k images hold theirs ("text_to_image_R@k")."""
    ks = _check_ks(ks)
    image_ranks, text_ranks = retrieval_ranks(image_embeds, text_embeds, text_to_image)
    out = {}
    for direction, ranks in (("image_to_text", image_ranks), ("text_to_image", text_ranks)):
        for k in ks:
            out[f"{direction}_R@{k}"] = (ranks < k).float().mean().item()
    return out


def zero_shot_logits(image_embeds: torch.Tensor, class_embeds: torch.Tensor) -> torch.Tensor:
    """(N, C) cosine similarity of each image to each class's text embedding."""
    images, classes = _check_2d("image_embeds", image_embeds), class_embeddings(class_embeds)
    if images.shape[1] != classes.shape[1]:
        raise ValueError(f"image_embeds, class_embeds: expected one width D, got "
                         f"{images.shape[1]} and {classes.shape[1]}")
    return images @ classes.T


def zero_shot_accuracy(image_embeds: torch.Tensor, class_embeds: torch.Tensor,
                       labels: torch.Tensor, ks=(1,)) -> dict[str, float]:
    """Top-k zero-shot accuracy ("top1", "top5", ...): the image's class among the k classes
    whose text embeddings (C, D), or prompt ensembles (C, P, D), are most similar to it."""
    ks = _check_ks(ks)
    logits = zero_shot_logits(image_embeds, class_embeds)  # (N, C)
    labels = torch.as_tensor(labels, device=logits.device).long()
    if labels.shape != (len(logits),):
        raise ValueError(f"labels: expected shape ({len(logits)},), got {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels: expected class ids in [0, {logits.shape[1]}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    own = logits.gather(1, labels[:, None])  # (N, 1)
    ranks = (logits >= own).sum(dim=1) - 1  # other classes at least as close
    return {f"top{k}": (ranks < k).float().mean().item() for k in ks}


def foil_accuracy(image_embeds: torch.Tensor, caption_embeds: torch.Tensor,
                  foil_embeds: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Share of images more similar to their caption than to its foil (a tie is a miss);
    `mask` (N,) bool keeps the rows whose foil exists. Chance is 0.5."""
    images = _check_2d("image_embeds", image_embeds)
    captions, foils = _check_2d("caption_embeds", caption_embeds), _check_2d("foil_embeds",
                                                                            foil_embeds)
    if not images.shape == captions.shape == foils.shape:
        raise ValueError(f"image_embeds, caption_embeds, foil_embeds: expected one (N, D) "
                         f"shape, got {tuple(images.shape)}, {tuple(captions.shape)} and "
                         f"{tuple(foils.shape)}")
    wins = (images * captions).sum(-1) > (images * foils).sum(-1)  # (N,)
    if mask is not None:
        mask = torch.as_tensor(mask, device=wins.device).bool()
        if mask.shape != wins.shape:
            raise ValueError(f"mask: expected shape {tuple(wins.shape)}, got {tuple(mask.shape)}")
        wins = wins[mask]
    if not len(wins):
        raise ValueError("mask: no rows left to score")
    return wins.float().mean().item()
