"""Configs (YAML, --set overrides, errors), the lr schedule and AdamW's weight-decay groups."""

import math

import pytest
import yaml
from test_train_support import TinyViT

from mmtx.train.config import Config, load_config
from mmtx.train.optim import lr_factor, no_decay_names, param_groups

pytestmark = pytest.mark.usefixtures("single_thread")


def test_yaml_load_and_typed_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "vit_x", "args": {"depth": 2}},
                                    "optim": {"lr": "1e-3"}, "train": {"max_steps": 50}}))
    cfg = load_config(path, ["optim.lr=3e-4", "train.max_steps=1_000", "optim.betas=[0.9,0.95]",
                             "train.ema=0.999", "train.compile=true", "train.resume=auto",
                             "model.args.dim=64", "data.eval_batch_size=null",
                             "logging.tags=[a,b]", "optim.clip_grad=none"])
    assert cfg.model.name == "vit_x" and cfg.model.args == {"depth": 2, "dim": 64}
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)  # YAML 1.1 reads a str
    assert cfg.train.max_steps == 1000 and cfg.optim.betas == [0.9, 0.95]
    assert cfg.train.ema == 0.999 and cfg.train.compile is True and cfg.train.resume == "auto"
    assert cfg.data.eval_batch_size is None and cfg.optim.clip_grad is None
    assert cfg.logging.tags == ["a", "b"]
    # the saved config loads back to the same values
    cfg.save(tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize("override, hint", [
    ("optim.lrr=1", "optim.lr"),
    ("train.max_step=3", "train.max_steps"),
    ("trian.seed=1", "train.seed"),
    ("model.nme=x", "model.name"),
])
def test_unknown_key_names_nearest(override, hint):
    with pytest.raises(ValueError, match="unknown config key") as e:
        load_config(None, [override])
    assert hint in str(e.value)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  eval_evry: 5\n")
    with pytest.raises(ValueError, match="train.eval_every"):
        load_config(path)


@pytest.mark.parametrize("override, match", [
    ("train.max_steps=abc", "train.max_steps.*integer"),
    ("train.precision=fp8", "train.precision.*fp32"),
    ("optim.schedule=step", "optim.schedule"),
    ("optim.grad_accum=0", "optim.grad_accum"),
    ("train.compile=maybe", "train.compile.*true or false"),
    ("data.fraction=1.5", "data.fraction"),
    ("optim.lr", "KEY=VALUE"),
    ("optim.lr=[1", r"--set optim.lr: '\[1' is not a YAML value"),
    # values that train backwards or mean nothing: one line naming the key, expected and got
    ("optim.clip_grad=-1", r"optim.clip_grad: expected >= 0 .*got -1.0"),
    ("optim.min_lr=-0.01", r"optim.min_lr: expected in \[0, optim.lr=0.001\], got -0.01"),
    ("optim.min_lr=0.1", r"optim.min_lr: expected in \[0, optim.lr=0.001\], got 0.1"),
    ("optim.warmup_steps=-5", "optim.warmup_steps: expected >= 0, got -5"),
    ("optim.weight_decay=-1", "optim.weight_decay: expected >= 0, got -1.0"),
    ("optim.lr=-1", "optim.lr: expected a finite number > 0, got -1.0"),
    ("optim.lr=nan", "optim.lr: expected a finite number > 0, got nan"),
    ("optim.eps=0", "optim.eps: expected > 0, got 0.0"),
    ("optim.betas=[0.9,1.5]", r"optim.betas: expected two numbers in \[0, 1\)"),
    ("train.epochs=inf", "train.epochs: expected a finite number > 0, got inf"),
    ("train.threads=0", "train.threads: expected >= 1 or null, got 0"),
    ("data.num_workers=-1", "data.num_workers: expected >= 0, got -1"),
    ("data.eval_batch_size=0", "data.eval_batch_size: expected >= 1 or null, got 0"),
])
def test_bad_values_are_errors(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize("text, match", [
    ("", r"config '.*c.yaml' is empty"),
    ("# only a comment\n", r"config '.*c.yaml' is empty"),
    ("model:\n  name: [vit\n", r"config .*c.yaml:3: invalid YAML: expected ',' or ']'"),
    ("model: {name: vit}\n  data: 1\n", r"config .*c.yaml:2: invalid YAML"),
    ("- a\n- b\n", "expected a mapping at the top, got list"),
])
def test_bad_yaml_files_name_the_file_and_line(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_config(path)


def test_a_config_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"model: {name: caf\xe9}\n")
    with pytest.raises(ValueError, match=r"c.yaml': not UTF-8 text \(byte 17 is 0xe9\)"):
        load_config(path)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


def test_defaults_are_valid():
    assert load_config(None) == Config()


def test_lr_schedule_hand_computed():
    kw = dict(total_steps=12, warmup=2, min_ratio=0.0)
    assert lr_factor(0, schedule="cosine", **kw) == 0.5
    assert lr_factor(1, schedule="cosine", **kw) == 1.0
    assert lr_factor(2, schedule="cosine", **kw) == 1.0  # decay starts after warmup
    assert lr_factor(11, schedule="cosine", **kw) == pytest.approx(0.0, abs=1e-12)  # last step
    # halfway through the decay span (9 steps from 2 to 11): cos(pi * 4.5/9) = 0
    assert lr_factor(6, schedule="cosine", **kw) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 4 / 9)))
    assert lr_factor(5, schedule="linear", **kw) == pytest.approx(1 - 3 / 9)
    assert lr_factor(11, schedule="cosine", total_steps=12, warmup=2, min_ratio=0.1) == \
        pytest.approx(0.1)
    assert lr_factor(7, schedule="constant", **kw) == 1.0


def test_no_weight_decay_on_norms_biases_tokens_tables():
    model = TinyViT(dim=16, depth=1)
    skip = no_decay_names(model)
    names = dict(model.named_parameters())
    assert {"cls_token", "pos_embed", "head.bias", "patch.proj.bias"} <= skip
    assert all(n in skip for n in names if "norm" in n)
    decayed = set(names) - skip
    assert "patch.proj.weight" in decayed and "head.weight" in decayed
    assert all(names[n].ndim >= 2 for n in decayed)
    groups = param_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(names)
