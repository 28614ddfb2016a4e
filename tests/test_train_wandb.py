"""W&B through Accelerate's tracker: offline run files appear without network, a resumed
training continues the same run id, and a missing or failing wandb costs one warning."""

import json
import sys
import warnings

import pytest
from test_train_support import splits, tiny_config

from mmtx.train import latest_checkpoint, train

pytestmark = pytest.mark.usefixtures("single_thread")

wandb = pytest.importorskip("wandb")


def _wandb_config(max_steps):
    cfg = tiny_config(max_steps=max_steps, checkpoint_every=2, eval_every=2)
    cfg["logging"].update(wandb=True, project="mmtx-test", group="tests", tags=["ci"])
    return cfg


def test_offline_run_files_and_resume_reuses_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    first = train(_wandb_config(4), run_dir=tmp_path, data=splits())
    run_id = first["wandb_run_id"]
    assert run_id
    state = json.loads((latest_checkpoint(tmp_path) / "train_state.json").read_text())
    assert state["wandb_run_id"] == run_id  # stored in the checkpoint

    second = train(_wandb_config(6), run_dir=tmp_path, data=splits(), resume=True)
    assert second["wandb_run_id"] == run_id and second["steps"] == 6
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2  # one per session, both the same W&B run
    assert all(r.name.endswith(f"-{run_id}") for r in runs)
    assert all((r / f"run-{run_id}.wandb").is_file() for r in runs)


def test_failing_wandb_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")

    def broken_init(*args, **kwargs):
        raise RuntimeError("wandb backend unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(_wandb_config(2), run_dir=tmp_path / "broken", data=splits())
    msgs = [str(w.message) for w in caught if "W&B" in str(w.message)]
    assert len(msgs) == 1 and "wandb backend unreachable" in msgs[0]
    assert result["steps"] == 2 and (tmp_path / "broken" / "metrics.jsonl").is_file()

    monkeypatch.setitem(sys.modules, "wandb", None)  # wandb not installed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(_wandb_config(2), run_dir=tmp_path / "missing", data=splits())
    msgs = [str(w.message) for w in caught if "wandb" in str(w.message)]
    assert len(msgs) == 1 and "without W&B" in msgs[0]
    assert result["steps"] == 2


def test_classification_artefacts_for_an_attention_model(tmp_path, monkeypatch):
    """The classification task, not the engine, draws the ViT's attention rollout for W&B;
    a model without attention maps (the MLP above) gets none, and no error."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from mmtx.models import create_model

    cfg = _wandb_config(2)
    vit = create_model("vit_micro_patch2_16", num_classes=4, in_chans=1, img_size=8,
                       patch_size=4, dim=16, depth=1, num_heads=2)
    res = train(cfg, run_dir=tmp_path / "vit", data=splits(), model=vit)
    assert (tmp_path / "vit" / "attention_rollout.png").stat().st_size > 0
    assert len(res["test_predictions"]) == 40
    train(cfg, run_dir=tmp_path / "mlp", data=splits())
    assert not (tmp_path / "mlp" / "attention_rollout.png").exists()
    assert (tmp_path / "mlp" / "test_predictions.json").exists()
