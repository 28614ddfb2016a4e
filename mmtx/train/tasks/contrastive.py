"""Contrastive image-text training (CLIP), optionally with hard-negative foil captions (NegCLIP).

batch {"image", "caption_ids", "caption_mask"[, "foil_ids", "foil_mask", "has_foil"]}
(CaptionCollate); the model is a `CLIP`: model(images, ids, mask) -> (image features, text
features, logit scale), features L2-normalised. The loss is `mmtx.models.contrastive.clip_loss`
over the global batch: under several processes every process gathers all features, and the
local features' gradients are scaled so that after DDP's averaging each parameter gets the
single-process gradient.

Evaluation: retrieval recall both ways over the split (items whose caption repeats an earlier
one are left out: two equal captions have equal embeddings, and neither could rank first), and
zero-shot shape and colour accuracy on one-object scenes drawn for the purpose, each class
embedding the average over prompts naming every other attribute ("a small red {}", ...).
"""

from __future__ import annotations

import torch

from ...data import CaptionCollate, ShapesDataset
from ...data.protocols import ImageDataset
from ...data.render import COLOURS, SHAPES
from ...eval.retrieval import retrieval_recall, zero_shot_accuracy
from ...models.contrastive import clip_loss
from .base import Task, image_kwargs, register_task
from .captioning import caption_tokenizer, pad_to

SIZES = ("small", "large")
# Class name -> prompts: every other attribute spelled out, averaged (prompt ensembling).
ZERO_SHOT = {
    "shape": (list(SHAPES), [f"a {s} {c} {{}}" for s in SIZES for c in COLOURS]),
    "colour": (list(COLOURS), [f"a {s} {{}} {h}" for s in SIZES for h in SHAPES]),
}


@register_task("contrastive")
class ContrastiveTask(Task):
    unit = "images"
    main_metric = "image_to_text_R@1"
    higher_is_better = True

    def __init__(self, max_len: int = 24, hard_negatives=None, zero_shot_images: int = 400,
                 zero_shot_seed: int = 123):
        self.max_len, self.zero_shot_images = max_len, zero_shot_images
        self.zero_shot_seed = zero_shot_seed
        self.hard_negatives = hard_negatives  # foil kinds (NegCLIP), or None
        self.tokenizer, self.image_size, self._zero_shot = None, None, None

    def setup(self, dataset) -> None:
        self.tokenizer = caption_tokenizer(dataset)
        base = getattr(dataset, "base", dataset)
        if self.hard_negatives and not getattr(base, "return_foils", None):
            raise ValueError("task.args.hard_negatives needs foil captions in the data: set "
                             f"data.args.return_foils (e.g. {list(self._kinds())}), got none")
        self.image_size = dataset.image_size if isinstance(dataset, ImageDataset) else None

    def model_kwargs(self, dataset) -> dict:
        return {"vocab_size": caption_tokenizer(dataset).vocab_size, "max_len": self.max_len,
                **image_kwargs(dataset)}

    def check_batch(self, batch_size: int, num_processes: int) -> None:
        # Each image's negatives are the other captions of the batch, gathered from every
        # process: with one image in all, the loss is 0 (a softmax over one logit).
        if batch_size * num_processes < 2:
            raise ValueError(f"data.batch_size: the contrastive task needs at least 2 images "
                             f"in a batch (the other captions are each image's negatives; with "
                             f"1 the loss is 0 and nothing is learned), got {batch_size} per "
                             f"process x {num_processes} process(es)")

    def _kinds(self) -> tuple[str, ...]:
        kinds = self.hard_negatives
        return (kinds,) if isinstance(kinds, str) else tuple(kinds or ())

    def collate_fn(self, dataset):
        return CaptionCollate(self.tokenizer, self.max_len, foils=self._kinds() or None)

    def step(self, model, batch):
        ids, mask = batch["caption_ids"], batch["caption_mask"]
        n = len(ids)
        if self.hard_negatives:
            # captions and foils through the text tower as one batch of 2B, in the model's own
            # forward (one pass instead of two: this model's step is made of small kernels)
            ids, mask = _stack_texts((ids, mask), (batch["foil_ids"], batch["foil_mask"]),
                                     self.tokenizer.pad_id)
        images, texts, scale = model(batch["image"], ids, mask)
        foils = has_foil = None
        if self.hard_negatives:
            texts, foils, has_foil = texts[:n], texts[n:].float(), batch["has_foil"]
        loss = clip_loss(images.float(), texts.float(), scale.float(), hard_negatives=foils,
                         hard_negative_mask=has_foil, ddp_average=True)
        return loss, {"loss": loss.detach(), "logit_scale": scale.detach().float()}

    def eval_step(self, model, batch):
        images, texts, _ = model(batch["image"], batch["caption_ids"], batch["caption_mask"])
        return {"image": images.float(), "text": texts.float(),
                "ids": pad_to(batch["caption_ids"], self.max_len, self.tokenizer.pad_id)}

    def eval_finalize(self, outputs):
        _, first = _unique_rows(outputs["ids"])
        out = retrieval_recall(outputs["image"][first], outputs["text"][first], ks=(1, 5))
        out["count"] = int(len(first))
        return out

    def eval_whole_model(self, model, split, step, run_dir, log):
        """Zero-shot shape and colour accuracy on one-object scenes (the same every eval)."""
        if not self.zero_shot_images or not self.image_size:
            return {}
        if self._zero_shot is None:
            ds = ShapesDataset(split="test", num_samples=self.zero_shot_images, task="shape",
                               image_size=self.image_size, seed=self.zero_shot_seed)
            items = [ds[i] for i in range(len(ds))]
            self._zero_shot = (torch.stack([it["image"] for it in items]),
                               [it["attributes"]["objects"][0] for it in items])
        images, objects = self._zero_shot
        device = next(model.parameters()).device
        feats = model.encode_image(images.to(device)).float()
        out = {}
        for attr, (names, templates) in ZERO_SHOT.items():
            classes = model.zero_shot_classifier(names, templates, self.tokenizer).float()
            labels = torch.tensor([names.index(o[attr]) for o in objects], device=device)
            out[f"zero_shot_{attr}"] = zero_shot_accuracy(feats, classes, labels)["top1"]
        return out

    def summary(self, results):
        return {f"{split}_{k}": res[k] for split, res in results.items()
                for k in ("image_to_text_R@1", "zero_shot_shape", "zero_shot_colour") if k in res}

    def artefacts(self, model, datasets, results, run_dir, log, step) -> dict:
        self.tokenizer.save(run_dir / "tokenizer.json")  # `mmtx zeroshot` reads it back
        return {}


def _stack_texts(a, b, pad_id: int):
    """Two (ids (B, L), mask (B, L)) batches as one (2B, max L), right-padded."""
    length = max(a[0].shape[1], b[0].shape[1])
    ids = torch.cat([pad_to(a[0], length, pad_id), pad_to(b[0], length, pad_id)])
    mask = torch.cat([pad_to(a[1].long(), length), pad_to(b[1].long(), length)]).bool()
    return ids, mask


def _unique_rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse, first index of each distinct row), in order of first appearance."""
    _, inverse = torch.unique(ids, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(ids), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(ids)), reduce="amin")
    return inverse, first.sort().values
