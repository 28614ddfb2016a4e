"""Side-by-side attention benchmark: mmtx vs torch.nn.MultiheadAttention vs timm; local vs dense.

    python benchmarks/attention.py [--quick] [--device cpu|cuda] [--out PATH]

1. Forward + backward time of mmtx `Attention`, `nn.MultiheadAttention` (need_weights=False, its
   fast path) and `timm.layers.Attention`, holding the same weights (outputs are checked equal
   first), at ViT-S shapes (B=8, L=256, dim=384, 6 heads, bidirectional) and decoder shapes
   (B=8, L=256, dim=512, 8 heads, causal; timm gets is_causal=True). The three run in turn inside
   every repetition, so load from other processes hits them alike; medians are reported.
2. The same three with attention dropout 0.1 (training mode) at the main job's CCT shapes
   (B=64, L=64, dim=32, 2 heads) and ViT-S shapes: PyTorch's fused CPU kernels have no dropout,
   so torch falls back to its math path there; mmtx takes its own explicit path.
3. `local_attention` vs dense attention (`sliding_window_mask` + `scaled_dot_product_attention`,
   the mask build included since a dense user must build it) at growing L: forward time and
   peak memory. Peak memory on CPU is read from the PyTorch profiler's allocation events
   (`profile_memory=True`): every tensor allocation and free inside the call, in time order; the
   peak is the largest running sum, i.e. the most tensor memory held at once beyond the inputs.
   On CUDA it is torch.cuda.max_memory_allocated minus the memory held before the call.

Prints a table and writes JSON (default benchmarks/results/attention.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import Attention as TimmAttention

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install
from mmtx.layers import (  # noqa: E402
    Attention,
    causal_mask,
    local_attention,
    scaled_dot_product_attention,
    sliding_window_mask,
)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_side_by_side(fns: dict, reps: int, warmup: int, device) -> dict:
    """Median seconds per call of each fn; all fns run in turn inside every repetition."""
    times = {name: [] for name in fns}
    order = list(fns.items())
    for i in range(warmup + reps):
        order = order[1:] + order[:1]  # rotate, so no fn always runs right after another
        for name, fn in order:
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_memory(fn, device) -> int:
    """Most bytes of tensor memory held at once during fn(), beyond what was held before."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


def equalised_modules(dim, heads, device, attn_drop=0.0):
    """mmtx, nn.MultiheadAttention and timm attention holding the same weights."""
    ours = Attention(dim, heads, qkv_bias=True, attn_drop=attn_drop).to(device)
    mha = nn.MultiheadAttention(dim, heads, bias=True, batch_first=True,
                                dropout=attn_drop).to(device)
    timm = TimmAttention(dim, heads, qkv_bias=True, attn_drop=attn_drop).to(device)
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.qkv.weight)  # rows q, k, v in all three
        mha.in_proj_bias.copy_(ours.qkv.bias)
        mha.out_proj.weight.copy_(ours.proj.weight)
        mha.out_proj.bias.copy_(ours.proj.bias)
    timm.load_state_dict(ours.state_dict())
    return ours, mha, timm


def bench_modules(name, B, L, dim, heads, causal, reps, warmup, device, attn_drop=0.0):
    torch.manual_seed(0)
    ours, mha, timm = equalised_modules(dim, heads, device, attn_drop)
    x = torch.randn(B, L, dim, device=device, requires_grad=True)
    mha_mask = ~causal_mask(L, device=device) if causal else None  # MHA: True = blocked
    calls = {
        "mmtx": lambda: ours(x, causal=causal),
        "torch_mha": lambda: mha(x, x, x, attn_mask=mha_mask, is_causal=causal,
                                 need_weights=False)[0],
        "timm": lambda: timm(x, is_causal=causal),
    }
    with torch.no_grad():  # eval mode: no dropout, so the outputs must agree
        for m in (ours, mha, timm):
            m.eval()
        ref = calls["mmtx"]()
        diffs = {k: (f() - ref).abs().max().item() for k, f in calls.items() if k != "mmtx"}
        for m in (ours, mha, timm):
            m.train()

    def fwd_bwd(f):
        return lambda: f().sum().backward()

    t = time_side_by_side({k: fwd_bwd(f) for k, f in calls.items()}, reps, warmup, device)
    return {"case": name, "B": B, "L": L, "dim": dim, "heads": heads, "causal": causal,
            "attn_drop": attn_drop, "median_ms": {k: v * 1e3 for k, v in t.items()},
            "ratio_vs_mmtx": {k: v / t["mmtx"] for k, v in t.items()},
            "max_abs_diff_vs_mmtx": diffs}


