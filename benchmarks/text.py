"""Text decoder speed: mmtx `TextDecoder` vs Hugging Face GPT-2 of the same config, weights copied.

Measured side by side in one run, interleaved (mmtx, HF, mmtx, HF, ...) so that load from other
processes hits both alike; medians reported.
  1. greedy decode tokens/s, batch 1 and 16, 256 new tokens (HF: `generate`, KV cache on);
  2. mmtx cached vs uncached generation to 512 tokens;
  3. training tokens/s (forward + backward + AdamW step);
  4. `Seq2Seq` greedy decoding with the cross-attention keys and values cached vs projected
     again on every step (what decoding cost before the cache kept them).
Prints a table and writes benchmarks/results/text.json.

    python benchmarks/text.py [--quick] [--threads N]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtx.layers import KVCache  # noqa: E402
from mmtx.models.text import Seq2Seq, from_hf_gpt2  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(fns: dict, repeats: int) -> dict:
    """Median seconds per callable, run interleaved after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def build(args):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    cfg = GPT2Config(vocab_size=args.vocab, n_positions=1024, n_embd=args.dim,
                     n_layer=args.depth, n_head=args.heads, bos_token_id=0, eos_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(cfg).eval()
    return hf, from_hf_gpt2(hf).eval()


def bench_decode(hf, ours, batch, new, prompt, repeats):
    ids = torch.randint(1, hf.config.vocab_size, (batch, prompt))
    out = {}
    with torch.no_grad():
        same = torch.equal(
            ours.generate(ids, new, temperature=0),
            hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                        pad_token_id=0))
        t = side_by_side({
            "mmtx": lambda: ours.generate(ids, new, temperature=0),
            "hf": lambda: hf.generate(ids, max_new_tokens=new, min_new_tokens=new,
                                      do_sample=False, pad_token_id=0),
        }, repeats)
    out = {k: batch * new / v for k, v in t.items()}
    return {"batch": batch, "new_tokens": new, "mmtx_tok_s": out["mmtx"], "hf_tok_s": out["hf"],
            "speedup": out["mmtx"] / out["hf"], "same_tokens": same}


def bench_cache(ours, total, prompt, repeats):
    ids = torch.randint(1, ours.vocab_size, (1, prompt))
    new = total - prompt
    t = side_by_side({
        "cached": lambda: ours.generate(ids, new, temperature=0, use_cache=True),
        "uncached": lambda: ours.generate(ids, new, temperature=0, use_cache=False),
    }, repeats)
    return {"total_tokens": total, "cached_s": t["cached"], "uncached_s": t["uncached"],
            "speedup": t["uncached"] / t["cached"]}


def bench_train(hf, ours, batch, seq, steps):
    ids = torch.randint(0, hf.config.vocab_size, (batch, seq))
    hf.train()
    ours.train()
    opts = {"mmtx": torch.optim.AdamW(ours.parameters(), 1e-4),
            "hf": torch.optim.AdamW(hf.parameters(), 1e-4)}

    def step(name):
        def run():
            if name == "mmtx":
                logits = ours(ids[:, :-1])
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            else:
                loss = hf(ids, labels=ids).loss
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
        return run

    t = side_by_side({"mmtx": step("mmtx"), "hf": step("hf")}, steps)
    hf.eval()
    ours.eval()
    tok = batch * (seq - 1)
    return {"batch": batch, "seq_len": seq, "mmtx_tok_s": tok / t["mmtx"],
            "hf_tok_s": tok / t["hf"], "speedup": t["hf"] / t["mmtx"]}


class _RecomputeContext(KVCache):
    """A cache that forgets the context's keys and values: every step projects them again."""

    context = property(lambda self: None, lambda self, value: None)


def bench_cross_cache(args, batch, src_len, new, repeats):
    torch.manual_seed(0)
    model = Seq2Seq(args.vocab, max_len=max(src_len, new + 1), dim=args.dim, depth=args.depth,
                    num_heads=args.heads, drop_rate=0.0).eval()
    src = torch.randint(3, args.vocab, (batch, src_len))
    stock = model.decoder.new_cache

    def recompute():
        model.decoder.new_cache = lambda: [_RecomputeContext() for _ in stock()]
        try:
            return model.generate(src, new)
        finally:
            model.decoder.new_cache = stock

    with torch.no_grad():
        same = torch.equal(model.generate(src, new), recompute())
        t = side_by_side({"cached": lambda: model.generate(src, new), "recompute": recompute},
                         repeats)
    return {"batch": batch, "src_len": src_len, "new_tokens": new, "cached_s": t["cached"],
            "recompute_s": t["recompute"], "speedup": t["recompute"] / t["cached"],
            "same_tokens": same}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer tokens and repeats (smoke run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "text.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    new, total, reps = (64, 128, 3) if args.quick else (256, 512, 5)
    hf, ours = build(args)

    decode = [bench_decode(hf, ours, b, new, 16, reps) for b in (1, 16)]
    cache = bench_cache(ours, total, 16, max(1, reps // 2))
    train = bench_train(hf, ours, 8 if args.quick else 16, 128 if args.quick else 256, reps)
    cross = bench_cross_cache(args, 8, 64 if args.quick else 256, new // 2, reps)

    print(f"\nGPT config: dim={args.dim} depth={args.depth} heads={args.heads} "
          f"vocab={args.vocab}; torch {torch.__version__}, {args.threads} threads, CPU")
    print(f"\n{'decode (greedy)':<22}{'mmtx tok/s':>12}{'HF tok/s':>12}{'mmtx/HF':>9}"
          f"{'same tokens':>13}")
    for r in decode:
        print(f"{'batch ' + str(r['batch']) + ', ' + str(r['new_tokens']) + ' new':<22}"
              f"{r['mmtx_tok_s']:>12.0f}{r['hf_tok_s']:>12.0f}{r['speedup']:>8.2f}x"
              f"{str(r['same_tokens']):>13}")
    print(f"\n{'KV cache, to ' + str(total) + ' tokens':<22}{'cached s':>12}{'uncached s':>12}"
          f"{'speedup':>9}")
    print(f"{'batch 1':<22}{cache['cached_s']:>12.2f}{cache['uncached_s']:>12.2f}"
          f"{cache['speedup']:>8.1f}x")
    print(f"\n{'training':<22}{'mmtx tok/s':>12}{'HF tok/s':>12}{'mmtx/HF':>9}")
    shape = f"batch {train['batch']} x {train['seq_len']}"
    print(f"{shape:<22}"
          f"{train['mmtx_tok_s']:>12.0f}{train['hf_tok_s']:>12.0f}{train['speedup']:>8.2f}x")

    print(f"\n{'seq2seq greedy':<22}{'cached s':>12}{'recompute s':>12}{'speedup':>9}"
          f"{'same tokens':>13}")
    shape = f"b{cross['batch']}, src {cross['src_len']}, {cross['new_tokens']} new"
    print(f"{shape:<22}{cross['cached_s']:>12.2f}{cross['recompute_s']:>12.2f}"
          f"{cross['speedup']:>8.2f}x{str(cross['same_tokens']):>13}")

    result = {"config": vars(args), "torch": torch.__version__, "machine": platform.machine(),
              "device": "cpu", "decode": decode, "kv_cache": cache, "train": train,
              "seq2seq_cross_cache": cross}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
