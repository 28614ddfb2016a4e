"""The registry and the contract every registered model keeps: builds small by overrides, runs
forward and backward, returns the expected shape, and every parameter gets a finite gradient."""

from __future__ import annotations

import pytest
import torch

from mmtx.models import ModelInfo, create_model, list_models, model_info, register_model, registry
from mmtx.models.summary import count_model_params, count_params

pytestmark = pytest.mark.usefixtures("single_thread")

# Models registered by mmtx itself (test files may register stand-ins of their own).
MODELS = [n for n in list_models() if model_info(n).module.startswith("mmtx.")]
FAMILIES = {"vit", "cnn", "hybrid", "text", "rnn", "dit", "unet", "captioner", "clip"}


def test_every_family_is_registered_with_a_task():
    assert {model_info(n).family for n in MODELS} >= FAMILIES
    for name in MODELS:
        info = model_info(name)
        assert info.name == name and info.fn.__name__ == name
        assert info.module == info.fn.__module__
        assert info.task is not None, f"{name} has no default task"
    assert model_info("vit_tiny_patch4_32").task == "classification"
    assert model_info("gpt_tiny").task == "causal_lm"
    assert model_info("bert_tiny").task == "masked_lm"
    assert model_info("seq2seq_tiny").task == "seq2seq"
    assert model_info("lstm_tiny").task == "text_classification"


def test_list_models_by_family_and_pattern():
    vit = list_models(family="vit")
    assert vit and all(model_info(n).family == "vit" for n in vit)
    assert list_models("vit_tiny*", family="vit") == [n for n in vit if n.startswith("vit_tiny")]
    assert list_models("vit_*", family="cnn") == []
    assert sorted(sum((list_models(family=f) for f in FAMILIES), [])) == sorted(MODELS)
    with pytest.raises(ValueError,
                       match=r"unknown model family 'vits'; known families: .*cnn, .*vit"):
        list_models(family="vits")
    with pytest.raises(ValueError, match="unknown model name 'vit_tiny_patch4_33'"):
        model_info("vit_tiny_patch4_33")


def test_register_model_bare_and_with_metadata(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))  # undone after the test

    @register_model
    def scratch_bare(**kw):
        return torch.nn.Linear(2, 2)

    @register_model(family="vit", task="classification")
    def scratch_tagged(**kw):
        return torch.nn.Linear(2, 2)

    bare = model_info("scratch_bare")
    assert isinstance(bare, ModelInfo) and bare.fn is scratch_bare
    assert bare.module == __name__ and bare.family == __name__.rsplit(".", 1)[-1]
    assert bare.task is None
    assert (model_info("scratch_tagged").family, model_info("scratch_tagged").task) == \
        ("vit", "classification")
    assert "scratch_tagged" in list_models(family="vit")
    with pytest.raises(ValueError, match="registered twice"):
        register_model(scratch_bare)


@pytest.mark.parametrize("name", MODELS)
def test_model_contract(name, small_model):
    s = small_model(name)
    model = s.model.train()
    out = model(*s.inputs)
    assert out.shape == s.out_shape, f"{name}: {tuple(out.shape)} != {s.out_shape}"
    assert torch.isfinite(out).all()
    out.float().logsumexp(-1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient (unused parameter)"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", MODELS)
def test_dropout_options_have_one_spelling(name, small_model):
    # Every family takes drop_rate; those with attention take attn_drop_rate and drop_path_rate.
    attention = model_info(name).family not in ("cnn", "rnn")
    extra = dict(attn_drop_rate=0.1, drop_path_rate=0.1) if attention else {}
    small_model(name, drop_rate=0.1, **extra)


@pytest.mark.parametrize("name", MODELS)
def test_meta_parameter_count_equals_the_built_models(name, small_model):
    s = small_model(name)
    assert count_model_params(name, **s.kwargs) == count_params(s.model)


def test_meta_parameter_count_at_full_size():
    # Full-size builds with real weights, to check the meta count where widths are defaults.
    for name in ("vit_tiny_patch16_224", "unet_small", "dit_micro_2", "bert_tiny"):
        assert count_model_params(name) == count_params(create_model(name)), name
    # Nothing is allocated: the count of DiT-XL/2 (675 M parameters, learn_sigma) is the
    # DiT paper's Table 4 figure, 675 M, without building 2.7 GB of weights.
    assert round(count_model_params("dit_xl_2", learn_sigma=True) / 1e6) == 675


def test_every_family_has_an_example_recipe(monkeypatch):
    from mmtx.models.examples import model_example

    for family in sorted({model_info(n).family for n in MODELS}):
        name = list_models(family=family)[0]
        ex = model_example(name, batch=3)
        assert ex.inputs[0].shape[0] == 3 and ex.out_shape[0] == 3, family
    monkeypatch.setitem(registry._MODELS, "scratch_no_recipe", ModelInfo(
        "scratch_no_recipe", lambda **kw: torch.nn.Linear(2, 2), __name__, "scratch", None))
    with pytest.raises(ValueError, match="family 'scratch' has no example recipe"):
        model_example("scratch_no_recipe")


@pytest.mark.parametrize("name, override, hint", [
    ("vit_micro_patch2_16", "dept", "depth"),
    ("dit_micro_4", "patch_sise", "patch_size"),
    ("unet_small", "chanels", "channels"),
])
def test_a_misspelt_override_names_the_nearest_argument(name, override, hint):
    with pytest.raises(ValueError, match=rf"unknown override '{override}' for model '{name}'; "
                                         rf"did you mean {hint}\b"):
        create_model(name, **{override: 1})
