"""Per-item draws (mmtx/train/draws.py): SplitMix64 against a hand reference, both backends give
an item the same numbers whatever batch it is in, with the right distributions; the diffusion
objectives' times from uniforms follow `sample_t`'s distribution."""

import pytest
import torch

from mmtx.diffusion import create_objective
from mmtx.train.draws import ItemDraws, splitmix64

M = 2**64


def _reference(seed: int, j: int) -> int:
    """SplitMix64's j-th output (j >= 1) from `seed`, in Python integers."""
    z = (seed + j * 0x9E3779B97F4A7C15) % M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M
    return z ^ (z >> 31)


def test_splitmix64_matches_the_reference():
    assert _reference(1234567, 1) == 6457827717110365317  # the published first output
    seeds = [0, 1, 1234567, 2**62 + 12345, 2**63 - 1]
    bits = ItemDraws(torch.tensor(seeds), counter=True)._bits(4)  # stream 0: values 1..4
    for i, s in enumerate(seeds):
        assert [b % M for b in bits[i].tolist()] == [_reference(s, j) for j in range(1, 5)]
    assert splitmix64(torch.tensor([5])).item() % M == _reference(5, 0)


@pytest.mark.parametrize("counter", [False, True])
def test_an_item_draws_the_same_in_any_batch(counter):
    seeds = torch.tensor([11, 22, 33, 44]) * 1_000_003
    whole, part = ItemDraws(seeds, counter), ItemDraws(seeds[[2, 0]], counter)
    for draw in ("uniform", "normal"):
        a, b = getattr(whole, draw)(3, 5), getattr(part, draw)(3, 5)
        assert a.shape == (4, 3, 5) and torch.equal(a[[2, 0]], b)
    assert not torch.equal(whole.uniform(4)[0], whole.uniform(4)[0])  # each call a new stream


@pytest.mark.parametrize("counter", [False, True])
def test_distributions(counter):
    d = ItemDraws(torch.arange(64) * 7919 + 3, counter)
    u, z = d.uniform(4096), d.normal(4096)  # 262,144 values each
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.003
    assert abs(u.var() - 1 / 12) < 0.001
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs((z.abs() < 1.96).float().mean() - 0.95) < 0.003


@pytest.mark.parametrize("name, kw", [("flow", {"timestep_sampling": "logit_normal",
                                                "loc": 1.0}),
                                      ("flow", {"timestep_sampling": "uniform"}),
                                      ("ddpm", {"num_steps": 50})])
def test_times_from_uniforms_follow_sample_t(name, kw):
    objective = create_objective(name, **kw)
    n = 40_000
    ours = objective.t_from_uniform(ItemDraws(torch.arange(n), True).uniform())
    theirs = objective.sample_t(n, generator=torch.Generator().manual_seed(0))
    assert ours.dtype == theirs.dtype  # float times, or integer DDPM steps
    ours, theirs = ours.float(), theirs.float()
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    span = float(theirs.max() - theirs.min())
    assert (ours.quantile(q) - theirs.quantile(q)).abs().max() < 0.02 * span
