"""Text tasks for the engine: causal LM, masked LM (BERT's 15% with 80/10/10), seq2seq, and
sequence classification (long-range recall). Each evaluation prints a decoded sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .base import Task, item_draws, mean_over_processes, register_task
from .classification import ClassificationTask

NUM_SPECIALS = 5  # mmtx.data.tokenizers: <pad> <bos> <eos> <mask> <unk> are ids 0..4


def _lm_kwargs(dataset) -> dict:
    return {"vocab_size": dataset.vocab_size}


def _nll_finalize(outputs) -> dict:
    tokens = outputs["tokens"].sum().clamp(min=1)
    loss = float(outputs["nll"].sum() / tokens)
    out = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "count": int(tokens)}
    if "correct" in outputs:
        out["acc"] = float(outputs["correct"].sum() / tokens)
    return out


@register_task("causal_lm")
class CausalLMTask(Task):
    """batch {"ids": (B, L + 1)}: predict token t + 1 from tokens <= t. Model -> (B, L, V)."""

    unit = "tokens"

    def __init__(self, sample_tokens: int = 24, temperature: float = 0.8, top_k: int = 10):
        self.sample_tokens, self.temperature, self.top_k = sample_tokens, temperature, top_k
        self.tokenizer, self._prompt = None, None

    def setup(self, dataset) -> None:
        self.tokenizer = getattr(dataset, "tokenizer", None)

    def model_kwargs(self, dataset):
        return _lm_kwargs(dataset)

    def count(self, batch):
        return int(batch["ids"][:, 1:].numel())

    def _nll(self, model, ids):
        logits = model(ids[:, :-1]).float()  # (B, L, V)
        return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none"), logits

    def step(self, model, batch):
        nll, _ = self._nll(model, batch["ids"])
        loss = nll.mean()
        return loss, {"loss": loss.detach(), "ppl": loss.detach().exp()}

    def eval_step(self, model, batch):
        if self._prompt is None:  # the first evaluation batch's opening: the same every eval
            self._prompt = batch["ids"][:1, :4].cpu()
        nll, logits = self._nll(model, batch["ids"])
        correct = (logits.argmax(-1) == batch["ids"][:, 1:]).sum(1)
        n = torch.full_like(correct, nll.shape[1])
        return {"nll": nll.sum(1), "tokens": n, "correct": correct}

    def eval_finalize(self, outputs):
        return _nll_finalize(outputs)

    def eval_whole_model(self, model, split, step, run_dir, log):
        if self._prompt is None or not hasattr(model, "generate"):
            return {}
        device = next(model.parameters()).device
        gen = model.generate(self._prompt.to(device), self.sample_tokens,
                             temperature=self.temperature, top_k=self.top_k)
        text = self.tokenizer.decode(gen[0].tolist()) if self.tokenizer else gen[0].tolist()
        if run_dir is not None:
            tqdm.write(f"sample: {text}")
        return {"sample": str(text)}


@register_task("masked_lm")
class MaskedLMTask(Task):
    """batch {"ids": (B, L)}: BERT masking. `mask_prob` of the non-special tokens are chosen;
    of those 80% become <mask>, 10% a random token, 10% stay; loss on chosen ones only.
    Model -> MLM logits (B, L, V) (a TextEncoder with num_classes=0)."""

    unit = "tokens"
    main_metric = "acc"
    higher_is_better = True

    def __init__(self, mask_prob: float = 0.15, mask_id: int = 3):
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"task.args.mask_prob: expected in (0, 1), got {mask_prob}")
        self.mask_prob, self.mask_id = mask_prob, mask_id
        self.tokenizer, self.vocab_size = None, None

    def setup(self, dataset) -> None:
        self.tokenizer, self.vocab_size = getattr(dataset, "tokenizer", None), dataset.vocab_size

    def model_kwargs(self, dataset):
        # No pooler: masked LM never reads it, and DDP refuses parameters without gradients.
        return {**_lm_kwargs(dataset), "pooler": False}

    def count(self, batch):
        return int(batch["ids"].numel())

    def corrupt(self, ids, generator=None, batch=None):
        """-> (inputs, chosen) with chosen (B, L) bool: the positions the loss is taken on.
        Draws per item from `batch`'s item seeds when it has them, else from `generator`."""
        v, d, shape = self.vocab_size, item_draws(batch or {}, ids.device), ids.shape
        if d is not None:
            u, r = d.uniform(shape[1]), d.uniform(shape[1])
            rand_tok = NUM_SPECIALS + (d.uniform(shape[1]) * (v - NUM_SPECIALS)).long().clamp(
                max=v - 1 - NUM_SPECIALS)
        else:
            u, r, rand_tok = (x.to(ids.device) for x in (
                torch.rand(shape, generator=generator, device="cpu"),
                torch.rand(shape, generator=generator, device="cpu"),
                torch.randint(NUM_SPECIALS, v, shape, generator=generator, device="cpu")))
        chosen = (u < self.mask_prob) & (ids >= NUM_SPECIALS)
        inputs = torch.where(chosen & (r < 0.8), torch.full_like(ids, self.mask_id), ids)
        inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_tok, inputs)
        return inputs, chosen

    def _forward(self, model, batch, generator=None):
        ids = batch["ids"]
        inputs, chosen = self.corrupt(ids, generator, batch)
        logits = model(inputs).float()  # (B, L, V)
        nll = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none") * chosen
        correct = ((logits.argmax(-1) == ids) & chosen).sum(1)
        return nll, chosen, correct, inputs, logits

    def step(self, model, batch):
        nll, chosen, correct, _, _ = self._forward(model, batch)
        n = chosen.sum()
        loss = mean_over_processes(nll.sum(), n)
        return loss, {"loss": loss.detach(), "acc": mean_over_processes(correct.sum(), n)}

    def eval_step(self, model, batch):
        # the same masks every evaluation: the item seeds of evaluation are fixed per item
        g = torch.Generator().manual_seed(0)  # (batches without item seeds)
        nll, chosen, correct, inputs, logits = self._forward(model, batch, g)
        if self.tokenizer is not None and not hasattr(self, "_shown"):
            filled = torch.where(chosen, logits.argmax(-1), inputs)[0].tolist()
            self._sample = (self.tokenizer.decode(inputs[0].tolist(), skip_special=False),
                            self.tokenizer.decode(filled, skip_special=False))
        return {"nll": nll.sum(1), "tokens": chosen.sum(1), "correct": correct}

    def eval_finalize(self, outputs):
        out = _nll_finalize(outputs)
        if getattr(self, "_sample", None):
            tqdm.write(f"masked: {self._sample[0]}\nfilled: {self._sample[1]}")
            out["sample"] = self._sample[1]
        return out