def local_row(L, window, heads, head_dim, reps, device, dense_max):
    """One length: local vs dense forward time and peak memory (dense only up to dense_max)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, L, head_dim, device=device) for _ in range(3))
    fns = {"local": lambda: local_attention(q, k, v, window)}
    if L <= dense_max:
        fns["dense"] = lambda: scaled_dot_product_attention(
            q, k, v, mask=sliding_window_mask(L, window, device=device))
    with torch.no_grad():
        diff = (fns["local"]() - fns["dense"]()).abs().max().item() if "dense" in fns else None
        t = time_side_by_side(fns, max(1, reps if L <= 4096 else reps // 4), 1, device)
        mem = {name: peak_memory(f, device) for name, f in fns.items()}
    row = {"L": L, "window": window, "heads": heads, "head_dim": head_dim,
           "median_ms": {name: x * 1e3 for name, x in t.items()},
           "peak_mib": {name: x / 2**20 for name, x in mem.items()}, "max_abs_diff": diff}
    if "dense" in fns:
        row["time_ratio_local_vs_dense"] = t["local"] / t["dense"]
        row["memory_ratio_local_vs_dense"] = mem["local"] / max(mem["dense"], 1)
    return row


def bench_local(lengths, window, heads, head_dim, reps, device, dense_max):
    rows = []
    for L in lengths:
        rows.append(local_row(L, window, heads, head_dim, reps, device, dense_max))
        print(f"  L={L}: done", flush=True)
    for prev, row in zip(rows, rows[1:]):  # growth per doubling of L, from consecutive lengths
        doublings = (row["L"] // prev["L"]).bit_length() - 1
        growth = row["median_ms"]["local"] / prev["median_ms"]["local"]
        row["local_time_growth_per_doubling"] = growth ** (1 / doublings)
        # Linear time doubles per doubling of L; per token it should stay flat (1.0).
        row["local_time_per_token_growth_per_doubling"] = growth ** (1 / doublings) / 2
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, L up to 4k")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/attention.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    reps, warmup = (5, 2) if args.quick else (20, 3)
    lengths = [1024, 2048, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384]

    print(f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads)")
    modules = [bench_modules("vit_s", 8, 256, 384, 6, False, reps, warmup, device),
               bench_modules("decoder", 8, 256, 512, 8, True, reps, warmup, device),
               bench_modules("cct_drop", 64, 64, 32, 2, False, reps, warmup, device, 0.1),
               bench_modules("vit_s_drop", 8, 256, 384, 6, False, reps, warmup, device, 0.1)]
    print(f"\nforward+backward, median ms (ratio to mmtx), reps={reps}; *_drop: attention "
          f"dropout 0.1")
    print(f"{'case':<10}{'mmtx':>10}{'torch_mha':>20}{'timm':>20}")
    for r in modules:
        m, rat = r["median_ms"], r["ratio_vs_mmtx"]
        print(f"{r['case']:<10}{m['mmtx']:>10.2f}"
              f"{m['torch_mha']:>12.2f} ({rat['torch_mha']:.2f}x)"
              f"{m['timm']:>12.2f} ({rat['timm']:.2f}x)")

    print("\nlocal_attention vs dense (forward, window=256, 1 x 4 heads x 64); growth/2x: local "
          "time ratio per doubling of L (linear = 2.0), per token: that / 2 (linear = 1.0)")
    local = bench_local(lengths, 256, 4, 64, reps, device, dense_max=16384)
    print(f"{'L':>6}{'local ms':>10}{'dense ms':>10}{'t ratio':>9}{'local MiB':>11}"
          f"{'dense MiB':>11}{'m ratio':>9}{'growth/2x':>10}{'per token':>10}")
    for r in local:
        m, p = r["median_ms"], r["peak_mib"]
        print(f"{r['L']:>6}{m['local']:>10.1f}{m.get('dense', float('nan')):>10.1f}"
              f"{r.get('time_ratio_local_vs_dense', float('nan')):>9.3f}{p['local']:>11.1f}"
              f"{p.get('dense', float('nan')):>11.1f}"
              f"{r.get('memory_ratio_local_vs_dense', float('nan')):>9.3f}"
              f"{r.get('local_time_growth_per_doubling', float('nan')):>10.2f}"
              f"{r.get('local_time_per_token_growth_per_doubling', float('nan')):>10.2f}")

    result = {"device": str(device), "torch": torch.__version__, "threads":
              torch.get_num_threads(), "machine": platform.machine(), "quick": args.quick,
              "reps": reps, "modules": modules, "local": local,
              "memory_method": "CPU: max running sum of torch profiler [memory] events; "
                               "CUDA: max_memory_allocated minus memory held before"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
