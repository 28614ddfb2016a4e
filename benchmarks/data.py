"""How fast is the embedded shapes data? Images per second on ONE core, side by side with peers.

Rows:
- mmtx render: scene sampling + anti-aliased numpy SDF drawing -> uint8 (H, W, 3).
- PIL ImageDraw (peer): the same scenes (same sampling) drawn with PIL's polygon / ellipse
  primitives, aliased, then converted to a numpy array.
- mmtx item: a full dataset item (normalised tensor, caption, attributes).
- mmtx item, cached: cache=True (rendered once into memory), item lookup only.
- torchvision FakeData (peer): random-noise images per index + PILToTensor + Normalize, the
  stock synthetic dataset.

Each cell is the median of `--repeats` interleaved runs over `--n` items, timed in process CPU
time with one torch thread (images per CPU-second = per core). Prints a table and writes
benchmarks/results/data.json.

    python benchmarks/data.py            # ~1 minute
    python benchmarks/data.py --n 300 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtx.data import ShapesDataset  # noqa: E402
from mmtx.data.render import BOUND  # noqa: E402


def pil_render(objects, size: int) -> np.ndarray:
    """The peer: the same objects with PIL ImageDraw primitives (no anti-aliasing)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (0, 0, 0))
    draw = ImageDraw.Draw(im)
    for o in objects:
        fill = tuple(int(255 * c) for c in o.rgb)
        x, y, r = o.x, o.y, o.r
        if o.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif o.shape == "square":
            draw.rectangle([x - 0.8 * r, y - 0.8 * r, x + 0.8 * r, y + 0.8 * r], fill=fill)
        elif o.shape == "diamond":
            b = BOUND["diamond"] * r
            draw.polygon([(x, y - b), (x + b, y), (x, y + b), (x - b, y)], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(x, y - 0.83 * r), (x + 0.95 * r, y + 0.82 * r),
                          (x - 0.95 * r, y + 0.82 * r)], fill=fill)
        elif o.shape == "star":
            pts = [(x + rr * math.sin(a), y - rr * math.cos(a))
                   for k in range(10)
                   for a, rr in [(k * math.pi / 5, 1.1 * r * (1 if k % 2 == 0 else 0.45))]]
            draw.polygon(pts, fill=fill)
        else:  # cross
            a, b = 0.9 * r, 0.32 * r
            draw.rectangle([x - a, y - b, x + a, y + b], fill=fill)
            draw.rectangle([x - b, y - a, x + b, y + a], fill=fill)
    return np.asarray(im)


def rate(fn, n: int) -> float:
    # CPU time of this process (one thread): a per-core rate that stays meaningful when other
    # jobs share the machine, which wall-clock time on a busy box does not.
    start = time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.process_time() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="items per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the requirement is per core

    from torchvision.datasets import FakeData
    from torchvision.transforms import v2

    rows = []
    for size in (32, 64):
        for task in ("shape", "count", "relation"):
            ds = ShapesDataset(args.n, image_size=size, task=task)
            cached = ShapesDataset(args.n, image_size=size, task=task, cache=True)
            cases = {
                "mmtx render": lambda i, ds=ds: ds.render_uint8(i),
                "PIL ImageDraw (peer)": lambda i, ds=ds, s=size: pil_render(ds.scene(i), s),
                "mmtx item": lambda i, ds=ds: ds[i],
                "mmtx item, cached": lambda i, ds=cached: ds[i],
            }
            if task == "shape":
                fake = FakeData(args.n, (3, size, size), 6, transform=v2.Compose(
                    [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize([0.5] * 3, [0.5] * 3)]))
                cases["torchvision FakeData (peer)"] = lambda i, fake=fake: fake[i]
            samples = {k: [] for k in cases}
            for _ in range(args.repeats):  # interleaved, so load changes hit all cases alike
                for name, fn in cases.items():
                    samples[name].append(rate(fn, args.n))
            base = statistics.median(samples["mmtx render"])
            for name, vals in samples.items():
                med = statistics.median(vals)
                rows.append({"image_size": size, "task": task, "case": name,
                             "images_per_s": round(med, 1),
                             "vs_mmtx_render": round(med / base, 3)})

    print(f"{'px':>3}  {'task':<9} {'case':<28} {'images/s':>10} {'x mmtx render':>14}")
    for r in rows:
        print(f"{r['image_size']:>3}  {r['task']:<9} {r['case']:<28} {r['images_per_s']:>10.0f} "
              f"{r['vs_mmtx_render']:>14.2f}")
    result = {"benchmark": "data", "threads": 1, "clock": "process_time", "n": args.n,
              "repeats": args.repeats,
              "python": platform.python_version(), "torch": torch.__version__,
              "machine": platform.machine(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
