"""Random numbers per item, from the item seeds the loaders put in every batch (data.py).

A task's per-item draws (diffusion times and noise, guidance's condition drop, MLM masks) come
from here, so an item draws the same whichever process or batch it lands in: N processes with
batches of B / N train as one with B.

Two ways to the same property, by device:
- CPU: one torch.Generator per item, seeded with its seed (a loop over the items: ~1 ms for 32
  items of 3 x 32 x 32, where the counter below costs ~10x more on one core);
- elsewhere (GPUs): SplitMix64 (Steele, Lea & Flood 2014; it passes BigCrush) evaluated as a
  counter, value j of an item's stream k being mix(seed + (k * 2^40 + j + 1) * golden): every
  item and value at once in int64 tensor arithmetic on the device, with no per-item loop and no
  copy from the CPU. Uniforms keep the top 24 bits (float32's mantissa); normals are Box-Muller
  pairs of them (so none lies beyond 5.9 sigma).
The numbers differ between the two; each is the same for an item wherever it lands.
"""

from __future__ import annotations

import math

import torch

_GOLDEN = 0x9E3779B97F4A7C15 - 2**64  # the uint64 constants as the int64 with the same bits
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> keeps the sign bit)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64(state: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function on int64 states (uint64 bits; products wrap mod 2^64)."""
    z = (state ^ _shr(state, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


class ItemDraws:
    """Draws for the items of one batch, (B, *shape) each, on the seeds' device. Each call takes
    the next stream, so a task that calls in a fixed order gets the same numbers for an item
    every time it meets it. `counter`: SplitMix64 counters (default: off on the CPU)."""

    def __init__(self, seeds: torch.Tensor, counter: bool | None = None):
        if seeds.dim() != 1 or seeds.dtype != torch.int64:
            raise ValueError(f"item seeds must be int64 (B,), got {seeds.dtype} "
                             f"{tuple(seeds.shape)}")
        self.seeds, self.stream = seeds, 0
        self.counter = seeds.device.type != "cpu" if counter is None else counter
        self.generators = None if self.counter else [
            torch.Generator().manual_seed(s) for s in seeds.tolist()]

    def _bits(self, n: int) -> torch.Tensor:
        j = torch.arange(1, n + 1, device=self.seeds.device, dtype=torch.int64)
        j = j + (self.stream << 40)
        self.stream += 1
        return splitmix64(self.seeds[:, None] + j[None] * _GOLDEN)  # (B, n)

    def _per_item(self, draw, shape) -> torch.Tensor:
        return torch.stack([draw(shape, generator=g) for g in self.generators]).to(
            self.seeds.device)

    def uniform(self, *shape: int) -> torch.Tensor:
        """(B, *shape) float32 in (0, 1) (the CPU generators' may be 0)."""
        if not self.counter:
            return self._per_item(torch.rand, shape)
        u = (_shr(self._bits(math.prod(shape)), 40).float() + 0.5) / 2**24  # (B, n)
        return u.reshape(len(self.seeds), *shape)

    def normal(self, *shape: int) -> torch.Tensor:
        """(B, *shape) float32 standard normal."""
        if not self.counter:
            return self._per_item(torch.randn, shape)
        n = math.prod(shape)
        u = self.uniform(2, n)  # (B, 2, n)
        z = torch.sqrt(-2 * torch.log(u[:, 0])) * torch.cos(2 * math.pi * u[:, 1])  # (B, n)
        return z.reshape(len(self.seeds), *shape)
