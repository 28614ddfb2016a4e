"""Decoding helpers shared by the text models: logit filtering, sampling, beam search."""

from __future__ import annotations

from collections.abc import Callable

import torch


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Set every logit outside the top-k / nucleus (top-p) set to -inf. logits (B, V).

    The nucleus is the smallest set of most likely tokens whose probability reaches top_p; the
    most likely token is always kept, so no row is left empty.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens ranked above it already reach top_p.
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None):
    """logits (B, V) -> next token ids (B,). temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def beam_search(step: Callable, reorder: Callable, start: torch.Tensor, beam_width: int,
                max_new_tokens: int, eos_id: int | None, length_penalty: float = 1.0):
    """Generic beam search over `beam_width` beams per batch row.

    start (B * K, 1): the first token of every beam (rows b*K ... b*K + K-1 belong to batch b).
    step(tokens (B*K, 1)) -> log-probs (B*K, V) of the next token (the caller keeps its cache).
    reorder(index (B*K,)) makes the caller's cache follow the surviving beams.
    A finished beam (it produced eos) can only extend with eos at no cost, so it keeps its score;
    beams are ranked by score / length ** length_penalty. Returns (B, 1 + new) tokens, the best
    beam per row. With beam_width 1 this is greedy decoding.
    """
    BK, K = start.shape[0], beam_width
    B = BK // K
    device = start.device
    scores = torch.zeros(B, K, device=device)
    scores[:, 1:] = float("-inf")  # all beams start equal: let only the first one expand
    lengths = torch.zeros(B, K, device=device)
    finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    tokens, last = start, start
    for _ in range(max_new_tokens):
        logp = step(last).float()  # (B*K, V)
        V = logp.shape[-1]
        logp = logp.view(B, K, V)
        if eos_id is not None:
            frozen = torch.full_like(logp, float("-inf"))
            frozen[..., eos_id] = 0.0
            logp = torch.where(finished[..., None], frozen, logp)
        total = (scores[..., None] + logp).view(B, K * V)  # (B, K*V)
        scores, flat = total.topk(K, dim=-1)  # (B, K)
        beam, tok = flat // V, flat % V
        index = (beam + torch.arange(B, device=device)[:, None] * K).view(-1)  # (B*K,)
        reorder(index)
        lengths = lengths.gather(1, beam) + (~finished.gather(1, beam)).float()
        finished = finished.gather(1, beam)
        if eos_id is not None:
            finished = finished | (tok == eos_id)
        last = tok.view(BK, 1)
        tokens = torch.cat([tokens[index], last], dim=1)  # (B*K, t + 1)
        if finished.all():
            break
    ranked = scores / lengths.clamp(min=1) ** length_penalty  # (B, K)
    best = ranked.argmax(-1) + torch.arange(B, device=device) * K  # (B,)
    return tokens[best]
