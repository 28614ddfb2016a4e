"""Every task's tiny run, for the multi-process tests (tests/test_dist_tasks.py).

    torchrun --nproc_per_node 2 tests/dist_tasks.py OUT_DIR CASE [CASE ...]
    python tests/dist_tasks.py --processes 1 OUT_DIR CASE ...   (the one-process reference)

trains each CASE into OUT_DIR/CASE with the per-process batch GLOBAL_BATCH / processes, so
the global batch is the same whatever the number of processes. The test compares the runs'
metrics.jsonl, summary.json and model.safetensors; this script asserts nothing, so no
process stops early and leaves the other waiting in a collective.

Dropout is off in every model: dropout masks come from the global RNG, seeded per process
(the engine's `_seed_step`), so they differ between one and two processes. Every other draw
(diffusion times and noise, condition drop, MLM masks, foils, augmentation) is per item and
the same either way.

It cannot outlive its test: it dies with its parent (PR_SET_PDEATHSIG on Linux) and after
ALARM_S seconds whatever happens.
"""

from __future__ import annotations

import os
import sys

from procs import die_with_parent

GLOBAL_BATCH = 16
ALARM_S = 240
NO_DROP = {"drop_rate": 0.0, "attn_drop_rate": 0.0}
SHAPES = {"image_size": 16, "num_samples": {"train": 64, "val": 37, "test": 37}}
TEXT_LM = {"name": "text_lm", "args": {"level": "word", "seq_len": 12, "num_sentences": 300}}
VL = {"dim": 16, "depth": 1, "num_heads": 2, **NO_DROP}
GEN = {"model": {"name": "dit_micro_4", "args": {"patch_size": 4, "dim": 32, "depth": 1,
                                                 "num_heads": 2}},
       "task_args": {"judge": False, "grid": 4, "sample_steps": 2, "cfg_scale": 2.0,
                     "cond_drop": 0.3, "prediction": "x0"}}

# a judge that trains in about a second: its metrics are computed, not meaningful
TINY_JUDGE = {"train_samples": 256, "test_samples": 128, "epochs": 1, "batch_size": 64}

# name: (model, data, task); every case trains the same steps (below)
CASES = {
    "classification": (
        {"name": "vit_tiny_patch4_32", "args": {"dim": 16, "depth": 1, "num_heads": 2,
                                                **NO_DROP}},
        {"name": "shapes", "args": {"task": "shape", **SHAPES}, "augment": "light"},
        {"name": "classification"}),
    "causal_lm": (
        {"name": "gpt_tiny", "args": {"dim": 16, "depth": 1, "num_heads": 2, **NO_DROP}},
        TEXT_LM, {"name": "causal_lm", "args": {"sample_tokens": 4}}),
    "masked_lm": (
        {"name": "bert_tiny", "args": {"dim": 16, "depth": 1, "num_heads": 2, "max_len": 16,
                                       **NO_DROP}},
        TEXT_LM, {"name": "masked_lm", "args": {"mask_prob": 0.3}}),
    "seq2seq": (
        {"name": "seq2seq_tiny", "args": {"dim": 16, "depth": 1, "num_heads": 2, **NO_DROP}},
        {"name": "seq2seq_synth", "args": {"num_samples": 64, "max_len": 5}},
        {"name": "seq2seq"}),
    "captioning": (
        {"name": "captioner_tiny_patch4_32", "args": {**VL, "text_depth": 1}},
        {"name": "shapes", "args": {"task": "caption", **SHAPES}},
        {"name": "captioning", "args": {"max_len": 16}}),
    "contrastive_hard_negatives": (
        {"name": "clip_tiny_patch4_32", "args": {**VL, "text_dim": 16, "text_depth": 1,
                                                 "embed_dim": 16}},
        {"name": "shapes", "args": {"task": "caption",
                                    "return_foils": ["swap_attributes"], **SHAPES}},
        {"name": "contrastive", "args": {"max_len": 16, "hard_negatives": ["swap_attributes"],
                                         "zero_shot_images": 16}}),
    "generation_class_ema": (
        GEN["model"], {"name": "shapes", "args": {"task": "shape_colour", **SHAPES}},
        {"name": "generation", "args": {"cond": "class", **GEN["task_args"], "eval_samples": 16,
                                        "judge": TINY_JUDGE}}),
    "generation_caption_ema": (
        {**GEN["model"], "args": {**GEN["model"]["args"], "text_dim": 16, "text_depth": 1,
                                  "text_heads": 2}},
        {"name": "shapes", "args": {"task": "shape", **SHAPES}},
        {"name": "generation", "args": {"cond": "caption", **GEN["task_args"]}}),
}


# the same tiny DiT, by strategy (EMA off: "fsdp" refuses it); run on GPUs only
for strategy in ("ddp", "fsdp"):
    CASES[f"dit_{strategy}"] = CASES["generation_class_ema"]
STRATEGY = {"dit_ddp": "ddp", "dit_fsdp": "fsdp"}


def config(case: str, processes: int) -> dict:
    model, data, task = CASES[case]
    return {"model": model,
            "data": {"augment": False, **data, "batch_size": GLOBAL_BATCH // processes},
            "task": task,
            "optim": {"lr": 3e-3, "warmup_steps": 2, "clip_grad": 1.0},
            "train": {"max_steps": 6, "log_every": 1, "eval_every": 3, "seed": 0, "threads": 1,
                      "ema": 0.9 if case.startswith("generation") else None,
                      "strategy": STRATEGY.get(case, "ddp")},
            "logging": {"progress": False}}


def main(argv) -> int:
    die_with_parent(ALARM_S)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if argv[0] == "--processes":
        processes, argv = int(argv[1]), argv[2:]
    out, cases = argv[0], argv[1:]
    from mmtx.train import train

    for case in cases:
        train(config(case, processes), run_dir=os.path.join(out, case))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
