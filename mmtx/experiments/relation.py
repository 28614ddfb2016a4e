"""The long-range relation study: where attention should win in vision.

`mmtx run experiments/relation.yaml` lands here (`kind: relation`). Two objects, same shape or
not, placed at controlled distances (ShapesDataset(task="relation", distance=...)). A CNN
relates two objects only in units whose receptive field holds both; self-attention relates any
two patches in one layer. Every model trains with the same optimiser, data and steps (the
`base` training config); then, per model and seed:
- test accuracy per distance band (a test set drawn per band), mean ± std over seeds;
- forward FLOPs per image (torch.utils.flop_counter), printed: the models are sized to match;
- each CNN's theoretical receptive field (mmtx.models.receptive_field) beside its accuracy;
- for the ViT (`report.attention`): attention maps on same and different far pairs, and the
  fraction of far test images whose top-attended patches cover both objects (class-token
  rollout, and any single head of the last layer), beside what random patches would cover.
The report states which part of the claim held. Choices are tuned on the validation split; the
test bands are only read at the end.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .pool import is_main_process
from .registry import register_kind
from .report import (
    Panel,
    check_targets,
    human,
    markdown_table,
    mean_std,
    read_curve,
    write_report,
)
from .runs import Run, Spec, train_runs

DEFAULT_BANDS = {"near": [0.35, 0.45], "mid": [0.45, 0.60], "far": [0.60, 0.85]}


@dataclass
class RelationReport:
    attention: str | None = "vit"  # label of the ViT whose attention is read
    attention_images: int = 8  # drawn in the figure (half same, half different)
    attention_samples: int = 200  # far test images for the coverage fraction
    top_patches: int = 4  # "top-attended patches": this many, by class-token rollout
    target: float = 0.90  # far-band test accuracy that at least one model should reach
    far_band: str = "far"


@dataclass
class RelationSpec(Spec):
    kind: str = "relation"
    models: list[dict] = field(default_factory=list)  # {name, label, args, optim}
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    bands: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_BANDS))
    test_samples: int = 1000  # per band
    report: RelationReport = field(default_factory=RelationReport)

    def check(self) -> None:
        super().check()
        if not self.models:
            raise ValueError(f"{self.name}: 'models' must be a non-empty list")
        labels = []
        for m in self.models:
            if not isinstance(m, dict) or "name" not in m or "label" not in m:
                raise ValueError(f"{self.name}: each model needs 'name' and 'label', got {m!r}")
            self.check_keys(m, ("name", "label", "args", "optim"), of=f"model {m['label']!r}")
            if m.get("optim") is not None and not isinstance(m["optim"], dict):
                raise ValueError(f"{self.name}: model {m['label']!r}: optim must be a mapping of "
                                 f"optimiser settings, got {m['optim']!r}")
            labels.append(m["label"])
        if len(set(labels)) != len(labels):
            raise ValueError(f"{self.name}: model labels repeat: {labels}")
        if not self.seeds:
            raise ValueError(f"{self.name}: 'seeds' must be a non-empty list")
        if not self.bands:
            raise ValueError(f"{self.name}: 'bands' must map names to [lo, hi] distance ranges")
        for band, rng in self.bands.items():
            if not (isinstance(rng, (list, tuple)) and len(rng) == 2):
                raise ValueError(f"{self.name}: band {band!r}: expected [lo, hi], got {rng!r}")
        if self.report.far_band not in self.bands:
            raise ValueError(f"{self.name}: report.far_band {self.report.far_band!r} is not one of "
                             f"the bands {list(self.bands)}")
        data = self.base.get("data", {})
        if data.get("name", "shapes") != "shapes" or data.get("args", {}).get("task") != "relation":
            raise ValueError(f"{self.name}: base.data must be shapes with task: relation, got "
                             f"{data.get('name')!r} / {data.get('args', {}).get('task')!r}")
        from ..data import ShapesDataset

        args = {k: v for k, v in data.get("args", {}).items() if k not in ("num_samples", "cache")}
        try:  # the data options, the training distances and every band, before anything trains
            ShapesDataset(1, **args)
            for rng in self.bands.values():
                ShapesDataset(1, **{**args, "distance": rng})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.name}: base.data.args / bands: {e}") from None


def _run_id(label: str, seed: int) -> str:
    return f"{label}-s{seed}"


def _band_data(spec: RelationSpec, band: str, **extra):
    """The test set of one band: the training data's options with the band's distances."""
    from ..data import build_dataset

    args = {k: v for k, v in spec.base["data"].get("args", {}).items()
            if k not in ("num_samples", "distance")}
    if "seed" in args:  # build_dataset's name for the scene seed
        args["scene_seed"] = args.pop("seed")
    return build_dataset("shapes", "test", num_samples=spec.test_samples,
                         distance=list(spec.bands[band]), **args, **extra)


@torch.no_grad()
def _accuracy(model, data, batch: int = 250) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(data), batch):
        items = [data[j] for j in range(i, min(i + batch, len(data)))]
        x = torch.stack([it["image"] for it in items])  # (b, 3, H, W)
        y = torch.tensor([it["label"] for it in items])
        correct += int((model(x).argmax(1) == y).sum())
    return correct / len(data)


def measure(res: dict, run_dir: Path, spec: RelationSpec, model: dict, seed: int, out: Path,
            attention: bool) -> dict:
    """One trained model and seed: tested per band and measured."""
    from ..models.receptive_field import receptive_field, sees_whole_image
    from ..models.registry import model_info
    from ..models.summary import model_summary

    net = res["model_module"].eval()
    first = _band_data(spec, next(iter(spec.bands)))
    side = first.image_size
    summary = model_summary(net, (first.in_chans, side, side))
    family = model_info(model["name"]).family
    rf = receptive_field(net) if family == "cnn" else None
    optim = {**spec.base.get("optim", {}), **(model.get("optim") or {})}
    result = {
        "model": model["label"], "model_name": model["name"], "family": family, "seed": seed,
        "band_accuracy": {b: _accuracy(net, _band_data(spec, b)) for b in spec.bands},
        "val_accuracy": res.get("val_accuracy"), "params": summary["params"],
        "flops": summary["flops"], "receptive_field": rf,
        "sees_whole_image": None if rf is None else sees_whole_image(rf, side),
        "image_size": side, "steps": res["steps"], "train_s": res["train_s"],
        "lr": float(optim.get("lr", 0.0)),
        "wall_s": res["wall_s"], "curve": read_curve(run_dir / "metrics.jsonl", "val/acc"),
    }
    if attention:
        result["attention"] = attention_study(spec, net, out)
    return result


# ------------------------------------------------------------------------------ attention
def _covers(objs: torch.Tensor, idx: torch.Tensor) -> bool:
    """Whether the patches `idx` show part of every object (objs: (n, N) patch masks)."""
    return bool(objs[:, idx].any(1).all())


@torch.no_grad()
def attention_study(spec: RelationSpec, model, out: Path) -> dict:
    """Coverage of both objects by the ViT's top-attended patches on far test pairs, and the
    attention figure (class-token rollout over same and different pairs)."""
    from ..eval.grounding import patch_coverage
    from ..viz.rollout import attention_rollout, plot_rollout, rollout_maps, supports_rollout

    rep = spec.report
    if not supports_rollout(model):
        return {"skipped": f"{type(model).__name__} exposes no attention maps"}
    data = _band_data(spec, rep.far_band, return_objects=True)
    n = min(rep.attention_samples, len(data))
    items = [data[i] for i in range(n)]
    images = torch.stack([it["image"] for it in items])  # (n, 3, H, W)
    model.eval()
    _, inter = model.forward_features(images, return_attn=True)
    prefix = getattr(model, "num_prefix_tokens", 0)
    grid = model.patch_embed.grid_for(*images.shape[-2:])
    if prefix:  # the class token's row
        roll = attention_rollout(inter.self_attn)[:, 0, prefix:]  # (n, N)
        last = inter.self_attn[-1][:, :, 0, prefix:]  # (n, heads, N)
    else:  # mean-pooled read-out: the mean of the patch rows
        roll = attention_rollout(inter.self_attn)[:, prefix:, prefix:].mean(1)
        last = inter.self_attn[-1][:, :, prefix:, prefix:].mean(2)
    k = min(rep.top_patches, roll.shape[1])
    gen = torch.Generator().manual_seed(0)
    both_roll = both_head = both_random = 0
    for i, it in enumerate(items):
        objs = patch_coverage(it["object_masks"][:2], grid).flatten(1)  # (2, N): the pair
        both_roll += _covers(objs, roll[i].topk(k).indices)
        both_head += any(_covers(objs, last[i, h].topk(k).indices) for h in range(last.shape[1]))
        both_random += _covers(objs, torch.randperm(roll.shape[1], generator=gen)[:k])
    preds = model(images).argmax(1)
    # the figure: same and different pairs, half each, with the rollout map
    same = [i for i, it in enumerate(items) if it["label"] == 1][: rep.attention_images // 2]
    diff = [i for i, it in enumerate(items) if it["label"] == 0][: rep.attention_images // 2]
    pick = same + diff
    if pick:
        names = data.class_names
        titles = [f"{names[items[i]['label']]} (pred {names[int(preds[i])]})" for i in pick]
        plot_rollout(images[pick], rollout_maps(model, images[pick]), out / "vit_attention.png",
                     titles=titles, ncols=min(8, len(pick)))
    return {"images": n, "top_patches": k, "patches": int(roll.shape[1]),
            "both_by_rollout": both_roll / n, "both_by_some_last_layer_head": both_head / n,
            "both_by_random_patches": both_random / n,
            "accuracy_on_these": float((preds == torch.tensor([it["label"] for it in items]))
                                       .float().mean())}


# ------------------------------------------------------------------------------ report
def summarize(spec: RelationSpec, results: list[dict]) -> list[dict]:
    rows = []
    for m in spec.models:
        rs = [r for r in results if r["model"] == m["label"]]
        lr = {**spec.base.get("optim", {}), **(m.get("optim") or {})}.get("lr")
        row = {"model": m["label"], "model_name": m["name"], "seeds": len(rs), "lr": lr,
               "params": rs[0]["params"], "flops": rs[0]["flops"],
               "receptive_field": rs[0]["receptive_field"],
               "sees_whole_image": rs[0]["sees_whole_image"],
               "val_accuracy": mean_std([r["val_accuracy"] or 0.0 for r in rs]),
               "train_s": mean_std([r["train_s"] for r in rs])[0]}
        for band in spec.bands:
            row[band] = mean_std([r["band_accuracy"][band] for r in rs])
        rows.append(row)
    return rows


def format_table(spec: RelationSpec, rows: list[dict]) -> str:
    def pct(ms):
        return f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"

    header = ["model", "receptive field (px)", "MFLOPs/img", "params", "lr", "val acc (%)",
              *[f"{b} {spec.bands[b][0]:g}-{spec.bands[b][1]:g} (%)" for b in spec.bands],
              "train s"]
    body = []
    for r in rows:
        rf = "global (attention)" if r["receptive_field"] is None else (
            f"{r['receptive_field']}" + (" (whole image)" if r["sees_whole_image"] else ""))
        body.append([r["model"], rf, f"{r['flops'] / 1e6:.2f}", human(r["params"]),
                     "-" if r["lr"] is None else f"{float(r['lr']):g}",
                     pct(r["val_accuracy"]), *[pct(r[b]) for b in spec.bands],
                     f"{r['train_s']:.0f}"])
    return markdown_table(header, body)


def _plots(spec: RelationSpec, results: list[dict], rows: list[dict], out: Path) -> None:
    from ..viz.plots import plot_learning_curves, plt, save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4))
    mids = [sum(spec.bands[b]) / 2 for b in spec.bands]
    for i, r in enumerate(rows):
        ax.errorbar(mids, [100 * r[b][0] for b in spec.bands],
                    yerr=[100 * r[b][1] for b in spec.bands], marker="o", capsize=3,
                    color=f"C{i}", label=r["model"])
    ax.axhline(50, color="gray", ls=":", label="chance")
    ax.axhline(100 * spec.report.target, color="gray", ls="--", lw=0.8, label="target")
    ax.set_xticks(mids, [f"{b}\n{spec.bands[b][0]:g}-{spec.bands[b][1]:g}" for b in spec.bands])
    ax.set(xlabel="distance between the two objects (fraction of the image side)",
           ylabel="test accuracy (%)", ylim=(0, 105),
           title=f"same/different shape vs distance (mean ± std, {len(spec.seeds)} seeds)")
    ax.legend(fontsize=8)
    save_figure(fig, out / "accuracy_vs_distance.png")
    first = min(spec.seeds)
    curves = {r["model"]: r["curve"] for r in results if r["seed"] == first and r.get("curve")}
    if curves:
        plot_learning_curves(curves, out / "learning_curves.png")


def verdict(spec: RelationSpec, rows: list[dict], attention: dict | None = None) -> list[str]:
    """Plain sentences on each part of the claim, from the far-band numbers."""
    far, target = spec.report.far_band, spec.report.target

    near = next(iter(spec.bands))

    def state(r):
        acc, std = r[far]
        got = f"{100 * acc:.1f} ± {100 * std:.1f}%"
        if acc >= target:
            what = f"learned far pairs ({got})"
        elif acc >= 0.6:
            what = f"was above chance on far pairs but short of {100 * target:g}% ({got})"
        else:
            what = f"did not learn far pairs ({got}; chance 50%)"
        return what + f"; {near} pairs {100 * r[near][0]:.1f}%"

    lines = []
    cnns = [r for r in rows if r["receptive_field"] is not None]
    attn = [r for r in rows if r["receptive_field"] is None]
    small = [r for r in cnns if not r["sees_whole_image"]]
    whole = [r for r in cnns if r["sees_whole_image"]]
    for r in small:
        lines.append(f"- CNN without a whole-image receptive field: {r['model']} "
                     f"({r['receptive_field']} px) {state(r)}.")
    for r in whole:
        lines.append(f"- CNN whose every unit sees the whole image: {r['model']} "
                     f"({r['receptive_field']} px) {state(r)}.")
    for r in attn:
        lines.append(f"- Attention model {r['model']} {state(r)}.")
    ok = lambda rs: any(r[far][0] >= target for r in rs)  # noqa: E731
    claim, notes = [], []
    if small:
        # distance-specific only if near pairs do clearly better than far ones
        gap = max(r[near][0] - r[far][0] for r in small)
        claim.append("a CNN whose units do not see the whole image fails on far pairs: " +
                     ("did NOT hold" if ok(small) else
                      "held, and it does clearly better on near pairs" if gap >= 0.05 else
                      f"held, but it does about as badly on near pairs (largest near - far gap "
                      f"{100 * gap:.1f} points): the shortfall is not a matter of distance"))
    if whole:
        claim.append("a CNN needs a whole-image receptive field, and with one it relates far "
                     "objects: " + ("held" if ok(whole) and not ok(small) else
                                    "did NOT hold" if not ok(whole) else
                                    "partly (the smaller field sufficed too)"))
    if attn:
        claim.append("self-attention relates far objects within the same budget: " +
                     ("held" if ok(attn) else "did NOT hold on this data and budget"))
        if (attention and "skipped" not in attention and not ok(attn) and
                attention["both_by_rollout"] >= attention["both_by_random_patches"] + 0.2):
            notes.append(
                "the ViT's attention reaches both objects (its top patches cover both in "
                f"{100 * attention['both_by_rollout']:.1f}% of far pairs, random patches in "
                f"{100 * attention['both_by_random_patches']:.1f}%), yet it did not learn to "
                "compare them")
    return lines + [""] + [f"- Claim: {c}." for c in claim] + [f"- Note: {n}." for n in notes]


def write_relation_report(spec: RelationSpec, results: list[dict], out: Path) -> str:
    rows = summarize(spec, results)
    table = format_table(spec, rows)
    _plots(spec, results, rows, out)
    flops = [r["flops"] for r in rows]
    flop_line = ("Forward MFLOPs per image: " +
                 ", ".join(f"{r['model']} {r['flops'] / 1e6:.2f}" for r in rows) +
                 f" (largest / smallest = {max(flops) / min(flops):.2f}).")
    print(flop_line)
    far, target = spec.report.far_band, spec.report.target
    md = ["## Test accuracy per distance band", "", table, "",
          f"Mean ± std over seeds {list(spec.seeds)}; {spec.test_samples} test scenes per band, "
          "chance = 50%. The receptive field is the theoretical one of the last conv/pool layer "
          "(mmtx.models.receptive_field); \"whole image\": every unit of the last map sees every "
          "pixel (field >= 2 x side - 1). val acc: the validation split of the training "
          "distribution, the only split the settings were chosen on.", "", flop_line, "",
          "![accuracy vs distance](accuracy_vs_distance.png)", "",
          "## Learning curves (validation accuracy, first seed)", "",
          "![learning curves](learning_curves.png)", ""]
    values = {r["model"]: (far, r[far][0]) for r in rows}
    best = max(rows, key=lambda r: r[far][0])
    md += ["## Target", "",
           *check_targets({best["model"]: values[best["model"]]}, {best["model"]: target},
                          "test accuracy"), ""]
    if best[far][0] < target:
        md += [f"No model reached {100 * target:g}% on {far} pairs within this budget. "
               "Evidence instead: the best validation accuracy each model reached "
               "(learning curves above) is " +
               ", ".join(f"{r['model']} {100 * _best_val(results, r):.1f}%" for r in rows)
               + ".", ""]
    att = next((r["attention"] for r in results
                if r.get("attention") and r["seed"] == min(spec.seeds)), None)
    if att and "skipped" not in att:
        md += [f"## Where the ViT ({spec.report.attention}) looks", "",
               f"On {att['images']} {far} test pairs (accuracy on these "
               f"{100 * att['accuracy_on_these']:.1f}%), the {att['top_patches']} patches of "
               f"{att['patches']} with the most class-token attention rollout cover both objects "
               f"in {100 * att['both_by_rollout']:.1f}% of images; some single head of the last "
               f"layer does in {100 * att['both_by_some_last_layer_head']:.1f}%; "
               f"{att['top_patches']} random patches would in "
               f"{100 * att['both_by_random_patches']:.1f}%.", "",
               "![ViT attention](vit_attention.png)", ""]
    md += ["## What held", "", *verdict(spec, rows, att), ""]
    write_report(out, title=spec.name, description=spec.description, sections=md,
                 results={"experiment": spec.name, "description": spec.description,
                          "bands": spec.bands, "runs": results,
                          "summary": [{**r, **{b: list(r[b]) for b in spec.bands},
                                       "val_accuracy": list(r["val_accuracy"])} for r in rows]},
                 table=table, curves=[Panel(
                     "same/different at the training distances", "val/acc", runs=[
                         (r["model"], out / "runs" / _run_id(r["model"], r["seed"]), r["flops"])
                         for r in results])])
    return table


def _best_val(results, row) -> float:
    """The best validation accuracy any seed of the row's model reached during training."""
    return max([p["value"] for r in results if r["model"] == row["model"]
                for p in r.get("curve", [])] or [0.0])


@register_kind("relation", RelationSpec)
def run_relation(spec: RelationSpec, out: Path) -> dict:
    first = min(spec.seeds)
    runs = []
    for m in spec.models:
        for seed in spec.seeds:
            run_id = _run_id(m["label"], seed)
            # a model's own optimiser settings (its learning rate, tuned on val); the rest shared
            cfg = spec.config(m, run_id, train={"seed": int(seed)}, optim=m.get("optim") or {})
            att = m["label"] == spec.report.attention and seed == first
            runs.append(Run(f"{m['label']} seed {seed}", run_id, cfg, measure,
                            (spec, m, int(seed), out, att)))
    results = train_runs(spec, out, runs, describe=lambda r: "test " + ", ".join(
        f"{b} {100 * a:.1f}%" for b, a in r["band_accuracy"].items()))
    if is_main_process():
        write_relation_report(spec, results, out)
    return {"experiment": spec.name, "out_dir": str(out), "runs": results}
