"""Image captioning: teacher-forced cross-entropy on captions; evaluation decodes every image
(KV-cached greedy or beam search) and scores the captions against the true ones.

batch {"image": (B, C, H, W), "caption": [str], "caption_ids": (B, L), "caption_mask": (B, L)}
(CaptionCollate); the model is an `ImageCaptioner`: model(images, ids) -> logits (B, L, V) and
model.generate(images, max_new_tokens, beam_size) -> ids (B, 1 + T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data import CaptionCollate, WordTokenizer
from ...data.protocols import VocabularyDataset
from ...data.render import COLOURS, SHAPES
from ...data.scene_text import converse
from ...io import write_json
from .base import Task, image_kwargs, mean_over_processes, register_task

# The words whose accuracy says whether the captioner read the scene (not its grammar).
ATTRIBUTE_WORDS = {"colour": set(COLOURS), "shape": set(SHAPES), "size": {"small", "large"}}


def caption_tokenizer(dataset):
    """The dataset's own tokenizer, or a word tokenizer over its vocabulary (a
    `VocabularyDataset`, e.g. the shapes data: every word a caption of any split can use), or
    over its captions."""
    tok = getattr(dataset, "tokenizer", None)
    if tok is not None:
        return tok
    if isinstance(dataset, VocabularyDataset):  # a subset passes its base's methods through
        return WordTokenizer(dataset.vocabulary())
    base = getattr(dataset, "base", dataset)  # a fraction of a dataset wraps it
    captions = getattr(base, "captions", None)
    if captions is None:
        raise ValueError(f"data: a captioning task needs a dataset with captions, got "
                         f"{type(base).__name__} (no `captions` or `tokenizer`)")
    return WordTokenizer.from_texts(captions)


def check_caption_length(tokenizer, dataset, max_len: int) -> None:
    """Refuse a max_len shorter than a training caption (with bos and eos): captions would be
    cut, and a model that writes the cut caption scores 100% exact. Checked when the dataset
    lists its captions (`captions`, a subset passing its base's through)."""
    captions = getattr(getattr(dataset, "base", dataset), "captions", None)
    if not captions:
        return
    longest = max(captions, key=lambda c: len(tokenizer.encode(c)))
    n = len(tokenizer.encode(longest))
    if n > max_len:
        raise ValueError(f"task.args.max_len: expected >= {n}, the tokens of the longest "
                         f"training caption with bos and eos ({longest!r}), got {max_len}; "
                         f"shorter, captions would be cut and scored as if whole")


def pad_to(ids: torch.Tensor, length: int, pad_id: int = 0) -> torch.Tensor:
    """(B, T) -> (B, length): cut or right-pad, so batches gather and concatenate."""
    return F.pad(ids[:, :length], (0, max(0, length - ids.shape[1])), value=pad_id)


@register_task("captioning")
class CaptioningTask(Task):
    unit = "images"
    main_metric = "exact"
    higher_is_better = True

    def __init__(self, max_len: int = 24, label_smoothing: float = 0.0, beam_size: int = 1,
                 show: int = 8):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"task.args.label_smoothing: expected in [0, 1), got {label_smoothing}")
        if beam_size < 1:
            raise ValueError(f"task.args.beam_size: expected >= 1, got {beam_size}")
        self.max_len, self.label_smoothing, self.beam_size = max_len, label_smoothing, beam_size
        self.show = show
        self.tokenizer = None
        self._shown: list[tuple[torch.Tensor, str]] = []

    def setup(self, dataset) -> None:
        self.tokenizer = caption_tokenizer(dataset)
        check_caption_length(self.tokenizer, dataset, self.max_len)

    def model_kwargs(self, dataset) -> dict:
        return {"vocab_size": caption_tokenizer(dataset).vocab_size, "max_len": self.max_len,
                **image_kwargs(dataset)}

    def collate_fn(self, dataset):
        return CaptionCollate(self.tokenizer, self.max_len)

    def _nll(self, model, batch, smoothing: float = 0.0):
        ids = batch["caption_ids"]
        logits = model(batch["image"], ids[:, :-1]).float()  # (B, L - 1, V)
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none",
                              ignore_index=self.tokenizer.pad_id,
                              label_smoothing=smoothing)  # (B, L - 1), 0 on padding
        return nll, ids[:, 1:] != self.tokenizer.pad_id

    def step(self, model, batch):
        nll, real = self._nll(model, batch, self.label_smoothing)
        loss = mean_over_processes(nll.sum(), real.sum())
        return loss, {"loss": loss.detach()}

    def eval_step(self, model, batch):
        nll, real = self._nll(model, batch)
        pred = model.generate(batch["image"], self.max_len - 1, beam_size=self.beam_size)
        if not self._shown:
            self._shown = [(img, cap) for img, cap in zip(batch["image"][:self.show].cpu(),
                                                          pred[:self.show].cpu())]
        return {"nll": nll.sum(1), "tokens": real.sum(1),
                "pred": pad_to(pred[:, 1:], self.max_len, self.tokenizer.pad_id),
                "true": pad_to(batch["caption_ids"][:, 1:], self.max_len, self.tokenizer.pad_id)}

    def _text(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.tokenizer.eos_id in ids:
            ids = ids[:ids.index(self.tokenizer.eos_id)]
        return self.tokenizer.decode(ids)

    def eval_finalize(self, outputs):
        from torchmetrics.text import BLEUScore  # imported here: it takes seconds to import

        preds = [self._text(r) for r in outputs["pred"].tolist()]
        trues = [closest_reading(p, self._text(t)) for p, t in zip(preds, outputs["true"].tolist())]
        n = len(trues)
        tokens = outputs["tokens"].sum().clamp(min=1)
        out = {"loss": float(outputs["nll"].sum() / tokens), "count": n,
               "exact": sum(p == t for p, t in zip(preds, trues)) / max(1, n),
               "bleu4": float(BLEUScore(n_gram=4)(preds, [[t] for t in trues])) if n else 0.0}
        out.update(attribute_word_accuracy(preds, trues))
        out["captions"] = [{"pred": p, "true": t} for p, t in zip(preds[:50], trues[:50])]
        return out

    def examples(self, batch, outputs, max_items=16):
        shown, self._shown = self._shown, []
        return [((img.float() + 1) / 2, self._text(ids[1:])) for img, ids in shown[:max_items]]

    def summary(self, results):
        return {f"{split}_exact": res["exact"] for split, res in results.items()
                if "exact" in res}

    def artefacts(self, model, datasets, results, run_dir, log, step) -> dict:
        """test_captions.json and a W&B table of predicted and true captions."""
        test = results.get("test") or {}
        if test.get("captions"):
            write_json(run_dir / "test_captions.json", test["captions"])
            log.log_table("test/captions", ["pred", "true"],
                          [[c["pred"], c["true"]] for c in test["captions"]], step)
        self.tokenizer.save(run_dir / "tokenizer.json")  # `mmtx caption` reads it back
        return {}


def closest_reading(pred: str, true: str) -> str:
    """Of the true caption's readings, the one `pred` is scored against. A two-object caption
    has two ("A to the left of B", "B to the right of A"); the reference names object 0 first,
    which nothing in the image shows, so a prediction is compared with the reading that shares
    the most words with it at the same positions."""
    other = converse(true)
    if other is None:
        return true

    def same(reading: str) -> int:
        return sum(a == b for a, b in zip(pred.split(), reading.split()))

    return other if same(other) > same(true) else true


def attribute_word_accuracy(preds: list[str], trues: list[str]) -> dict[str, float]:
    """Per attribute (colour, shape, size): of the attribute words in the true captions, the
    fraction the predicted caption has at the same word position."""
    out = {}
    for attr, words in ATTRIBUTE_WORDS.items():
        hit = total = 0
        for p, t in zip(preds, trues):
            p, t = p.split(), t.split()
            for i, w in enumerate(t):
                if w in words:
                    total += 1
                    hit += i < len(p) and p[i] == w
        if total:
            out[f"acc_{attr}"] = hit / total
    return out
