"""How a run spreads its model over processes: `train.strategy`.

- "ddp" (default): every process holds the whole model; gradients are averaged (Accelerate's
  DistributedDataParallel on GPUs, gloo on CPU).
- "fsdp": FSDP2 (`torch.distributed.fsdp.fully_shard`) through Accelerate's FSDP plugin:
  weights, gradients and optimizer state sharded over the processes, each `mmtx.layers.Block`
  gathered only while it runs, for models that do not fit one GPU.

Accelerate applies its FSDP plugin to GPU runs only: with CPU processes its state stays
MULTI_CPU and the model is wrapped in DDP whatever the plugin says (accelerate 1.16,
`AcceleratorState.__init__`). So "fsdp" where Accelerate does not shard is refused before
training instead of running as something else.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch.nn as nn

STRATEGIES = ("ddp", "fsdp")
SHARD_UNIT = "Block"  # mmtx.layers.blocks.Block: every transformer in the package stacks it


def accelerator_kwargs(strategy: str) -> dict:
    """Keywords for `Accelerator(...)`: the FSDP2 plugin for "fsdp", nothing for "ddp"."""
    if strategy != "fsdp":
        return {}
    from accelerate import FullyShardedDataParallelPlugin

    return {"fsdp_plugin": FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[SHARD_UNIT], reshard_after_forward=True,
        state_dict_type="SHARDED_STATE_DICT")}


def check_strategy(strategy: str, accelerator, model: nn.Module, ema: float | None) -> None:
    """Refuse, before training, an "fsdp" run that would not be sharded or cannot be."""
    if strategy != "fsdp":
        return
    kind = accelerator.distributed_type.value
    if kind != "FSDP":
        raise ValueError(
            f"train.strategy 'fsdp': Accelerate shards GPU runs only, and this run is {kind} "
            f"with {accelerator.num_processes} process(es) on {accelerator.device.type}; "
            f"use train.strategy ddp (the default) here")
    if not any(type(m).__name__ == SHARD_UNIT for m in model.modules()):
        raise ValueError(f"train.strategy 'fsdp' shards a model block by block "
                         f"(mmtx.layers.{SHARD_UNIT}); {type(model).__name__} has none: use "
                         f"train.strategy ddp")
    if ema is not None:
        raise ValueError("train.ema with train.strategy 'fsdp': the EMA copy would be a whole "
                         "unsharded model on every GPU; set train.ema null or use ddp")


@contextmanager
def fsdp_env_restored():
    """Given the FSDP plugin, Accelerate sets ACCELERATE_USE_FSDP=true in os.environ, and every
    later Accelerator of the process (the next run of a study, a test) would read it and shard
    too: the variable is put back as it was after the block."""
    key = "ACCELERATE_USE_FSDP"
    before = os.environ.get(key)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
