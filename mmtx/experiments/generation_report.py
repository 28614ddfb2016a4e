"""The generation study's report: one row per model over the three measurements, the plots,
the sample grids and plain sentences on which claims held (mmtx.experiments.generation_study
runs the study; `spec` below is its GenStudySpec)."""

from __future__ import annotations

import math
from pathlib import Path

from .report import human, markdown_table, write_report

ATTRS = ("shape", "colour", "size", "relation", "prompt")


def pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def summarize_runs(spec, results: list[dict]) -> list[dict]:
    """One row per model: the three measurements side by side."""
    by = {(r["model"], r["measurement"]): r for r in results}
    rows = []
    for m in spec.models:
        row = {"model": m["label"], "role": m["role"], "model_name": m["name"]}
        c = by.get((m["label"], "class"))
        if c:
            d = c["at_default"]
            row.update(params=c["params"], flops=c["flops"], images_per_s=c["train_images_per_s"],
                       fd=d.get("fd_shapes"), fd_floor=d.get("fd_shapes_floor"),
                       shape=d.get("cond_acc_shape"), colour=d.get("cond_acc_colour"),
                       sample_ms=1000 * d["sample_s_per_image"])
        k = by.get((m["label"], "consistency"))
        if k:
            row.update(consistency=k["consistency"], consistency_real=k["consistency_real"],
                       receptive_field=k["receptive_field"])
            row.setdefault("params", k["params"])
        t = by.get((m["label"], "text"))
        if t:
            row.update(text={g: t[g] for g in ("seen", "unseen", "seen_real", "unseen_real")})
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    header = ["model", "params", "MFLOPs/img", "train img/s", "fd_shapes (floor)",
              "cond_acc shape %", "cond_acc colour %", "consistency %",
              *[f"text {a} % seen / unseen" for a in ATTRS], "sample ms/img"]
    body = []
    for r in rows:
        text = r.get("text") or {}
        body.append([
            f"{r['model']} ({r['role']})", human(r["params"]) if "params" in r else "-",
            f"{r['flops'] / 1e6:.1f}" if "flops" in r else "-",
            f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "-",
            f"{r['fd']:.1f} ({r['fd_floor']:.1f})" if r.get("fd") is not None else "-",
            pct(r.get("shape")), pct(r.get("colour")), pct(r.get("consistency")),
            *[f"{pct(text['seen'][a])} / {pct(text['unseen'][a])}" if text else "-"
              for a in ATTRS],
            f"{r['sample_ms']:.1f}" if "sample_ms" in r else "-"])
    return markdown_table(header, body)


def _plots(spec, results: list[dict], out: Path) -> list[str]:
    from ..viz.plots import plt, save_figure

    made = []
    runs = [r for r in results if r["measurement"] == "class"]
    if not runs:
        return made
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, r in enumerate(runs):
        pts = r["fd_curve"]
        if pts:
            ax.plot([p["step"] for p in pts], [p["value"] for p in pts], "o-", color=f"C{i}",
                    label=f"{r['model']} ({r['role']})")
    floor = runs[0]["at_default"].get("fd_shapes_floor")
    if floor is not None:
        ax.axhline(floor, color="gray", ls=":", label="real vs real (floor, study samples)")
    ax.set(xlabel="training step", ylabel="fd_shapes (lower is better)",
           title="fd_shapes during training (the runs' own evaluations)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    made.append(save_figure(fig, out / "fd_vs_step.png").name)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, r in enumerate(runs):
        pts = sorted((float(s), v) for s, v in r["sweep"].items() if "cond_acc_all" in v)
        if not pts:
            continue
        xs = [100 * v["cond_acc_all"] for _, v in pts]
        ys = [v["fd_shapes"] for _, v in pts]
        ax.plot(xs, ys, "o-", color=f"C{i}", label=f"{r['model']} ({r['role']})")
        for (s, _), x, y in zip(pts, xs, ys):
            ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set(xlabel="cond_acc, shape and colour both right (%)", ylabel="fd_shapes",
           title="classifier-free guidance sweep (labels: scale)")
    ax.legend(fontsize=8)
    made.append(save_figure(fig, out / "cfg_sweep.png").name)
    return made


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-4) / max(n, 1))


