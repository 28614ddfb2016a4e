"""Training steps/s of experiments/quick_classify.yaml in fp32 vs bf16 autocast, side by side.

Each round trains a few steps in each precision through the real engine (mmtx.train.train),
alternating the order, and reads steps / train_s (time in optimizer steps only: no eval, no
checkpoint). Prints a table of medians and the bf16/fp32 ratio; writes
benchmarks/results/train_precision.json.

    python benchmarks/train_precision.py [--rounds 3] [--steps 8] [--threads N] [--model NAME]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from mmtx.train import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default=None, help="override model.name (e.g. convnet_small)")
    args = ap.parse_args()
    config = ROOT / "experiments" / "quick_classify.yaml"
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(args.rounds):
        order = ["fp32", "bf16"] if r % 2 == 0 else ["bf16", "fp32"]
        for precision in order:
            overrides = [f"train.precision={precision}", f"train.max_steps={args.steps}",
                         "train.checkpoint_every=0", "train.eval_every=0",
                         "data.val_split=null", "data.test_split=null", "logging.progress=false"]
            if args.threads:
                overrides.append(f"train.threads={args.threads}")
            if args.model:
                overrides.append(f"model.name={args.model}")
            with tempfile.TemporaryDirectory() as run_dir:
                res = train(config, run_dir=run_dir, overrides=overrides)
            # the first step includes one-time costs (allocations, autocast caches): drop it
            rates[precision].append(res["steps"] / res["train_s"])
            print(f"round {r} {precision}: {rates[precision][-1]:.3f} steps/s", flush=True)
    med = {p: statistics.median(v) for p, v in rates.items()}
    rows = {
        "config": str(config.relative_to(ROOT)), "model": args.model or "config",
        "steps_per_run": args.steps, "rounds": args.rounds,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "steps_per_s": rates, "median_steps_per_s": med,
        "bf16_over_fp32": med["bf16"] / med["fp32"],
    }
    print(f"\n{'precision':<10}{'median steps/s':>16}{'runs':>30}")
    for p, v in rates.items():
        print(f"{p:<10}{med[p]:>16.3f}{'  '.join(f'{x:.3f}' for x in v):>30}")
    print(f"bf16 / fp32 = {rows['bf16_over_fp32']:.2f}x")
    out = ROOT / "benchmarks" / "results" / "train_precision.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
