"""mmtx.eval.judge: the independent shapes judge is accurate on real images, is cached once per
data configuration (atomically) and read back without training."""

from __future__ import annotations

import pytest
import torch

from mmtx.eval import judge as judge_mod
from mmtx.eval.judge import Judge, judge_data_config, load_judge, real_images

pytestmark = pytest.mark.usefixtures("single_thread")

# Small enough to train in seconds on one thread, large enough to read shape and colour.
RECIPE = dict(train_samples=2000, test_samples=500, epochs=4, batch_size=64)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    cache = tmp_path_factory.mktemp("judges")
    torch.set_num_threads(1)
    return cache, load_judge(None, cache_dir=cache, progress=False, **RECIPE)


def test_judge_reads_real_images_nearly_perfectly(cached):
    _, judge = cached
    assert not judge.from_cache
    assert judge.ceiling["shape"] >= 0.95 and judge.ceiling["colour"] >= 0.98
    assert judge.ceiling["size"] >= 0.9
    images, objects = real_images(judge.config, "val", 200)  # scenes it never saw
    acc = judge.accuracy(images, judge.targets(objects))
    assert acc["shape"] >= 0.93 and acc["colour"] >= 0.98 and acc["all"] >= 0.85


def test_features_and_predictions_have_the_documented_shapes(cached):
    _, judge = cached
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    assert judge.features(x).shape == (5, 128)
    assert judge.feature_extractor()(x).shape == (5, 128)
    out = judge.predict(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "shape": (5, 6), "colour": (5, 8), "size": (5, 2)}
    with pytest.raises(ValueError, match=r"images must be \(B, C, H, W\)"):
        judge.features(torch.zeros(3, 32, 32))


def test_second_load_reads_the_cache_without_training(cached, monkeypatch):
    cache, first = cached
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and not list(cache.glob(".*.tmp"))  # renamed into place

    def no_training(*args, **kwargs):
        raise AssertionError("the cached judge was trained again")

    monkeypatch.setattr(judge_mod, "train_judge", no_training)
    again = load_judge(None, cache_dir=cache, progress=False, **RECIPE)
    assert again.from_cache and again.ceiling == first.ceiling and again.config == first.config
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    first.eval()
    torch.testing.assert_close(again.features(x), first.features(x))


def test_the_cache_key_follows_the_data_and_the_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTX_CACHE", str(tmp_path))
    assert judge_mod.default_cache_dir() == tmp_path / "judges"
    base = judge_data_config()
    recipe = {**judge_mod.TRAIN_DEFAULTS}
    key = judge_mod.judge_key(base, recipe)
    assert key == judge_mod.judge_key(judge_data_config(shapes=tuple(base["shapes"])), recipe)
    assert key != judge_mod.judge_key(judge_data_config(image_size=16), recipe)
    assert key != judge_mod.judge_key(judge_data_config(colour_jitter=0.1), recipe)
    assert key != judge_mod.judge_key(base, {**recipe, "epochs": 1})


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown judge training option"):
        load_judge(None, epoch=3)
    with pytest.raises(ValueError, match="unknown judge data option"):
        judge_data_config(imagesize=32)
    with pytest.raises(ValueError, match="unknown shape"):
        Judge().targets([{"shape": "blob"}])