@register_task("seq2seq")
class Seq2SeqTask(Task):
    """batch {"src", "src_mask", "tgt" (bos ... eos, 0-padded)}: teacher-forced cross-entropy;
    evaluation adds exact-match accuracy of greedy decoding."""

    unit = "tokens"
    main_metric = "exact"
    higher_is_better = True

    def setup(self, dataset) -> None:
        self.dataset = dataset

    def model_kwargs(self, dataset):
        return {"vocab_size": dataset.vocab_size, "max_len": dataset.max_len + 2}

    def count(self, batch):
        return int((batch["tgt"][:, 1:] != 0).sum())

    def _nll(self, model, batch):
        tgt = batch["tgt"]
        logits = model(batch["src"], tgt[:, :-1], batch["src_mask"]).float()  # (B, T, V)
        nll = F.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], reduction="none",
                              ignore_index=0)
        return nll, (tgt[:, 1:] != 0)

    def step(self, model, batch):
        nll, real = self._nll(model, batch)
        loss = mean_over_processes(nll.sum(), real.sum())
        return loss, {"loss": loss.detach()}

    def eval_step(self, model, batch):
        nll, real = self._nll(model, batch)
        tgt = batch["tgt"]
        pred = model.generate(batch["src"], tgt.shape[1] - 1, src_mask=batch["src_mask"])
        pred = F.pad(pred, (0, tgt.shape[1] - pred.shape[1]))  # decoding may stop early
        pred = pred.masked_fill(tgt == 0, 0)  # eos-filled tail -> padding
        exact = (pred == tgt).all(1)
        self._sample = (batch["src"][0], pred[0])
        return {"nll": nll.sum(1), "tokens": real.sum(1), "exact": exact.float()}

    def eval_finalize(self, outputs):
        out = _nll_finalize(outputs)
        out["exact"] = float(outputs["exact"].mean())
        if getattr(self, "_sample", None):
            src, pred = (t[t > 2].tolist() for t in self._sample)
            tqdm.write(f"input {src} -> output {pred}")
            out["sample"] = f"{src} -> {pred}"
        return out


@register_task("text_classification")
class TextClassificationTask(ClassificationTask):
    """batch {"ids": (B, L), "label": (B,)} (e.g. long-range recall); model -> (B, classes)."""

    unit = "sequences"

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__(label_smoothing, image_key="ids", label_key="label",
                         rollout_images=0)

    def model_kwargs(self, dataset):
        kwargs = {"num_classes": dataset.num_classes, "vocab_size": dataset.vocab_size}
        if getattr(dataset, "max_len", None):
            kwargs["max_len"] = dataset.max_len
        return kwargs

    def setup(self, dataset) -> None:
        self.class_names = None

    def examples(self, batch, outputs, max_items=16):
        return []