def _cannot_draw(spec, row: dict) -> str | None:
    """Why `row`'s consistency cannot be compared (None when it can): its class samples must
    show the asked shape at least `spec.draw_threshold` of the time, else the judge reads
    blobs and two blobs match by chance."""
    shape = row.get("shape")
    if shape is None:
        return f"{row['model']} has no class measurement to show that it draws shapes"
    if shape < spec.draw_threshold:
        return (f"{row['model']} draws the asked shape in {pct(shape)}% of its class samples, "
                f"below the {100 * spec.draw_threshold:g}% at which its objects are shapes")
    return None


def verdict(spec, rows: list[dict], results: list[dict]) -> list[str]:
    """Plain sentences: which claims held on this data and budget."""
    lines = []
    role = {r["role"]: r for r in rows}
    n_cons = spec.eval.consistency_samples
    cnn, dit, hyb = role.get("cnn"), role.get("dit"), role.get("hybrid")
    if cnn and "consistency" in cnn:
        rf = cnn.get("receptive_field")
        side = next((r["image_size"] for r in results if r["measurement"] == "consistency"), 32)
        for other in (dit, hyb):
            if not other or "consistency" not in other:
                continue
            gap = other["consistency"] - cnn["consistency"]
            se = math.hypot(_se(cnn["consistency"], n_cons), _se(other["consistency"], n_cons))
            held = "held" if gap > 2 * se else ("did NOT hold (the CNN did better)" if gap < -2 *
                                                  se else "did NOT hold (no clear difference)")
            why = [w for w in (_cannot_draw(spec, cnn), _cannot_draw(spec, other)) if w]
            if why:
                held = f"not read as a comparison ({'; '.join(why)})"
            lines.append(
                f"- Attention keeps far-apart parts consistent ({other['model']} vs the CNN): "
                f"{held}: {pct(other['consistency'])}% vs {pct(cnn['consistency'])}% of "
                f"samples with two matching objects (difference {100 * gap:+.1f} points, "
                f"2 standard errors {200 * se:.1f}). The CNN's theoretical receptive field is "
                f"{rf} px on {side} px images" + (" (it covers the whole image, so the claim's "
                                                  "premise, a field too small to see both "
                                                  "objects, does not apply to it)"
                                                  if rf and rf >= 2 * side - 1 else "") + ".")
    if cnn and dit and "shape" in cnn and "shape" in dit:
        better = "the CNN" if (cnn["fd"] or 0) < (dit["fd"] or 0) else "the DiT"
        lines.append(f"- At matched FLOPs and steps, {better} had the lower fd_shapes "
                     f"(CNN {cnn['fd']:.1f}, DiT {dit['fd']:.1f}, hybrid "
                     f"{hyb['fd']:.1f})." if hyb and hyb.get("fd") is not None else
                     f"- At matched FLOPs and steps, {better} had the lower fd_shapes.")
    if hyb and "fd" in hyb and cnn and dit:
        best_fd = min(rows, key=lambda r: r.get("fd") or float("inf"))["model"]
        best_c = max(rows, key=lambda r: r.get("consistency") or 0)["model"]
        held = "held" if best_fd == hyb["model"] and best_c == hyb["model"] else "did NOT hold"
        lines.append(f"- The hybrid (convolutions for detail, attention for composition) is "
                     f"best at both: {held} (lowest fd_shapes: {best_fd}; highest "
                     f"consistency: {best_c}).")
    texts = [r for r in rows if r.get("text")]
    if texts:
        best = max(texts, key=lambda r: r["text"]["seen"]["prompt"])
        lines.append(
            "- Text-conditioned generators turn descriptions into matching images: best whole-"
            f"prompt accuracy {pct(best['text']['seen']['prompt'])}% on seen and "
            f"{pct(best['text']['unseen']['prompt'])}% on unseen combinations ({best['model']}); "
            f"the measure reads {pct(best['text']['seen_real']['prompt'])}% / "
            f"{pct(best['text']['unseen_real']['prompt'])}% on the real images of those prompts.")
        for r in texts:
            s, u = r["text"]["seen"], r["text"]["unseen"]
            lines.append(f"  - {r['model']}: held-out combinations cost "
                         f"{100 * (s['prompt'] - u['prompt']):+.1f} points of whole-prompt "
                         f"accuracy (shape {100 * (s['shape'] - u['shape']):+.1f}, colour "
                         f"{100 * (s['colour'] - u['colour']):+.1f}).")
    return lines


def _met(value: float, target: float) -> str:
    return "met" if value >= target else f"MISSED by {100 * (target - value):.1f} points"


