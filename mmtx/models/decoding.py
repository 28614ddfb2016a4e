"""Decoding shared by the text generators: logit filtering, sampling, beam search, and the one
decoding loop (`decode` over a `DecodeState`) behind TextDecoder, Seq2Seq and the captioner."""

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


class DecodeState:
    """The rows being decoded: their tokens so far, positions, padding mask and KV cache.

    `run(ids, attention_mask, positions, cache, **row_inputs) -> logits (rows, V)` runs a model
    on the tokens the cache has not seen (all tokens when `cache` is None: decoding without a
    cache recomputes the whole sequence at every step) and returns the next token's logits.
    ids (B, L) is the prompt, left-padded when `attention_mask` (B, L) has zeros; positions
    then count real tokens, so each row's first real token is at position 0. `row_inputs` are
    per-row tensors the model reads at every step (a cross-attention context and its mask).
    """

    def __init__(self, run: Callable, ids: torch.Tensor, attention_mask=None, cache=None,
                 **row_inputs):
        B, L = ids.shape
        self.run, self.cache, self.rows = run, cache, row_inputs
        self.ids, self.mask = ids, attention_mask
        self.positions = (torch.arange(L, device=ids.device).expand(B, -1) if attention_mask is None
                          else (attention_mask.long().cumsum(-1) - 1).clamp(min=0))  # (B, L)
        self.unseen = L  # trailing tokens the cache has not seen yet

    def logits(self) -> torch.Tensor:
        """Run the model on what it has not seen; logits (rows, V) of the next token."""
        n = self.ids.shape[1] if self.cache is None else self.unseen
        self.unseen = 0
        return self.run(self.ids[:, -n:], self.mask, self.positions[:, -n:], self.cache,
                        **self.rows)

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token (rows,) to every row."""
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)  # (rows, t + 1)
        self.positions = torch.cat([self.positions, self.positions[:, -1:] + 1], dim=1)
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        self.unseen += 1

    def select(self, index: torch.Tensor, new_rows: bool = False) -> None:
        """Keep rows `index` (beam search: the surviving beams). `new_rows` also selects the
        per-row inputs and the cached context keys and values (expanding a batch to its beams);
        later reorders need not, since a beam never leaves its batch row and the K beams of a
        row share one context."""
        self.ids, self.positions = self.ids[index], self.positions[index]
        if self.mask is not None:
            self.mask = self.mask[index]
        if new_rows:
            self.rows = {k: v[index] if isinstance(v, torch.Tensor) else v
                         for k, v in self.rows.items()}
        for c in self.cache or ():
            if new_rows:
                c.reorder(index)
            else:  # set the context aside: selecting it would copy it for nothing
                context, c.context = c.context, None
                c.reorder(index)
                c.context = context


def decode(state: DecodeState, max_new_tokens: int, *, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
           generator: torch.Generator | None = None, beam_width: int = 1,
           length_penalty: float = 1.0) -> torch.Tensor:
    """The decoding loop of every mmtx text generator: new tokens (B, T), T <= max_new_tokens.

    beam_width 1 samples (temperature 0: greedy); once a row produces `eos_id` it is filled with
    eos_id, and decoding stops when every row has. Wider beams run `beam_search` (temperature,
    top_k and top_p do not apply) after one pass over the prompt for the B rows, whose cache is
    then copied to the K beams: the prompt and the context are projected once per row.
    """
    B = state.ids.shape[0]
    if max_new_tokens == 0:
        return state.ids.new_zeros(B, 0)
    if beam_width == 1:
        new, done = [], torch.zeros(B, dtype=torch.bool, device=state.ids.device)
        for t in range(max_new_tokens):
            if t:
                state.append(new[-1])
            nxt = sample_next(state.logits(), temperature, top_k, top_p, generator)
            if eos_id is not None:
                nxt = nxt.masked_fill(done, eos_id)
                done = done | (nxt == eos_id)
            new.append(nxt)
            if eos_id is not None and bool(done.all()):
                break
        return torch.stack(new, dim=1)

    K = beam_width
    first = [state.logits().float().log_softmax(-1)]  # (B, V), one pass over each prompt
    expand = torch.arange(B, device=state.ids.device).repeat_interleave(K)  # (B*K,)
    state.select(expand, new_rows=True)
    first[0] = first[0][expand]  # (B*K, V); beam_search lets only the first beam expand

    def step(tokens):  # tokens (B*K, 1): the last token of every beam
        if first:
            return first.pop()
        state.append(tokens[:, -1])
        return state.logits().float().log_softmax(-1)

    start = state.ids[:, -1:]  # (B*K, 1), a placeholder first column, dropped below
    return beam_search(step, state.select, start, K, max_new_tokens, eos_id, length_penalty)[:, 1:]


def trim_finished(tokens: torch.Tensor, eos_id: int, start: int) -> torch.Tensor:
    """Drop the columns after the one where every row's decoded part (from column `start`)
    has produced eos_id: what decoding that stops early returns."""
    hit = tokens[:, start:] == eos_id  # (B, T)
    if not hit.numel() or not bool(hit.any(1).all()):
        return tokens
    return tokens[:, :start + int(hit.int().argmax(1).max()) + 1]
