"""Vision-language speed: mmtx `CLIP` vs open_clip and Hugging Face CLIP at one configuration with
copied weights, and the `ImageCaptioner`'s cached vs uncached decoding.

Rows (medians over repeats, the peers interleaved step by step so that load from other
processes on a shared machine hits all alike; process CPU time is recorded next to wall time):
  1. CLIP training step, images/s (both encoders, the symmetric contrastive loss, backward,
     AdamW step), fp32 and bf16 autocast: mmtx `CLIP.loss`, open_clip's `ClipLoss`, HF
     `CLIPModel(..., return_loss=True)`;
  2. encode throughput (inference mode): images/s through `encode_image`, texts/s through
     `encode_text`, fp32 and bf16;
  3. captioner greedy and beam decoding, tokens/s, with the KV cache (the patch tokens'
     cross-attention keys and values projected once per image) and without (every step runs
     the whole prefix again).
One config for the three CLIPs, by default clip_tiny_patch4_32's shape (the study's model; on a
CPU without native bf16, bf16 autocast runs far slower than fp32, which bounds the sizes worth
timing here): open_clip.CLIP from that config (GELU), its weights copied
into mmtx with `from_open_clip`; an HF `CLIPModel` of the same shape (hidden_act "gelu"), checked
against its own `from_hf_clip` copy. Text is given as full-length ids without a padding mask,
which is what open_clip takes.

    python benchmarks/vision_language.py --threads 1          # what the report quotes
    python benchmarks/vision_language.py --quick --threads 1  # a smoke run (about a minute)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtx.models import create_model  # noqa: E402
from mmtx.models.clip import from_hf_clip, from_open_clip  # noqa: E402

PEERS = ("mmtx", "open_clip", "hf")


def _autocast(bf16: bool, device: str):
    return torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t, time.process_time() - c


def interleaved(fns: dict, reps: int, warmup: int, device: str) -> dict:
    """Median (wall, cpu) seconds per callable. Every timed call follows an untimed one of the
    same callable: the first call after a switch pays for the previous one's cache state."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            fn()
            times[k].append(timed(fn, device))
    return {k: (statistics.median(t for t, _ in v), statistics.median(c for _, c in v))
            for k, v in times.items()}


def build_clips(args):
    import open_clip
    from transformers import CLIPConfig, CLIPModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    oc = open_clip.CLIP(
        args.embed, dict(layers=args.depth, width=args.dim, head_width=args.dim // args.heads,
                         patch_size=args.patch, image_size=args.img),
        dict(context_length=args.ctx, vocab_size=args.vocab, width=args.text_dim,
             heads=args.heads, layers=args.text_depth), quick_gelu=False)
    hf = CLIPModel(CLIPConfig(
        vision_config=dict(hidden_size=args.dim, intermediate_size=4 * args.dim,
                           num_hidden_layers=args.depth, num_attention_heads=args.heads,
                           image_size=args.img, patch_size=args.patch, hidden_act="gelu"),
        text_config=dict(vocab_size=args.vocab, hidden_size=args.text_dim,
                         intermediate_size=4 * args.text_dim, num_hidden_layers=args.text_depth,
                         num_attention_heads=args.heads, max_position_embeddings=args.ctx,
                         hidden_act="gelu", eos_token_id=args.vocab - 1),
        projection_dim=args.embed))
    ours = from_open_clip(oc)
    x = torch.randn(4, 3, args.img, args.img)
    ids = torch.randint(1, args.vocab, (4, args.ctx))
    with torch.no_grad():  # the copies compute what their sources do
        hf_copy = from_hf_clip(hf.eval())
        agree = {
            "open_clip": max(
                (ours.eval().encode_image(x) - oc.eval().encode_image(x, True)).abs().max().item(),
                (ours.encode_text(ids) - oc.encode_text(ids, True)).abs().max().item()),
            "hf": max((hf_copy.encode_image(x, False) - _pool(hf.get_image_features(
                pixel_values=x))).abs().max().item(),
                (hf_copy.encode_text(ids, normalize=False) - _pool(hf.get_text_features(
                    input_ids=ids))).abs().max().item()),
        }
    return {"mmtx": ours, "open_clip": oc, "hf": hf}, agree


def _pool(out):  # transformers >= 5 returns an output object, older versions the tensor
    return getattr(out, "pooler_output", out)


class ClipRunner:
    """One library's CLIP: a training step and the two encoders, on fixed inputs."""

    def __init__(self, name: str, model, batch: int, args, device: str):
        import open_clip

        self.name, self.model, self.device = name, model.to(device), device
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, 3, args.img, args.img, generator=g).to(device)
        self.ids = torch.randint(1, args.vocab, (batch, args.ctx), generator=g).to(device)
        self.oc_loss = open_clip.ClipLoss()

    def loss(self):
        m, x, ids = self.model, self.x, self.ids
        if self.name == "mmtx":
            return m.loss(*m(x, ids))
        if self.name == "open_clip":
            return self.oc_loss(*m(x, ids))
        return m(input_ids=ids, pixel_values=x, return_loss=True).loss

    def train_step(self, bf16: bool) -> None:
        self.model.train()
        with _autocast(bf16, self.device):
            loss = self.loss()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def encode(self, what: str, bf16: bool) -> None:
        m = self.model.eval()
        with _autocast(bf16, self.device):
            if self.name == "hf":
                m.get_image_features(pixel_values=self.x) if what == "image" else \
                    m.get_text_features(input_ids=self.ids)
            else:
                m.encode_image(self.x) if what == "image" else m.encode_text(self.ids)


