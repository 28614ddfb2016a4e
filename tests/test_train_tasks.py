"""The engine runs any task: a task that is not classification, with its own collate (the
default one cannot stack its variable-length items), its own metrics and artefacts."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmtx.data import collate
from mmtx.train import Task, create_task, list_tasks, register_task, train

pytestmark = pytest.mark.usefixtures("single_thread")


class CountDataset(torch.utils.data.Dataset):
    """Token sequences of random length 2..9; the target is how many tokens equal 3."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            ids = torch.randint(1, 6, (int(torch.randint(2, 10, (1,), generator=g)),),
                                generator=g)
            self.items.append({"ids": ids, "count": float((ids == 3).sum())})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def pad_collate(items):
    """Right-pads `ids` to the longest item; `mask` marks the real tokens."""
    length = max(len(it["ids"]) for it in items)
    ids = torch.zeros(len(items), length, dtype=torch.long)  # (B, L)
    for i, it in enumerate(items):
        ids[i, :len(it["ids"])] = it["ids"]
    return {"ids": ids, "mask": ids != 0, "count": torch.tensor([it["count"] for it in items])}


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, ids, mask):  # (B, L), (B, L) -> (B,)
        return (self.out(self.embed(ids)).squeeze(-1) * mask).sum(1)


@register_task("count_regression")
class CountTask(Task):
    unit = "sequences"
    main_metric = "mae"

    def collate_fn(self, dataset):
        return pad_collate

    def step(self, model, batch):
        loss = F.mse_loss(model(batch["ids"], batch["mask"]), batch["count"])
        return loss, {"loss": loss.detach()}

    def eval_step(self, model, batch):
        return {"err": (model(batch["ids"], batch["mask"]) - batch["count"]).abs()}

    def eval_finalize(self, outputs):
        return {"mae": float(outputs["err"].mean()), "count": int(outputs["err"].numel())}

    def summary(self, results):
        return {"test_mae": results["test"]["mae"]}

    def artefacts(self, model, datasets, results, run_dir, log, step):
        (run_dir / "errors.json").write_text(json.dumps(results["test"]))
        return {"errors_file": str(run_dir / "errors.json")}


def test_default_collate_cannot_batch_these_items():
    with pytest.raises(ValueError, match="differ in shape"):
        collate([CountDataset(8, 0)[i] for i in range(8)])


def test_a_regression_task_with_its_own_collate_trains_through_the_engine(tmp_path):
    assert "count_regression" in list_tasks()
    data = {"train": CountDataset(256, 0), "val": CountDataset(64, 1),
            "test": CountDataset(64, 2)}
    cfg = {"task": {"name": "count_regression"}, "data": {"batch_size": 16},
           "optim": {"lr": 3e-2, "weight_decay": 0.0}, "train": {"max_steps": 60, "log_every": 20},
           "logging": {"progress": False}}
    res = train(cfg, tmp_path / "run", data=data, model=Counter())
    assert res["steps"] == 60 and "train_sequences_per_s" in res
    assert res["test_mae"] == res["test/mae"] < 0.3  # learned to count (targets are 0..9)
    assert res["test/count"] == 64  # every test sequence evaluated once
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["test_mae"] == res["test_mae"] and "test_accuracy" not in saved
    assert json.loads((tmp_path / "run" / "errors.json").read_text())["mae"] == res["test/mae"]
    assert res["errors_file"].endswith("errors.json")
    assert not (tmp_path / "run" / "test_predictions.json").exists()  # classification's file


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'captionning'; expected one of .*"
                                         "classification"):
        create_task("captionning")
