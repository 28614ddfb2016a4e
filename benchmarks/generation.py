"""Image-generator speed: mmtx's DiT vs diffusers' DiTTransformer2DModel, and DiT vs U-Net vs
the hybrid U-Net at matched FLOPs, side by side in one run.

  1. DiT vs diffusers at the same configuration with copied weights (`from_diffusers_dit`; the
     outputs are checked equal first): a train step (forward + MSE + backward + AdamW) and a
     sampling step (one eval forward under no_grad, what each step of a sampler costs), fp32
     and bf16 autocast. Class-conditional, latent-shaped input (4 channels), integer timesteps.
  2. At 32 px RGB: the DiT of the CPU study (`dit_micro_4`, the notes' probe) sets a FLOP
     budget (torch.utils.flop_counter, forward per image); the U-Net and the hybrid get the
     base width c (channels c/2c/3c) whose FLOPs come closest. Same two steps and precisions.

Medians over repeats; the models' steps are interleaved (each timed step follows an untimed one
of the same model and precision), so load from other processes hits all rows alike, and each
step's process CPU time is recorded beside its wall time (on an oversubscribed machine the CPU
time ratio is the steadier comparison). Prints a table, writes benchmarks/results/generation.json.

    python benchmarks/generation.py --quick --threads 1    # a few minutes on 2 shared cores
    python benchmarks/generation.py                        # DiT-S/2 on 32x32x4 latents
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
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from mmtx import create_model, model_summary  # noqa: E402
from mmtx.models.dit import from_diffusers_dit  # noqa: E402


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _autocast(bf16: bool, device: str):
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


class _Diffusers(nn.Module):
    """diffusers' forward(hidden_states, timestep, class_labels) -> .sample, as model(x, t, y)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, y):
        return self.model(x, t, y, return_dict=False)[0]


class _Fixed(nn.Module):
    """model(x) with t and y fixed, so `model_summary` can count a generator's FLOPs."""

    def __init__(self, model, t, y):
        super().__init__()
        self.model, self.t, self.y = model, t, y

    def forward(self, x):
        return self.model(x, self.t[:x.shape[0]], self.y[:x.shape[0]])


def fwd_flops(model, shape, t, y) -> int:
    return model_summary(_Fixed(model, t, y), shape)["flops"]


class Runner:
    """One generator's train step and sampling step on a fixed batch."""

    def __init__(self, model, x, t, y, device: str):
        self.model = model.to(device)
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.x, self.t, self.y = x.to(device), t.to(device), y.to(device)
        self.target = torch.randn_like(self.x)
        self.device = device

    def train_step(self, bf16: bool):
        self.model.train()
        _sync(self.device)
        t, c = time.perf_counter(), time.process_time()
        with _autocast(bf16, self.device):
            out = self.model(self.x, self.t, self.y)
        loss = F.mse_loss(out.float()[:, :self.x.shape[1]], self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.device)
        return time.perf_counter() - t, time.process_time() - c

    @torch.no_grad()
    def sample_step(self, bf16: bool):
        self.model.eval()
        _sync(self.device)
        t, c = time.perf_counter(), time.process_time()
        with _autocast(bf16, self.device):
            self.model(self.x, self.t, self.y)
        _sync(self.device)
        return time.perf_counter() - t, time.process_time() - c


def race(runners: dict, precs, reps: int, warmup: int, batch: int, flops: dict) -> list[dict]:
    rows = []
    for mode in ("train", "sample"):
        times = {(n, p): [] for n in runners for p in precs}
        for r in runners.values():  # warm-up: allocator, oneDNN kernel selection
            for p in precs:
                for _ in range(warmup):
                    getattr(r, f"{mode}_step")(p == "bf16")
        for _ in range(reps):  # interleaved: see the module docstring
            for p in precs:
                for n, r in runners.items():
                    step = getattr(r, f"{mode}_step")
                    step(p == "bf16")
                    times[n, p].append(step(p == "bf16"))
        for (n, p), ts in times.items():
            wall = statistics.median(w for w, _ in ts)
            cpu = statistics.median(c for _, c in ts)
            rows.append(dict(model=n, precision=p, mode=mode, images_per_s=batch / wall,
                             images_per_cpu_s=batch / cpu, median_step_s=wall,
                             median_step_cpu_s=cpu, fwd_mflops_per_image=flops[n] / 1e6))
    return rows


