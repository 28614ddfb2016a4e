"""Vision throughput: the mmtx ViT vs timm's VisionTransformer of the same config, side by side.

Rows: training (forward + backward + AdamW step) and inference images/s, fp32 and bf16 autocast,
for the mmtx ViT, timm's ViT, ResNet-18 (small-image stem) and the CCT hybrid; model FLOP
utilisation (MFU) against a square-matmul peak measured in this same run for each dtype.
Medians over repeats; the models' steps are interleaved so that load from other processes on a
shared machine hits all alike, and each step's process CPU time is recorded next to its wall time
(on an oversubscribed machine the CPU-time ratio is the steadier comparison).

    python benchmarks/vision.py            # full
    python benchmarks/vision.py --quick    # a smoke run (a few minutes on 2 cores)
    python benchmarks/vision.py --reps 3 --batch 16 --threads 1   # what the report quotes

On a 2-core machine shared with other jobs, 2 torch threads stall in OpenMP barriers whenever one
core is taken (steps ran up to 9x slower, with spin-wait counted as CPU time); --threads 1 gave
8x the throughput there and stable ratios. MFU is against a single 2048^2 torch.mm, so oneDNN
convolutions can read above 100%.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from mmtx import create_model, model_summary  # noqa: E402


def matmul_peak(dtype: torch.dtype, n: int, reps: int, device: str) -> float:
    """FLOP/s of an n x n matmul in `dtype` (the best a model's GEMMs can hope for here)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _autocast(bf16: bool, device: str):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


class Runner:
    """One model's train step and inference step, each timed on its own."""

    def __init__(self, model, batch: int, img: int, chans: int, device: str):
        self.model = model.to(device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.x = torch.randn(batch, chans, img, img, device=device)
        self.y = torch.randint(0, 10, (batch,), device=device)
        self.device, self.batch = device, batch

    def train_step(self, bf16: bool) -> float:
        self.model.train()
        _sync(self.device)
        t, c = time.perf_counter(), time.process_time()
        with _autocast(bf16, self.device):
            loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - t, time.process_time() - c

    @torch.inference_mode()
    def infer_step(self, bf16: bool) -> float:
        self.model.eval()
        _sync(self.device)
        t, c = time.perf_counter(), time.process_time()
        with _autocast(bf16, self.device):
            self.model(self.x)
        _sync(self.device)
        return time.perf_counter() - t, time.process_time() - c


def op_census(model, x, bf16: bool) -> collections.Counter:
    """aten ops one forward + backward dispatches (a load-independent, exact comparison)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Census(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket).replace("aten.", "")] += 1
            return func(*args, **(kwargs or {}))

    model.train()
    with Census() as census:
        with _autocast(bf16, "cpu"):
            loss = model(x).float().logsumexp(-1).mean()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return census.ops


def census_diff(args) -> dict:
    """Ops where the mmtx and timm ViTs differ (depth-2 copies, same config otherwise)."""
    small = argparse.Namespace(**{**vars(args), "depth": 2})
    pair = build_models(small, only_vits=True)
    x = torch.randn(2, 3, args.img, args.img)
    out = {}
    for prec in ("fp32", "bf16"):
        a, b = (op_census(pair[k], x, prec == "bf16") for k in ("mmtx ViT", "timm ViT"))
        out[prec] = {"total": {"mmtx": sum(a.values()), "timm": sum(b.values())},
                     "differ": {k: {"mmtx": a[k], "timm": b[k]} for k in sorted(set(a) | set(b))
                                if a[k] != b[k]}}
    return out


def build_models(args, only_vits: bool = False):
    import timm  # noqa: F401
    from timm.models.vision_transformer import VisionTransformer

    vit = dict(img_size=args.img, patch_size=args.patch, num_classes=10)
    sizes = dict(dim=args.dim, depth=args.depth, num_heads=args.heads)
    timm_sizes = dict(embed_dim=args.dim, depth=args.depth, num_heads=args.heads)
    vits = {
        "mmtx ViT": create_model("vit_tiny_patch4_32", **vit, **sizes),
        "timm ViT": VisionTransformer(**vit, **timm_sizes, qkv_bias=True),
    }
    if only_vits:
        return vits
    return {
        **vits,
        "ResNet-18 (small)": create_model("resnet18_small", num_classes=10),
        "CCT-7/3x1": create_model("cct_7_3x1_32", num_classes=10, img_size=args.img),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few repeats, small batch")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--reps", type=int, default=None, help="timed steps per row")
    p.add_argument("--img", type=int, default=32)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (1 avoids OpenMP spin-wait stalls on an oversubscribed "
                        "machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "vision.json"))
    args = p.parse_args(argv)
    batch = args.batch or (16 if args.quick else 32)
    reps = args.reps or (3 if args.quick else 5)
    if args.quick:
        args.depth = min(args.depth, 4)
    warmup = 1 if args.quick else 2
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    peak = {name: matmul_peak(dt, 1024 if args.quick else 2048, reps, dev)
            for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    models = build_models(args)
    flops = {n: model_summary(m, (3, args.img, args.img))["flops"] for n, m in models.items()}
    runners = {n: Runner(m, batch, args.img, 3, dev) for n, m in models.items()}

    rows = []
    precs = ("fp32", "bf16")
    for mode in ("train", "infer"):
        times = {(n, p): [] for n in runners for p in precs}
        for r in runners.values():  # warm-up: allocator, oneDNN kernel selection
            for p in precs:
                for _ in range(warmup):
                    getattr(r, f"{mode}_step")(p == "bf16")
        # Interleaved over models and precisions, so that load from other processes on a shared
        # machine, which comes and goes, hits every row alike instead of whole phases. Each
        # timed step follows an untimed one of the same model and precision: the first step
        # after a switch pays for the previous model's cache and allocator state, which a
        # training run of one model never sees.
        for _ in range(reps):
            for p in precs:
                for n, r in runners.items():
                    step = getattr(r, f"{mode}_step")
                    step(p == "bf16")
                    times[n, p].append(step(p == "bf16"))
        for (n, p), ts in times.items():
            med = statistics.median(t for t, _ in ts)
            cpu = statistics.median(c for _, c in ts)
            rows.append(dict(model=n, precision=p, mode=mode, images_per_s=batch / med,
                             images_per_cpu_s=batch / cpu, median_step_s=med,
                             median_step_cpu_s=cpu, fwd_gflops_per_image=flops[n] / 1e9))
    # The peak is measured again at the end and the better of the two kept (MFU is then a
    # conservative figure even if the machine was busier when the first was taken).
    n_peak = 1024 if args.quick else 2048
    peak = {p: max(peak[p], matmul_peak(dt, n_peak, reps, dev))
            for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    for r in rows:
        step_flops = flops[r["model"]] * batch * (3 if r["mode"] == "train" else 1)  # bwd = 2x
        r["mfu"] = step_flops / r["median_step_s"] / peak[r["precision"]]
    rows.sort(key=lambda r: (r["precision"] != "fp32", r["mode"] != "train"))  # stable

    def ips(model, prec, mode, key="images_per_s"):
        return next(r[key] for r in rows
                    if r["model"] == model and r["precision"] == prec and r["mode"] == mode)

    def ratio(what, a, b):  # a, b: (model, precision, mode)
        return dict(what=what, ratio=ips(*a) / ips(*b),
                    cpu_time_ratio=ips(*a, "images_per_cpu_s") / ips(*b, "images_per_cpu_s"))

    ratios = []
    for prec in ("fp32", "bf16"):
        for mode in ("train", "infer"):
            ratios.append(ratio(f"mmtx/timm ViT {mode} {prec}", ("mmtx ViT", prec, mode),
                                ("timm ViT", prec, mode)))
    for n in runners:
        for mode in ("train", "infer"):
            ratios.append(ratio(f"{n} {mode} bf16/fp32", (n, "bf16", mode), (n, "fp32", mode)))

    print(f"device {dev} ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, batch {batch}, "
          f"{reps} reps (median), ViT img {args.img} patch {args.patch} dim {args.dim} "
          f"depth {args.depth} heads {args.heads}")
    print(f"matmul peak: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} "
          "GFLOP/s")
    print(f"{'model':<20}{'prec':<6}{'mode':<7}{'img/s':>9}{'img/cpu-s':>11}{'step ms':>10}"
          f"{'GFLOP/img':>11}{'MFU':>8}")
    for r in rows:
        print(f"{r['model']:<20}{r['precision']:<6}{r['mode']:<7}{r['images_per_s']:>9.1f}"
              f"{r['images_per_cpu_s']:>11.1f}{1e3 * r['median_step_s']:>10.1f}"
              f"{r['fwd_gflops_per_image']:>11.3f}{100 * r['mfu']:>7.1f}%")
    census = census_diff(args)
    print("\naten ops per forward+backward of a depth-2 ViT where mmtx and timm differ "
          "(all others, incl. every mm/addmm/layer_norm/gelu/sdpa, are equal):")
    for prec, c in census.items():
        diff = ", ".join(f"{k} {v['mmtx']}/{v['timm']}" for k, v in c["differ"].items())
        print(f"  {prec}: total {c['total']['mmtx']}/{c['total']['timm']} (mmtx/timm); {diff}")
    print(f"\n{'ratio':<36}{'wall':>7}{'cpu-time':>10}")
    for r in ratios:
        print(f"{r['what']:<36}{r['ratio']:>6.2f}x{r['cpu_time_ratio']:>9.2f}x")

    result = dict(device=dev, threads=torch.get_num_threads(), torch=torch.__version__,
                  batch=batch, reps=reps, quick=args.quick,
                  vit_config=dict(img=args.img, patch=args.patch, dim=args.dim,
                                  depth=args.depth, heads=args.heads),
                  matmul_peak_flops=peak, rows=rows, ratios=ratios, op_census=census)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