def target_lines(spec, rows: list[dict]) -> list[str]:
    """The DiT against the study's targets: cond_acc per attribute, shape at least the CNN's
    at matched FLOPs and steps, and whole-prompt accuracy on seen and held-out combinations."""
    role = {r["role"]: r for r in rows}
    dit, cnn = role.get("dit"), role.get("cnn")
    if not dit:
        return []
    lines = []
    if dit.get("shape") is not None:
        for attr in ("shape", "colour"):
            lines.append(f"- {dit['model']} cond_acc {attr}: {pct(dit[attr])}% vs target "
                         f"{100 * spec.target:g}%: {_met(dit[attr], spec.target)}.")
        if cnn and cnn.get("shape") is not None:
            lines.append(f"- {dit['model']} cond_acc shape at least the CNN's ({cnn['model']}, "
                         f"same FLOPs per image and steps): {pct(dit['shape'])}% vs "
                         f"{pct(cnn['shape'])}%: {_met(dit['shape'], cnn['shape'])}.")
    for group in ("seen", "unseen") if dit.get("text") else ():
        if group in spec.text_target:
            v, t = dit["text"][group]["prompt"], spec.text_target[group]
            lines.append(f"- {dit['model']} whole prompt right, {group} combinations: "
                         f"{pct(v)}% vs target {100 * t:g}%: {_met(v, t)}.")
    return lines


def write_study_report(spec, results: list[dict], flops: dict, out: Path,
                       curves=None) -> str:
    rows = summarize_runs(spec, results)
    table = format_table(rows)
    flop_lines = []
    for name, per in flops.items():
        ratio = max(per.values()) / max(1, min(per.values()))
        flop_lines.append(f"- {name}: " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in per.items())
                          + f" MFLOPs per image forward (largest / smallest {ratio:.2f}, "
                          f"allowed {1 + spec.flop_tolerance:.2f})")
    print("FLOPs per image (torch.utils.flop_counter):\n" + "\n".join(flop_lines))
    plots = _plots(spec, results, out)
    steps = sorted({r["steps"] for r in results})
    md = ["## Results", "", table, "",
          f"Steps per run: {', '.join(map(str, steps))}. fd_shapes, cond_acc and sample time: "
          f"{spec.eval.samples} fresh samples (classes evenly) at each run's guidance scale; "
          "fd_shapes against real test scenes, its floor the same distance between two real "
          "sets of the same size. consistency: "
          f"{spec.eval.consistency_samples} samples of the twins model (chance, two objects "
          "drawn independently: 1/48 = 2.1%). text: "
          f"{spec.eval.prompts} test prompts with only seen colour-shape combinations and "
          f"{spec.eval.prompts} with a held-out one ({', '.join(spec.holdout)}); per attribute "
          "the fraction of named objects drawn right, relation on two-object prompts, prompt = "
          "everything right. sample ms/img: one thread, Euler, the runs' steps, guidance "
          "doubling the batch; train img/s: with the other runs sharing the CPU.", "",
          "Forward FLOPs per image, checked before training:", "", *flop_lines, ""]
    real_rows = [r for r in rows if r.get("text") or "consistency" in r]
    if real_rows:
        r0 = real_rows[0]
        md += ["The measures on real test images (their ceilings): consistency "
               f"{pct(r0.get('consistency_real'))}%; text " + ", ".join(
                   f"{a} {pct(r0['text']['seen_real'][a])} / "
                   f"{pct(r0['text']['unseen_real'][a])}%" for a in ATTRS)
               + " (seen / unseen)." if r0.get("text") else "", ""]
    for name in plots:
        md += [f"![{name}]({name})", ""]
    md += ["## Samples", ""]
    for meas in dict.fromkeys(r["measurement"] for r in results):  # the study's order
        for r in results:
            if r["measurement"] == meas and (out / "grids" / f"{meas}_{r['model']}.png").exists():
                md += [f"{meas}, {r['model']} ({r['role']}):", "",
                       f"![{meas} {r['model']}](grids/{meas}_{r['model']}.png)", ""]
    text = next((r for r in results if r["measurement"] == "text"), None)
    if text:
        md += ["Text grids: the first row seen prompts, the second unseen: " +
               "; ".join(f"\"{p}\"" for p in text["grid_prompts"]), ""]
    md += ["## What held", "", *verdict(spec, rows, results), "",
           "## Target", "", *(target_lines(spec, rows) or ["- no DiT in this study"]), ""]
    write_report(out, title=spec.name, description=spec.description, sections=md,
                 results={"experiment": spec.name, "description": spec.description,
                          "flops": flops, "runs": results, "summary": rows}, table=table,
                 curves=curves)
    return table