def op_census(ours, ref, x, t, y) -> dict:
    """aten ops one train-mode forward + backward dispatches, per op, for both models (a
    load-independent, exact comparison of the work each library asks for)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Census(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket).replace("aten.", "")] += 1
            return func(*args, **(kwargs or {}))

    counts = {}
    for name, model in (("mmtx", ours), ("diffusers", ref)):
        model.train()
        with Census() as c:
            model(x, t, y).float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        counts[name] = c.ops
    a, b = counts["mmtx"], counts["diffusers"]
    return {"total": {"mmtx": sum(a.values()), "diffusers": sum(b.values())},
            "differ": {k: {"mmtx": a[k], "diffusers": b[k]} for k in sorted(set(a) | set(b))
                       if a[k] != b[k]}}


def native_bf16(device: str) -> tuple[bool, float, float]:
    """Whether a bf16 matmul beats fp32 here (CPUs without AVX512-BF16/AMX emulate it, ~50x
    slower), with both GFLOP/s."""
    speed = {}
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(512, 512, device=device, dtype=dt)
        a @ a
        _sync(device)
        start = time.perf_counter()
        for _ in range(3):
            a @ a
        _sync(device)
        speed[dt] = 3 * 2 * 512 ** 3 / (time.perf_counter() - start) / 1e9
    return speed[torch.bfloat16] > speed[torch.float32], speed[torch.float32], \
        speed[torch.bfloat16]


def dit_vs_diffusers(args, device: str) -> dict:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    ref = DiTTransformer2DModel(num_attention_heads=args.heads,
                                attention_head_dim=args.dim // args.heads, in_channels=4,
                                out_channels=8, num_layers=args.depth, sample_size=args.latent,
                                patch_size=args.patch, num_embeds_ada_norm=1000)
    # One timestep/label embedding in every block, as the published weights (and mmtx) have.
    shared = ref.transformer_blocks[0].norm1.emb.state_dict()
    for block in ref.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(shared)
    ref.eval()
    ours = from_diffusers_dit(ref)
    x = torch.randn(args.batch, 4, args.latent, args.latent)
    t, y = torch.randint(0, 1000, (args.batch,)), torch.randint(0, 1000, (args.batch,))
    ref = _Diffusers(ref)
    with torch.no_grad():
        max_diff = (ours(x, t, y) - ref(x, t, y)).abs().max().item()
    models = {"mmtx DiT": ours, "diffusers DiT": ref}
    flops = {n: fwd_flops(m, (4, args.latent, args.latent), t, y) for n, m in models.items()}
    runners = {n: Runner(m, x, t, y, device) for n, m in models.items()}
    rows = race(runners, args.precisions, args.reps, args.warmup, args.batch, flops)
    census = op_census(ours, ref, x[:2], t[:2], y[:2]) if args.census else None
    config = dict(dim=args.dim, depth=args.depth, heads=args.heads, patch=args.patch,
                  latent=args.latent, in_chans=4, learn_sigma=True, batch=args.batch)
    return dict(config=config, max_abs_output_diff=max_diff, rows=rows, op_census=census)


def matched_flops(args, device: str) -> dict:
    size, batch = 32, args.batch_32
    x = torch.randn(batch, 3, size, size)
    t, y = torch.rand(batch), torch.randint(0, 10, (batch,))
    torch.manual_seed(0)
    dit = create_model(args.dit_32)
    budget = fwd_flops(dit, (3, size, size), t, y)

    def closest(name):  # base width c in steps of 8 whose FLOPs are nearest the budget
        best = None
        for c in range(8, 129, 8):
            model = create_model(name, channels=(c, 2 * c, 3 * c))
            f = fwd_flops(model, (3, size, size), t, y)
            if best is None or abs(f - budget) < abs(best[1] - budget):
                best = (model, f, c)
            if f > budget:  # FLOPs grow with c: the rest are further away
                break
        return best

    models, flops, widths = {f"{args.dit_32}": dit}, {args.dit_32: budget}, {}
    for name in ("unet_small", "unet_hybrid_small"):
        model, f, c = closest(name)
        label = f"{name} (c={c})"
        models[label], flops[label], widths[label] = model, f, (c, 2 * c, 3 * c)
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    runners = {n: Runner(m, x, t, y, device) for n, m in models.items()}
    rows = race(runners, args.precisions, args.reps, args.warmup, batch, flops)
    for r in rows:
        r["params"] = params[r["model"]]
    return dict(budget_mflops=budget / 1e6, unet_channels=widths, batch=batch, rows=rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller DiT, fewer repeats")
    p.add_argument("--batch", type=int, default=None, help="batch of the DiT/diffusers race")
    p.add_argument("--batch-32", type=int, default=32, help="batch of the 32 px race")
    p.add_argument("--reps", type=int, default=None, help="timed steps per row")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--latent", type=int, default=None, help="latent side (4 channels)")
    p.add_argument("--dit-32", default="dit_micro_4", help="the DiT that sets the FLOP budget")
    p.add_argument("--precisions", default=None,
                   help="comma list of fp32, bf16 (default both; bf16 left out on a CPU without "
                        "native bf16 matmuls, where it measures the emulation only)")
    p.add_argument("--no-census", dest="census", action="store_false",
                   help="skip the aten op count of the two DiTs")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (1 avoids OpenMP spin-wait stalls on a shared machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation.json"))
    args = p.parse_args(argv)
    args.batch = args.batch or (8 if args.quick else 16)
    args.reps = args.reps or (5 if args.quick else 10)
    args.depth = args.depth or (6 if args.quick else 12)
    args.latent = args.latent or (16 if args.quick else 32)
    args.warmup = 1 if args.quick else 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    has_bf16, gf32, gf16 = native_bf16(dev)
    bf16_note = None
    if args.precisions is None:
        args.precisions = ["fp32", "bf16"] if has_bf16 else ["fp32"]
        if not has_bf16:
            bf16_note = (f"bf16 left out: no native bf16 matmul here (bf16 {gf16:.1f} vs fp32 "
                         f"{gf32:.1f} GFLOP/s); force with --precisions fp32,bf16")
    else:
        args.precisions = args.precisions.split(",")

    versus = dit_vs_diffusers(args, dev)
    matched = matched_flops(args, dev)

    head = (f"{'model':<28}{'prec':<6}{'mode':<8}{'img/s':>9}{'img/cpu-s':>11}{'step ms':>10}"
            f"{'MFLOP/img':>11}")

    def table(rows, extra=False):
        print(head + (f"{'params':>10}" if extra else ""))
        for r in rows:
            print(f"{r['model']:<28}{r['precision']:<6}{r['mode']:<8}{r['images_per_s']:>9.1f}"
                  f"{r['images_per_cpu_s']:>11.1f}{1e3 * r['median_step_s']:>10.1f}"
                  f"{r['fwd_mflops_per_image']:>11.1f}"
                  + (f"{r['params'] / 1e6:>9.2f}M" if extra else ""))

    def ips(rows, model, prec, mode, key="images_per_s"):
        return next(r[key] for r in rows
                    if r["model"] == model and r["precision"] == prec and r["mode"] == mode)

    ratios = []
    for prec in args.precisions:
        for mode in ("train", "sample"):
            rows = versus["rows"]
            ratios.append(dict(
                what=f"mmtx/diffusers DiT {mode} {prec}",
                ratio=ips(rows, "mmtx DiT", prec, mode) / ips(rows, "diffusers DiT", prec, mode),
                cpu_time_ratio=ips(rows, "mmtx DiT", prec, mode, "images_per_cpu_s")
                / ips(rows, "diffusers DiT", prec, mode, "images_per_cpu_s")))

    cfg = versus["config"]
    print(f"device {dev} ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {args.reps} reps "
          f"(median); matmul fp32 {gf32:.1f}, bf16 {gf16:.1f} GFLOP/s")
    if bf16_note:
        print(bf16_note)
    print(f"\n1. DiT dim {cfg['dim']} depth {cfg['depth']} heads {cfg['heads']} patch "
          f"{cfg['patch']} on {cfg['latent']}x{cfg['latent']}x4 latents, learn_sigma, batch "
          f"{cfg['batch']}; max |mmtx - diffusers| output {versus['max_abs_output_diff']:.1e}")
    table(versus["rows"])
    print(f"\n{'ratio':<36}{'wall':>7}{'cpu-time':>10}")
    for r in ratios:
        print(f"{r['what']:<36}{r['ratio']:>6.2f}x{r['cpu_time_ratio']:>9.2f}x")
    if versus["op_census"]:
        c = versus["op_census"]
        diff = ", ".join(f"{k} {v['mmtx']}/{v['diffusers']}" for k, v in c["differ"].items())
        print(f"aten ops per train forward+backward (batch 2), mmtx/diffusers: total "
              f"{c['total']['mmtx']}/{c['total']['diffusers']}; where they differ: {diff}")
    print(f"\n2. 32 px RGB, 10 classes, batch {matched['batch']}: FLOP budget "
          f"{matched['budget_mflops']:.0f} MFLOP/img ({args.dit_32}); U-Nets at the nearest "
          f"base width")
    table(matched["rows"], extra=True)

    result = dict(device=dev, threads=torch.get_num_threads(), torch=torch.__version__,
                  quick=args.quick, reps=args.reps, precisions=args.precisions,
                  matmul_gflops=dict(fp32=gf32, bf16=gf16), dit_vs_diffusers=versus, ratios=ratios,
                  matched_flops=matched)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
