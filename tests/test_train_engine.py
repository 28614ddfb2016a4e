"""End-to-end tiny trainings: files written, weights reload, precision, EMA, CLI, quick config."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_train_support import TinyMLP, splits, tiny_config

from mmtx.train import list_checkpoints, load_config, load_weights, train

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]


def _scalars(result):
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and "_s" not in k
            and "per_s" not in k}


def test_tiny_run_writes_config_metrics_checkpoints_weights(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config()
    result = train(cfg, run_dir=run, data=splits())
    assert result["steps"] == 12 and result["precision"] == "fp32"
    assert result["test/acc"] >= 0.8  # learns the quadrant task (chance is 0.25)
    assert result["train_images_per_s"] > 0 and result["wall_s"] > 0

    assert load_config(run / "config.yaml") == load_config(cfg)  # the resolved config
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in r for r in rows)
    train_steps = [r["step"] for r in rows if "train/loss" in r]
    assert train_steps == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in rows if "val/acc" in r] == [6, 12]
    assert [r["step"] for r in rows if "test/acc" in r] == [12]

    # checkpoint_every 4 -> 4, 8, 12; keep_last 2 keeps the newest two, no temp dirs left
    assert [s for s, _ in list_checkpoints(run)] == [8, 12]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    for _, path in list_checkpoints(run):
        assert (path / "model.safetensors").is_file() and (path / "optimizer.bin").is_file()
        assert json.loads((path / "train_state.json").read_text())["step"] == int(path.name[5:])

    # the kept weights reproduce the reported test predictions
    model = load_weights(TinyMLP(), run / "model.safetensors").eval()
    test = splits()["test"]
    with torch.no_grad():
        preds = model(test.images).argmax(-1).tolist()
    saved = json.loads((run / "test_predictions.json").read_text())["predictions"]
    assert [p["pred"] for p in saved] == preds == [p["pred"] for p in result["test_predictions"]]
    assert [p["label"] for p in saved] == test.labels.tolist()
    assert json.loads((run / "summary.json").read_text())["test/acc"] == result["test/acc"]

    # same seed, same metrics (CPU); a fresh run into a used run_dir needs resume
    again = train(cfg, run_dir=tmp_path / "again", data=splits())
    assert _scalars(again) == _scalars(result)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(cfg, run_dir=run, data=splits())
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(cfg, run_dir=tmp_path / "empty", data=splits(), resume=True)


def test_bf16_ema_and_fp16_fallback(tmp_path):
    cfg = tiny_config(max_steps=6, checkpoint_every=3, precision="bf16", ema=0.9)
    result = train(cfg, run_dir=tmp_path / "bf16", data=splits())
    assert result["precision"] == "bf16" and result["ema"] is True
    assert (list_checkpoints(tmp_path / "bf16")[-1][1] / "ema.safetensors").is_file()
    # evaluation used the EMA weights, which differ from the raw weights
    raw = load_weights(TinyMLP(), list_checkpoints(tmp_path / "bf16")[-1][1] / "model.safetensors")
    ema = result["model_module"]
    assert not torch.equal(raw.net[1].weight, ema.net[1].weight)
    if not torch.cuda.is_available():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r16 = train(tiny_config(max_steps=2, precision="fp16"), run_dir=tmp_path / "fp16",
                        data=splits())
        assert r16["precision"] == "bf16"
        assert any("fp16 needs a GPU" in str(w.message) for w in caught)


def test_cli_reports_config_errors():
    proc = subprocess.run([sys.executable, "-m", "mmtx", "train", "experiments/quick_classify.yaml",
                           "--set", "optim.lrr=1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert "unknown config key 'optim.lrr'" in proc.stderr and "optim.lr" in proc.stderr


@pytest.mark.parametrize("model_name", [None, "convnet_small"])  # None: the config's ViT
def test_quick_config_trains(tmp_path, model_name):
    path = ROOT / "experiments/quick_classify.yaml"
    model_name = model_name or load_config(path).model.name
    # the real quick config, shortened: the full one (60 steps) is what the README times
    result = train(path, run_dir=tmp_path / model_name,
                   overrides=[f"model.name={model_name}", "train.max_steps=4",
                              "train.checkpoint_every=2", "train.eval_every=2",
                              "data.args.num_samples=256", "logging.progress=false"])
    assert result["steps"] == 4 and 0.0 <= result["test/acc"] <= 1.0
    assert [s for s, _ in list_checkpoints(tmp_path / model_name)] == [2, 4]


@pytest.mark.slow
def test_compile_gives_the_same_losses_as_eager(tmp_path):
    cfg = tiny_config(max_steps=4, checkpoint_every=2, eval_every=0)
    cfg["model"]["args"] = {"dropout": 0.0}
    eager = train(cfg, run_dir=tmp_path / "eager", data=splits())
    cfg["train"]["compile"] = True
    compiled = train(cfg, run_dir=tmp_path / "compiled", data=splits())
    assert compiled["test/loss"] == pytest.approx(eager["test/loss"], abs=1e-4)
    assert (list_checkpoints(tmp_path / "compiled")[-1][1] / "model.safetensors").is_file()


def test_channels_last_trains_the_same_model_in_nhwc(tmp_path):
    """train.channels_last: the model and its image batches in NHWC order; the numbers match
    the default layout's (the same maths, another memory order)."""
    from mmtx import create_model

    def run(flag):
        cfg = tiny_config(max_steps=6, eval_every=0, checkpoint_every=0)
        cfg["train"]["channels_last"] = flag
        torch.manual_seed(0)
        model = create_model("convnet_small", widths=[4, 8], num_classes=4, in_chans=1,
                             img_size=8)
        return train(cfg, run_dir=tmp_path / str(flag), data=splits(), model=model)

    nhwc, nchw = run(True), run(False)
    conv = next(m for m in nhwc["model_module"].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc["test/loss"] == pytest.approx(nchw["test/loss"], rel=1e-4)
    assert nhwc["test/acc"] == nchw["test/acc"]


def test_items_are_seeded_only_when_they_draw_from_the_global_rngs():
    from mmtx.data import build_dataset
    from mmtx.train.data import SeededItems

    plain = build_dataset("shapes", "train", num_samples=8, image_size=16, fraction=0.5)
    augmented = build_dataset("shapes", "train", num_samples=8, image_size=16, augment="light")
    assert not SeededItems(plain, 0).random  # a fraction passes its base's answer through
    wrapped = SeededItems(augmented, 0)
    assert wrapped.random
    assert torch.equal(wrapped[(3, 5)]["image"], wrapped[(3, 5)]["image"])  # same seed, same crop


@pytest.mark.parametrize("opt_in", [False, True])
@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_batched_fetch_equals_item_by_item(cache, fraction, opt_in):
    # The DataLoader fetches a batch through __getitems__ (one tensor operation for cached
    # shapes); what it gives must be exactly the items __getitem__ gives, through every wrapper,
    # the opt-in masks, boxes and foils (remembered per cached item) included.
    from mmtx.data import build_dataset
    from mmtx.train.data import SeededItems

    extra = dict(task="caption", return_objects=True, return_foils=True) if opt_in else {}
    ds = SeededItems(build_dataset("shapes", "train", num_samples=16, image_size=16,
                                   fraction=fraction, cache=cache, **extra), seed=0)
    keys = [(0, 5), (0, 2), (1, 7), (0, 2)]
    batched, single = ds.__getitems__(keys), [ds[k] for k in keys]
    rendered = build_dataset("shapes", "train", num_samples=16, image_size=16,
                             fraction=fraction, **extra)  # no cache: drawn from scratch
    assert len(batched) == len(single) == 4
    for k, b, s in zip(keys, batched, single):
        assert b.keys() == s.keys() == rendered[k[1]].keys()
        for key in b:
            if torch.is_tensor(b[key]):
                assert torch.equal(b[key], s[key]) and torch.equal(b[key], rendered[k[1]][key])
            else:
                assert b[key] == s[key] == rendered[k[1]][key], key
        assert (b["label"], b["caption"], b["attributes"]) == \
            (s["label"], s["caption"], s["attributes"])


class _ThreadsSeen(TinyMLP):
    """TinyMLP that records torch's thread count at every forward."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def forward(self, x):
        self.seen.add(torch.get_num_threads())
        return super().forward(x)


def test_train_threads_apply_during_the_run_only(tmp_path):
    # single_thread: 1 thread before; the run asks for 2 and the caller gets its 1 back.
    model = _ThreadsSeen()
    train(tiny_config(threads=2, max_steps=2, eval_every=0, checkpoint_every=0),
          run_dir=tmp_path / "run", data=splits(), model=model)
    assert model.seen == {2}
    assert torch.get_num_threads() == 1
