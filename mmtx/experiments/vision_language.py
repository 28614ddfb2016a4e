"""The `vision_language` study kind: do vision-language models bind attributes to objects and
read word order, or treat a caption as a bag of words?

A captioner, a CLIP and a CLIP with hard-negative foils (NegCLIP) train with the same ViT, data
and steps on two-object shapes scenes. On held-out scenes the report gives:
- retrieval R@1 both ways and zero-shot shape / colour accuracy (the CLIPs), exact-match
  captions (the captioner);
- binding and order tests in the style of ARO: each test image's true caption against each
  kind of foil (colours swapped, objects swapped, relation reversed); a model is right when it
  prefers the true caption (CLIP: cosine similarity; captioner: log-likelihood). Chance 50%;
- the captioner's grounding: for each colour or shape word of an object it names correctly
  (size, colour and shape), whether its cross-attention peak (last layer, heads averaged)
  falls on that object (the pointing game), beside a random patch's chance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .pool import is_main_process
from .registry import register_kind
from .report import Panel, check_targets, markdown_table, write_report
from .runs import Run, Spec, train_runs

FOIL_KINDS = ("swap_attributes", "swap_objects", "reverse_relation")
# the compute curve of each task: what its evaluations during training measure (the foil tests
# run once, after training)
CURVE_METRIC = {"captioning": "exact", "contrastive": "image_to_text_R@1"}


@dataclass
class VLEval:
    images: int = 500  # held-out two-object scenes for the foil and pointing tests
    batch_size: int = 100
    examples: int = 4  # captioned test images drawn with each word's attention


@dataclass
class VLSpec(Spec):
    kind: str = "vision_language"
    models: list[dict] = field(default_factory=list)  # {label, name, task, args, task_args,
    #                                                    data_args (merged into base's)}
    eval: VLEval = field(default_factory=VLEval)
    targets: dict = field(default_factory=dict)  # caption_exact, foil, pointing_ratio

    def check(self) -> None:
        super().check()
        if not self.models:
            raise ValueError(f"{self.name}: 'models' must list at least one model")
        for m in self.models:
            missing = [k for k in ("label", "name", "task") if k not in m]
            if missing or m["task"] not in ("captioning", "contrastive"):
                raise ValueError(f"{self.name}: each model needs label, name and task "
                                 f"(captioning or contrastive); got {m!r}")
        for key, low in (("images", 1), ("batch_size", 1), ("examples", 0)):
            if getattr(self.eval, key) < low:
                raise ValueError(f"{self.name}: eval.{key}: expected an int >= {low}, got "
                                 f"{getattr(self.eval, key)}")
        if self.eval.examples > self.eval.images:
            raise ValueError(f"{self.name}: eval.examples ({self.eval.examples}) are drawn from "
                             f"the eval.images test scenes ({self.eval.images}): at most as many")

    def run_config(self, m: dict) -> dict:
        # data_args: e.g. foil captions only for the model that trains on them
        return self.config(m, m["label"], data={"args": m.get("data_args") or {}},
                           task={"name": m["task"], "args": m.get("task_args") or {}})


def _test_scenes(spec: VLSpec, cfg: dict):
    from ..data import ShapesDataset

    args = {k: v for k, v in (cfg.get("data", {}).get("args") or {}).items()
            if k in ("image_size", "num_objects", "noise", "clutter", "scene_seed")}
    if "scene_seed" in args:
        args["seed"] = args.pop("scene_seed")
    return ShapesDataset(split="test", task="caption", num_samples=spec.eval.images,
                         return_objects=True, return_foils=list(FOIL_KINDS), **args)


def _batches(spec, ds, tokenizer):
    from ..data import CaptionCollate

    encode = CaptionCollate(tokenizer, max_len=64).encode
    for s in range(0, len(ds), spec.eval.batch_size):
        items = [ds[i] for i in range(s, min(len(ds), s + spec.eval.batch_size))]
        batch = {"image": torch.stack([it["image"] for it in items]),
                 "caption": encode([it["caption"] for it in items]),
                 "objects": [it["attributes"]["objects"] for it in items],
                 "masks": [it["object_masks"] for it in items]}
        for kind in FOIL_KINDS:
            have = [it[f"foil_{kind}"] is not None for it in items]
            texts = [it[f"foil_{kind}"] or it["caption"] for it in items]
            batch[kind] = (encode(texts), torch.tensor(have))
        yield batch


@torch.no_grad()
def _foil_scores(model, task: str, images, ids, mask) -> torch.Tensor:
    """How much the model likes each caption for its image: cosine or log-likelihood (B,)."""
    if task == "contrastive":
        return (model.encode_image(images) * model.encode_text(ids, mask)).sum(-1)
    return model.score(images, ids, mask)


@torch.no_grad()
def _pointing(model, tokenizer, batch) -> tuple[int, int, float]:
    """(hits, words, summed baseline) over the correctly generated colour and shape words."""
    from ..eval.grounding import pointing_game

    captions, maps = model.caption(batch["image"], tokenizer=tokenizer, return_attn=True)
    word_maps, word_masks = [], []
    for b, text in enumerate(captions):
        words, objects = text.split(), batch["objects"][b]
        if len(words) < 8:
            continue
        # "a SIZE COLOUR SHAPE <relation> a SIZE COLOUR SHAPE", either object first: each
        # phrase's colour and shape words point at the one object the whole phrase names.
        for start in (1, len(words) - 3):
            named = [i for i, o in enumerate(objects[:2])
                     if [o["size"], o["colour"], o["shape"]] == words[start:start + 3]]
            if len(named) != 1:  # wrong, or both objects look alike: no object to point at
                continue
            for pos in (start + 1, start + 2):
                if pos < maps.shape[1]:
                    word_maps.append(maps[b, pos])
                    word_masks.append(batch["masks"][b][named[0]])
    if not word_maps:
        return 0, 0, 0.0
    hit, base = pointing_game(torch.stack(word_maps), torch.stack(word_masks))
    return int(hit.sum()), len(hit), float(base.sum())


def evaluate_model(spec: VLSpec, m: dict, run_dir: Path, out: Path) -> dict:
    """The held-out foil and pointing tests of one trained model."""
    from ..data import load_tokenizer
    from ..train.run import load_run

    model, cfg, _ = load_run(run_dir)
    tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    ds = _test_scenes(spec, cfg.to_dict())
    right = {k: 0 for k in FOIL_KINDS}
    total = {k: 0 for k in FOIL_KINDS}
    hits = words = 0
    baseline = 0.0
    for batch in _batches(spec, ds, tokenizer):
        true = _foil_scores(model, m["task"], batch["image"], *batch["caption"])
        for kind in FOIL_KINDS:
            (ids, mask), have = batch[kind]
            foil = _foil_scores(model, m["task"], batch["image"], ids, mask)
            right[kind] += int(((true > foil) & have).sum())
            total[kind] += int(have.sum())
        if m["task"] == "captioning":
            h, n, b = _pointing(model, tokenizer, batch)
            hits, words, baseline = hits + h, words + n, baseline + b
    result = {f"foil_{k}": right[k] / total[k] if total[k] else None for k in FOIL_KINDS}
    result.update({f"foil_{k}_n": total[k] for k in FOIL_KINDS})
    if words:
        result.update(pointing=hits / words, pointing_baseline=baseline / words,
                      pointing_words=words)
    if m["task"] == "captioning" and spec.eval.examples and is_main_process():
        from ..viz.attention import plot_word_attention

        images = torch.stack([ds[i]["image"] for i in range(spec.eval.examples)])
        captions, maps = model.caption(images, tokenizer=tokenizer, return_attn=True)
        plot_word_attention(images, captions, maps, out / f"attention_{m['label']}.png")
    return result


def measure(res: dict, run_dir: Path, spec: VLSpec, m: dict, out: Path) -> dict:
    """One trained model: its own test numbers, then the held-out foil and pointing tests."""
    test = res["test_result"]
    result = {"model": m["label"], "task": m["task"], "params": res["params"],
              "steps": res["steps"], "train_s": res["train_s"], "wall_s": res["wall_s"]}
    for key in ("exact", "bleu4", "acc_colour", "acc_shape", "image_to_text_R@1",
                "text_to_image_R@1", "zero_shot_shape", "zero_shot_colour"):
        if key in test:
            result[key] = test[key]
    if is_main_process():
        result.update(evaluate_model(spec, m, run_dir, out))
    return result


# ------------------------------------------------------------------------------ report
def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _foil_plot(results: list[dict], path: Path) -> None:
    from ..viz.plots import plt, save_figure  # plots picks the file-only backend

    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        xs = [k + (i - (len(results) - 1) / 2) * width for k in range(len(FOIL_KINDS))]
        ax.bar(xs, [100 * (r[f"foil_{k}"] or 0) for k in FOIL_KINDS], width, label=r["model"])
    ax.axhline(50, color="gray", ls=":", label="chance")
    ax.set(xticks=range(len(FOIL_KINDS)), ylim=(0, 105), ylabel="prefers the true caption (%)",
           title="binding and order tests (held-out scenes)")
    ax.set_xticklabels([k.replace("_", " ") for k in FOIL_KINDS])
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _targets(spec: VLSpec, results: list[dict]) -> list[str]:
    t, lines = spec.targets, []
    caps = {r["model"]: ("held-out scenes", r["exact"]) for r in results if "exact" in r}
    if "caption_exact" in t:
        lines += check_targets(caps, dict.fromkeys(caps, t["caption_exact"]),
                               "exact-match captions")
    if "foil" in t:
        for kind in FOIL_KINDS:
            best = max(results, key=lambda r: r[f"foil_{kind}"] or 0)
            lines += check_targets({f"best on {kind}": (best["model"], best[f"foil_{kind}"])},
                                   {f"best on {kind}": t["foil"]}, "foil accuracy")
    if "pointing_ratio" in t:
        for r in results:
            if r.get("pointing_words"):
                ratio = r["pointing"] / r["pointing_baseline"]
                verdict = "met" if ratio >= t["pointing_ratio"] else "MISSED"
                lines.append(f"- {r['model']}: pointing {_pct(r['pointing'])} vs random "
                             f"{_pct(r['pointing_baseline'])} = {ratio:.2f}x (target "
                             f"{t['pointing_ratio']}x): {verdict}")
    return lines


@register_kind("vision_language", VLSpec)
def run_vision_language(spec: VLSpec, out: Path) -> dict:
    t0 = time.perf_counter()
    # Hard-negative runs start first: they are the longest (their text tower also encodes a foil
    # per caption), so the shorter runs share the other workers meanwhile.
    order = sorted(range(len(spec.models)),
                   key=lambda i: not (spec.models[i].get("task_args") or {}).get("hard_negatives"))
    runs = [Run(m["label"], m["label"], spec.run_config(m), measure, (spec, m, out))
            for m in (spec.models[i] for i in order)]
    done = train_runs(spec, out, runs, describe=lambda r: ", ".join(
        f"{k} {_pct(r.get(k))}" for k in ("exact", "image_to_text_R@1") if k in r))
    results = [done[order.index(i)] for i in range(len(spec.models))]  # the file's order
    if not is_main_process():
        return {"experiment": spec.name, "out_dir": str(out), "runs": results}
    _foil_plot(results, out / "foils.png")
    rows = [[r["model"], r["task"], _pct(r.get("exact")), _pct(r.get("image_to_text_R@1")),
             _pct(r.get("text_to_image_R@1")), _pct(r.get("zero_shot_shape")),
             _pct(r.get("zero_shot_colour")), *(_pct(r[f"foil_{k}"]) for k in FOIL_KINDS),
             _pct(r.get("pointing")), _pct(r.get("pointing_baseline"))] for r in results]
    table = markdown_table(["model", "task", "exact caption", "i->t R@1", "t->i R@1",
                            "zero-shot shape", "zero-shot colour",
                            *(f"foil: {k.replace('_', ' ')}" for k in FOIL_KINDS),
                            "pointing", "random point"], rows)
    n = {k: results[0][f"foil_{k}_n"] for k in FOIL_KINDS}
    runs = markdown_table(["model", "parameters", "steps", "training (s)", "with evaluations (s)"],
                          [[r["model"], f"{r['params']:,}", r["steps"], f"{r['train_s']:.0f}",
                            f"{r['wall_s']:.0f}"] for r in results])
    sections = ["## Results (held-out scenes)", "", table, "",
                f"Foil tests: {spec.eval.images} test scenes; foils exist for "
                + ", ".join(f"{v} ({k.replace('_', ' ')})" for k, v in n.items())
                + "; chance is 50%.", "", "![foil accuracy](foils.png)", "",
                "## Runs", "", runs, "",
                f"{spec.jobs} run(s) at a time; this invocation took "
                f"{time.perf_counter() - t0:.0f} s (runs finished by an earlier invocation are "
                "read back, not trained).", ""]
    targets = _targets(spec, results)
    if targets:
        sections += ["## Targets", "", *targets, ""]
    for r in results:
        if (out / f"attention_{r['model']}.png").exists():
            sections += [f"## Where the {r['model']} looks for each word", "",
                         f"![attention](attention_{r['model']}.png)", ""]
    curves = {}  # per task its own main metric: the captioner and the CLIPs measure apart
    for m in spec.models:
        metric = CURVE_METRIC[m["task"]]
        curves.setdefault(metric, Panel(f"{m['task']}: {metric}", f"val/{metric}")).runs.append(
            (m["label"], out / "runs" / m["label"], None))
    write_report(out, title=spec.name, description=spec.description, sections=sections,
                 results={"experiment": spec.name, "runs": results}, table=table,
                 curves=list(curves.values()))
    return {"experiment": spec.name, "out_dir": str(out), "runs": results}
