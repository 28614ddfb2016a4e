"""The first look at a GPU: training images/s and model FLOP utilisation (MFU) of the main job's
models (experiments/cnn_vs_vit_quick.yaml), the class-conditional generator
(experiments/gen_class_quick.yaml) and the captioner (experiments/captioner.yaml), each in bf16
autocast, eager and with torch.compile, through the real engine (mmtx.train.Trainer).

    python benchmarks/gpu_check.py [--steps 60] [--jobs main gen_class captioner]
                                   [--modes bf16 bf16+compile] [--json out.json]

images/s: the last logging window of the run (the first windows hold compilation and warm-up).
FLOPs per image: torch.utils.flop_counter over one training step (forward and backward) of the
same model and batch, in eager fp32, divided by the batch size. MFU = FLOPs per image x
images/s / the card's peak (PEAK_TFLOPS below, matched on torch.cuda.get_device_name()).
Prints a table and the same rows as JSON (stdout, or --json FILE). Without a CUDA GPU it says
so and exits 0. `--device cpu` runs the same code on the CPU (what the tests do; no MFU there).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets; fp16 for
# cards without bf16 (V100, T4). The first name found in the device name wins: specific first.
PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    "H200": 989.4,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 70.0,
    "A10": 125.0,
    "L40S": 362.1,
    "L40": 181.0,
    "L4": 121.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
    "V100": 125.0,
    "T4": 65.0,
}
MODES = {"bf16": ["train.precision=bf16"],
         "bf16+compile": ["train.precision=bf16", "train.compile=true"],
         "fp32": ["train.precision=fp32"]}
JOBS = ("main", "gen_class", "captioner")


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


def job_configs(job: str) -> list[tuple[str, dict]]:
    """(label, config dict) of each model a job trains."""
    from mmtx.train.config import load_config

    if job == "main":
        from mmtx.experiments.grid import load_experiment, run_config

        exp = load_experiment(EXPERIMENTS / "cnn_vs_vit_quick.yaml")
        seen, out = set(), []
        for run in exp.runs:
            if run.label not in seen and run.fraction == 1.0:
                seen.add(run.label)
                out.append((f"main/{run.label}", run_config(exp, run)))
        return out
    path = {"gen_class": "gen_class_quick.yaml", "captioner": "captioner.yaml"}[job]
    return [(job, load_config(EXPERIMENTS / path).to_dict())]


def flops_per_image(trainer) -> float:
    """FLOPs of one training step (forward + backward) per image, eager fp32."""
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    batch = next(iter(trainer.train_loader))
    with FlopCounterMode(display=False) as counter:
        loss, _ = trainer.task.step(model, batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / trainer.task.count(batch)


def measure(label: str, cfg: dict, mode: str, steps: int, device: str, peak: float | None,
            tmp: Path) -> dict:
    from mmtx.train.config import load_config
    from mmtx.train.engine import Trainer

    log_every = max(1, steps // 3)
    overrides = [*MODES[mode], f"train.max_steps={steps}", f"train.log_every={log_every}",
                 "train.eval_every=0", "train.checkpoint_every=0", "train.ema=null",
                 "data.val_split=null", "data.test_split=null", "logging.wandb=false",
                 "logging.progress=false", f"train.cpu={'true' if device == 'cpu' else 'false'}"]
    if device != "cpu":
        overrides.append("train.threads=null")
    config = load_config(cfg, overrides)
    run_dir = tmp / f"{label.replace('/', '-')}-{mode}"
    trainer = Trainer(config, run_dir)
    flops = flops_per_image(trainer)
    trainer.fit()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rate = [r for r in rows if any(k.endswith("_per_s") for k in r)][-1]
    images_per_s = next(v for k, v in rate.items() if k.endswith("_per_s"))
    achieved = flops * images_per_s
    return {"job": label, "model": config.model.name, "mode": mode,
            "batch": config.data.batch_size, "steps": steps, "images_per_s": images_per_s,
            "gflop_per_image": flops / 1e9, "tflop_per_s": achieved / 1e12,
            "mfu": achieved / (peak * 1e12) if peak else None}


def table(rows: list[dict]) -> str:
    head = f"{'job':18s} {'model':26s} {'mode':13s} {'batch':>5s} {'images/s':>10s} " \
           f"{'GFLOP/img':>10s} {'TFLOP/s':>8s} {'MFU':>6s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "   n/a"
        lines.append(f"{r['job']:18s} {r['model']:26s} {r['mode']:13s} {r['batch']:5d} "
                     f"{r['images_per_s']:10.0f} {r['gflop_per_image']:10.3f} "
                     f"{r['tflop_per_s']:8.2f} {mfu:>6s}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=["bf16", "bf16+compile"])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing to "
              "measure. Run it on a machine with a GPU (or --device cpu to try the script).")
        return 0
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = peak_tflops(name) if args.device == "cuda" else None
    print(f"device: {name}; peak {f'{peak} TFLOP/s (bf16, dense)' if peak else 'unknown'}",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for job in args.jobs:
            for label, cfg in job_configs(job):
                for mode in args.modes:
                    rows.append(measure(label, cfg, mode, args.steps, args.device, peak,
                                        Path(tmp)))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    result = {"device": name, "peak_tflops": peak, "torch": torch.__version__, "rows": rows}
    if args.json is not None:
        from mmtx.io import write_json

        write_json(args.json, result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
