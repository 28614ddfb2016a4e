"""Report figures (matplotlib, PNG): learning curves, data efficiency, confusion matrices,
a generation run's judged accuracy against training time, a study's compute curves."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..io import atomic_path  # noqa: E402


def save_figure(fig, path, dpi: int = 130) -> Path:
    """Save a figure as PNG (creating the folder) and close it; returns the path."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # a full disk leaves no half-written PNG
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix[1:] or "png")
    finally:
        plt.close(fig)
    return path


def display_image(image) -> np.ndarray:
    """(C, H, W) tensor in any range (a normalised input, a sample) -> (H, W, 3) or (H, W) in
    [0, 1] for imshow, min-max scaled per image."""
    img = image.detach().float().cpu()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    img = img.permute(1, 2, 0).numpy()  # (H, W, C)
    return img[..., 0] if img.shape[-1] == 1 else img[..., :3]


def plot_learning_curves(curves: dict, path, metric: str = "validation accuracy") -> Path:
    """curves: {label: [{"step", "wall_s", "value"}, ...]} -> two panels: vs step, vs wall time."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, (label, points) in enumerate(curves.items()):
        color = f"C{i}"
        steps = [p["step"] for p in points]
        walls = [p["wall_s"] for p in points]
        values = [p["value"] for p in points]
        axes[0].plot(steps, values, marker="o", ms=3, color=color, label=label)
        axes[1].plot(walls, values, marker="o", ms=3, color=color, label=label)
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("wall time (s)")
    axes[0].set_ylabel(metric)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Learning curves: {metric}")
    return save_figure(fig, path)


def plot_data_efficiency(points: dict, path) -> Path:
    """points: {model: [(fraction, mean, std), ...]} -> accuracy vs fraction of training data."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (model, rows) in enumerate(points.items()):
        rows = sorted(rows)
        frac = np.array([r[0] for r in rows])
        mean = np.array([r[1] for r in rows])
        std = np.array([r[2] for r in rows])
        ax.errorbar(frac * 100, mean * 100, yerr=std * 100, marker="o", capsize=3,
                    color=f"C{i}", label=model)
    ax.set_xscale("log")
    ax.set_xticks([f * 100 for f in sorted({r[0] for rs in points.values() for r in rs})])
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g%%"))
    ax.set_xlabel("fraction of the training set")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Data efficiency")
    return save_figure(fig, path)


def plot_confusion_matrices(matrices: dict, class_names: list[str], path) -> Path:
    """matrices: {label: (K, K) counts, rows = true class, columns = predicted}."""
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 0.6, 3.8), squeeze=False)
    k = len(class_names)
    for ax, (label, cm) in zip(axes[0], matrices.items()):
        cm = np.asarray(cm, dtype=float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # row-normalised: recall per class
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_title(label, fontsize=9)
    axes[0][0].set_ylabel("true")
    return save_figure(fig, path)


def plot_cond_acc(metrics_path, out, title: str | None = None) -> Path | None:
    """cond_acc per attribute (and its chance level) against training seconds, from a run's
    metrics.jsonl, as a PNG; None when the run logged no cond_acc."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line]
    split = "val" if any("val/cond_acc_colour" in r for r in rows) else "test"
    rows = [r for r in rows if f"{split}/cond_acc_colour" in r or f"{split}/cond_acc_shape" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    minutes = [r.get("time/train_s", float("nan")) / 60 for r in rows]
    for attr, colour in (("shape", "#1f77b4"), ("colour", "#d62728"), ("size", "#2ca02c")):
        key = f"{split}/cond_acc_{attr}"
        if any(key in r for r in rows):
            ax.plot(minutes, [r.get(key, float("nan")) for r in rows], "o-", color=colour,
                    label=attr)
    for chance, attr, va in ((1 / 6, "shape", "bottom"), (1 / 8, "colour", "top")):
        ax.axhline(chance, color="#999999", lw=0.8, ls=":")  # the default 6 shapes, 8 colours
        ax.text(0.99, chance, f"chance, {attr}", fontsize=7, color="#777777", ha="right",
                va=va, transform=ax.get_yaxis_transform())
    ax.set_xlabel("training time (minutes, evaluation excluded)")
    ax.set_ylabel("cond_acc (judge reads what was asked)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def si(n: float) -> str:
    """A count with an SI suffix: 38400 -> 38.4k; 1.2e6 -> 1.2M; 3.1e12 -> 3.1T."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def plot_compute_curves(panels: list[dict | None], path, ncols: int = 1) -> Path:
    """Compute curves: each panel {"title", "xlabel", "ylabel", "curves": {label: {"x",
    "mean", "lo", "hi", "seeds"}}, "marks": [{"x", "text"}]} on a log-x axis, panels left to
    right then down (None: an empty slot). A mark is a dotted vertical line at a crossover;
    with several seeds the band spans the lowest to the highest seed."""
    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 3.8 * nrows), squeeze=False)
    labels = list(dict.fromkeys(k for p in panels if p for k in p["curves"]))
    colour = {k: f"C{i}" for i, k in enumerate(labels)}  # one colour per model in every panel
    for ax, p in itertools.zip_longest(axes.flat, panels):
        if not p:
            ax.axis("off")
            continue
        for label, c in p["curves"].items():
            n = c.get("seeds", 1)
            ax.plot(c["x"], c["mean"], "o-", ms=3, color=colour[label],
                    label=f"{label} (mean of {n} seeds)" if n > 1 else label)
            if n > 1:
                ax.fill_between(c["x"], c["lo"], c["hi"], color=colour[label], alpha=0.2, lw=0)
        at: dict[float, list[str]] = {}  # crossovers at one budget share a line
        for m in p.get("marks", []):
            at.setdefault(m["x"], []).append(m["text"])
        for x, texts in at.items():
            ax.axvline(x, color="black", ls=":", lw=1)
            ax.annotate("; ".join(texts), (x, 0.98), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: si(v)))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set(xlabel=p["xlabel"], ylabel=p["ylabel"], title=p["title"])
        ax.grid(alpha=0.3, which="both")
        if p["curves"]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
