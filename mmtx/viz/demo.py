"""Attention by hand: the study material's worked example, step by step, and a heatmap PNG.

    python -m mmtx.viz.demo [--out attention_demo.png]     (or: mmtx demo)

The study material prints wrong numbers for this example; the ones below are computed, and
tests/test_attention.py checks them against values worked out by hand.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from ..layers import scaled_dot_product_attention, sinusoidal_encoding

QUERY = [[0.1, 0.2]]
KEYS = [[0.3, 0.4], [0.1, 0.2], [0.5, 0.6]]
VALUES = [[0.7, 0.8], [0.9, 1.0], [1.1, 1.2]]
SENTENCE = "the cat sat on the mat because it was tired".split()


def _fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{x:.4f}" for x in t.flatten().tolist()) + "]"


def worked_example(verbose: bool = True) -> dict:
    """softmax(q K^T / sqrt(d_k)) V for the material's 1 query, 3 keys, d_k = 2."""
    q, k, v = (torch.tensor(x, dtype=torch.float64) for x in (QUERY, KEYS, VALUES))
    d_k = k.shape[-1]
    scores = q @ k.T  # (1, 3)
    scaled = scores / math.sqrt(d_k)
    weights = scaled.softmax(-1)
    out = weights @ v  # (1, 2)
    lib_out, lib_w = scaled_dot_product_attention(q, k, v, return_weights=True)
    assert torch.allclose(lib_out, out) and torch.allclose(lib_w, weights)  # the library agrees
    if verbose:
        print("Worked example: query q = [0.1, 0.2], d_k = 2")
        for i, key in enumerate(KEYS):
            print(f"  score q.k{i + 1} = 0.1*{key[0]} + 0.2*{key[1]} = {scores[0, i]:.4f}")
        print(f"  scaled scores (/ sqrt(2) = {math.sqrt(2):.4f}): {_fmt(scaled)}")
        print(f"  softmax weights: {_fmt(weights)}  (sum {weights.sum():.4f})")
        print(f"  output = weights @ V: {_fmt(out)}")
    return {"scores": scores, "scaled": scaled, "weights": weights, "output": out}


def sentence_maps(words=SENTENCE, dim: int = 16, seed: int = 0):
    """(bidirectional, causal) self-attention weights (L, L) over a sentence's tokens.

    A toy embedding, no training: each word gets a fixed random vector (repeated words share it),
    "it" is made mostly of "cat"'s vector (the coreference a trained model learns), and a
    sinusoidal position code is added. Queries and keys are the embeddings themselves, so the map
    shows what dot-product attention reads: similar vectors (itself, "the" ~ "the", "it" ~ "cat")
    and, through the position code, nearby tokens.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = {w: 0.9 * torch.randn(dim, generator=g) for w in dict.fromkeys(words)}
    if "it" in vocab and "cat" in vocab:
        vocab["it"] = 0.8 * vocab["cat"] + 0.5 * vocab["it"]
    x = torch.stack([vocab[w] for w in words]) + 0.8 * sinusoidal_encoding(len(words), dim)
    _, both = scaled_dot_product_attention(x, x, x, return_weights=True)
    _, causal = scaled_dot_product_attention(x, x, x, causal=True, return_weights=True)
    return both, causal


def save_heatmaps(out: str | Path, words=SENTENCE) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    both, causal = sentence_maps(words)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), constrained_layout=True)
    for ax, weights, title in zip(axes, (both, causal), ("bidirectional (encoder)",
                                                          "causal (decoder)")):
        im = ax.imshow(weights.numpy(), cmap="viridis", vmin=0, vmax=float(both.max()))
        ax.set_xticks(range(len(words)), words, rotation=60, ha="right")
        ax.set_yticks(range(len(words)), words)
        ax.set_xlabel("key (attended to)")
        ax.set_ylabel("query")
        ax.set_title(f"self-attention weights, {title}")
    fig.colorbar(im, ax=axes, shrink=0.8, label="weight (rows sum to 1)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(out: str | Path = "attention_demo.png") -> Path:
    worked_example()
    path = save_heatmaps(out)
    print(f"\nSaved self-attention heatmaps of '{' '.join(SENTENCE)}' to {path}")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="attention worked example and heatmap PNG")
    parser.add_argument("--out", default="attention_demo.png")
    main(parser.parse_args().out)
