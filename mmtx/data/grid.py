"""A PNG grid of dataset samples with their labels and captions (for READMEs and sanity checks).

    python -m mmtx.data.grid assets/shapes_samples.png    # the README's picture
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from .transforms import denormalize


def save_sample_grid(datasets, path, cols: int = 6, rows: int | None = None, start: int = 0,
                     title: str | None = None, wrap: int = 24, dpi: int = 150) -> Path:
    """Draw `cols` samples per row with label and caption; returns the path written.

    datasets: one dataset (then `rows` rows of it, default 3) or a dict {row title: dataset}
    (one row each; row r shows items start + r * cols ...). Items need `image` and `label`;
    `caption` is shown when present.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(datasets, dict):
        datasets = {None: datasets}
        row_specs = [(None, datasets[None], start + r * cols) for r in range(rows or 3)]
    else:  # each row starts further on, so rows built from one scene stream differ
        row_specs = [(name, ds, start + r * cols) for r, (name, ds) in enumerate(datasets.items())]
    items = [[ds[i] if i < len(ds) else None for i in range(first, first + cols)]
             for _, ds, first in row_specs]
    wrapped = [[textwrap.wrap(it["caption"], wrap) if it and "caption" in it else []
                for it in row] for row in items]
    lines = [max(len(w) for w in row) for row in wrapped]  # caption lines under each row
    heights = [1.75 + 0.13 * n for n in lines]
    fig, axes = plt.subplots(len(row_specs), cols, squeeze=False,
                             gridspec_kw={"height_ratios": heights},
                             figsize=(1.75 * cols, sum(heights) + 0.35 + (0.4 if title else 0)))
    fig.patch.set_facecolor("white")
    for r, (name, ds, _) in enumerate(row_specs):
        for c in range(cols):
            ax, item = axes[r][c], items[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if item is None:
                ax.axis("off")
                continue
            img = denormalize(item["image"], ds.mean, ds.std).permute(1, 2, 0).numpy()  # (H, W, C)
            grey = img.shape[-1] == 1
            ax.imshow(img[..., 0] if grey else img, cmap="gray" if grey else None,
                      interpolation="nearest")
            for side in ax.spines.values():
                side.set_color("#bbbbbb")
            ax.set_title(ds.class_names[item["label"]], fontsize=8, fontweight="bold",
                         color="#1f3b73", pad=3)
            if wrapped[r][c]:
                ax.set_xlabel("\n".join(wrapped[r][c]), fontsize=6.2, color="#333333",
                              labelpad=3, va="top", linespacing=1.15)
            if c == 0 and name:
                ax.set_ylabel(name, fontsize=9, fontweight="bold", color="#222222", labelpad=6)
    if title:
        fig.suptitle(title, fontsize=11, fontweight="bold")
    fig.tight_layout(h_pad=0.6, w_pad=0.4)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, facecolor=fig.get_facecolor())
    plt.close(fig)
    return path


def _readme_grid(path) -> Path:
    from .shapes import ShapesDataset

    rows = {f"task: {t}": ShapesDataset(64, split="test", task=t)
            for t in ("shape", "colour", "count", "relation")}
    return save_sample_grid(rows, path, cols=6,
                            title="mmtx.data.ShapesDataset: 32 px test samples, label and caption")


if __name__ == "__main__":
    import sys

    print(_readme_grid(sys.argv[1] if len(sys.argv) > 1 else "assets/shapes_samples.png"))