def bench_clip(args, batch, reps, warmup, device, precisions):
    models, agree = build_clips(args)
    runners = {n: ClipRunner(n, m, batch, args, device) for n, m in models.items()}
    rows = []
    for bench, unit in (("train", "images"), ("encode_image", "images"),
                        ("encode_text", "texts")):
        for prec in precisions:
            bf16 = prec == "bf16"
            if bench == "train":
                fns = {n: (lambda r=r, b=bf16: r.train_step(b)) for n, r in runners.items()}
            else:
                what = bench.split("_")[1]
                fns = {n: (lambda r=r, w=what, b=bf16: r.encode(w, b))
                       for n, r in runners.items()}
            t = interleaved(fns, reps, warmup, device)
            for n, (wall, cpu) in t.items():
                rows.append(dict(bench=bench, precision=prec, model=n, unit=unit,
                                 per_s=batch / wall, per_cpu_s=batch / cpu, median_s=wall))
    return rows, agree


def bench_decode(args, reps, warmup, device):
    torch.manual_seed(0)
    model = create_model("captioner_tiny_patch4_32", max_len=args.cap_len).to(device).eval()
    images = torch.randn(args.cap_batch, 3, 32, 32, device=device)
    new = args.cap_len - 1
    rows = []
    for beam in (1, 3):
        def run(cache, beam=beam):
            return model.generate(images, new, beam, use_cache=cache, stop_at_eos=False)

        with torch.inference_mode():
            same = torch.equal(run(True), run(False))
            t = interleaved({"cached": lambda: run(True), "uncached": lambda: run(False)},
                            max(1, reps // 2), 1, device)
        tokens = args.cap_batch * new
        rows.append(dict(beam=beam, batch=args.cap_batch, new_tokens=new, same_tokens=same,
                         cached_tok_s=tokens / t["cached"][0],
                         uncached_tok_s=tokens / t["uncached"][0],
                         speedup=t["uncached"][0] / t["cached"][0]))
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller batch, fewer repeats")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--img", type=int, default=32)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--dim", type=int, default=128, help="vision width")
    p.add_argument("--depth", type=int, default=4, help="vision depth")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--text-dim", type=int, default=128)
    p.add_argument("--text-depth", type=int, default=2)
    p.add_argument("--ctx", type=int, default=32, help="text context length")
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--cap-batch", type=int, default=16)
    p.add_argument("--cap-len", type=int, default=32)
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (1 avoids OpenMP spin-wait stalls on a shared machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                        "vision_language.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (16 if args.quick else 32)
    reps = args.reps or (3 if args.quick else 5)
    warmup = 1 if args.quick else 2
    if args.quick:
        args.depth, args.text_depth = min(args.depth, 2), min(args.text_depth, 2)

    clip_rows, agree = bench_clip(args, batch, reps, warmup, args.device, args.precisions)
    decode_rows = bench_decode(args, reps, warmup, args.device)

    def per_s(bench, prec, model, key="per_s"):
        return next(r[key] for r in clip_rows
                    if (r["bench"], r["precision"], r["model"]) == (bench, prec, model))

    ratios = [dict(bench=b, precision=pr, peer=peer,
                   ratio=per_s(b, pr, "mmtx") / per_s(b, pr, peer),
                   cpu_time_ratio=(per_s(b, pr, "mmtx", "per_cpu_s")
                                   / per_s(b, pr, peer, "per_cpu_s")))
              for b in ("train", "encode_image", "encode_text") for pr in args.precisions
              for peer in ("open_clip", "hf")]

    print(f"device {args.device} ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; batch {batch}, "
          f"{reps} reps (median)")
    print(f"CLIP: ViT img {args.img} patch {args.patch} dim {args.dim} depth {args.depth} "
          f"heads {args.heads}; text ctx {args.ctx} dim {args.text_dim} depth {args.text_depth}"
          f"; embed {args.embed}; max |difference| of embeddings vs mmtx copy: open_clip "
          f"{agree['open_clip']:.1e}, HF {agree['hf']:.1e}")
    print(f"\n{'CLIP':<14}{'prec':<6}" + "".join(f"{n + ' /s':>13}" for n in PEERS)
          + f"{'vs open_clip':>14}{'vs HF':>8}{'(cpu-time)':>12}")
    for b in ("train", "encode_image", "encode_text"):
        for pr in args.precisions:
            r_oc, r_hf = (next(r for r in ratios if (r["bench"], r["precision"], r["peer"])
                               == (b, pr, peer)) for peer in ("open_clip", "hf"))
            print(f"{b:<14}{pr:<6}" + "".join(f"{per_s(b, pr, n):>13.1f}" for n in PEERS)
                  + f"{r_oc['ratio']:>13.2f}x{r_hf['ratio']:>7.2f}x"
                  f"{r_oc['cpu_time_ratio']:>6.2f}/{r_hf['cpu_time_ratio']:.2f}")
    print(f"\n{'captioner decoding':<22}{'cached tok/s':>14}{'uncached tok/s':>16}{'speedup':>9}"
          f"{'same tokens':>13}")
    for r in decode_rows:
        what = f"beam {r['beam']}, b{r['batch']}, {r['new_tokens']} new"
        print(f"{what:<22}{r['cached_tok_s']:>14.1f}{r['uncached_tok_s']:>16.1f}"
              f"{r['speedup']:>8.2f}x{str(r['same_tokens']):>13}")

    result = dict(device=args.device, threads=torch.get_num_threads(), torch=torch.__version__,
                  machine=platform.machine(), batch=batch, reps=reps, config=vars(args),
                  embedding_max_abs_diff=agree, clip=clip_rows, ratios=ratios,
                  captioner_decoding=decode_rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
