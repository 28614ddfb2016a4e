"""torchrun --standalone --nproc_per_node 2 tests/dist_contrastive.py OUT.json

Each process computes clip_loss on its own rows of one global batch (gloo, CPU) and, as the
reference, the single-process loss over the whole batch. It records the largest differences:
loss, the feature gradients (each process's gradient rows put in a global tensor and summed
over processes with all_reduce; divided by the world size when the loss ran with
ddp_average=True, which is what DDP's averaging does) and logit_scale's gradient (averaged over
processes, as DDP does). The pytest in test_contrastive.py reads OUT.json and judges; this
script asserts nothing, so no process stops early and leaves the other waiting in a collective.

It cannot outlive its test: it dies with its parent (PR_SET_PDEATHSIG on Linux) and after
ALARM_S seconds whatever happens.
"""

import datetime
import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from procs import die_with_parent

import mmtx.eval  # noqa: F401  (checked below: it loads neither mmtx.train nor experiments)
from mmtx.models.contrastive import clip_loss, gather_features, logit_scale_from, logit_scale_param

ALARM_S = 150
CASES = {  # name: (rows per process, hard negatives, mask on them, ddp_average)
    "even": ((4, 4), False, False, False),
    "uneven_hard_masked": ((5, 3), True, True, False),
    "uneven_hard_ddp_average": ((3, 5), True, False, True),
    "even_masked_ddp_average": ((4, 4), True, True, True),
}


def _global_batch(n: int, d: int = 16):
    g = torch.Generator().manual_seed(n)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(img + 0.8 * torch.randn(n, d, generator=g), dim=-1)
    foil = F.normalize(txt + 0.3 * torch.randn(n, d, generator=g), dim=-1)
    mask = torch.rand(n, generator=g) < 0.6
    mask[0], mask[-1] = True, False
    return img, txt, foil, mask


def _case(rank: int, world: int, sizes, hard: bool, masked: bool, ddp_average: bool) -> dict:
    n = sum(sizes)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    img, txt, foil, mask = _global_batch(n)
    names = ["image", "text"] + (["foil"] if hard else [])

    ref_leaves = [t.clone().requires_grad_() for t in (img, txt, foil)[: len(names)]]
    ref_scale = logit_scale_param()
    ref = clip_loss(ref_leaves[0], ref_leaves[1], logit_scale_from(ref_scale),
                    hard_negatives=ref_leaves[2] if hard else None,
                    hard_negative_mask=mask if masked else None, gather=False)
    ref.backward()

    leaves = [t[start:stop].clone().requires_grad_() for t in (img, txt, foil)[: len(names)]]
    scale = logit_scale_param()
    loss = clip_loss(leaves[0], leaves[1], logit_scale_from(scale),
                     hard_negatives=leaves[2] if hard else None,
                     hard_negative_mask=mask[start:stop] if masked else None,
                     ddp_average=ddp_average)
    loss.backward()

    grad_err = {}
    for name, leaf, ref_leaf in zip(names, leaves, ref_leaves):
        full = torch.zeros_like(ref_leaf)  # (N, D): this process's contribution
        full[start:stop] = leaf.grad
        dist.all_reduce(full)  # sum over processes
        if ddp_average:
            full /= world
        grad_err[name] = (full - ref_leaf.grad).abs().max().item()
    scale_grad = scale.grad.clone()
    dist.all_reduce(scale_grad)
    scale_grad /= world  # DDP averages the shared parameter's gradient
    losses = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(losses, loss.detach().reshape(1))
    return {"loss": loss.item(), "reference_loss": ref.item(),
            "loss_err": max(abs(x.item() - ref.item()) for x in losses),
            "grad_err": grad_err,
            "logit_scale_grad_err": abs(scale_grad.item() - ref_scale.grad.item()),
            "logit_scale_grad": ref_scale.grad.item()}


def _gather_check(rank: int, world: int) -> dict:
    sizes = [2 + r for r in range(world)]  # uneven on purpose
    full = torch.arange(sum(sizes) * 3, dtype=torch.float32).reshape(-1, 3)
    start = sum(sizes[:rank])
    x = full[start : start + sizes[rank]].clone().requires_grad_()
    gathered, offset = gather_features(x)
    gathered.sum().backward()
    ok = (torch.equal(gathered.detach(), full) and offset == start
          and torch.equal(x.grad, torch.ones_like(x)))
    flag = torch.tensor([0.0 if ok else 1.0])
    dist.all_reduce(flag)
    return {"ok": flag.item() == 0}


def main(argv) -> int:
    die_with_parent(ALARM_S)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        results = {name: _case(rank, world, *spec) for name, spec in CASES.items()}
        results["gather_features"] = _gather_check(rank, world)
        results["world_size"] = world
        results["layering_violations"] = sorted(
            m for m in sys.modules if m.startswith(("mmtx.train", "mmtx.experiments")))
        if rank == 0:
            with open(argv[0], "w") as f:
                json.dump(results, f, indent=1)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
