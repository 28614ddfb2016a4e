"""The digits judge (mmtx.eval.judge with data "digits"): a CNN trained on the real train digits
only, accurate on the real test digits, cached once and read back bit for bit."""

from __future__ import annotations

import pytest
import torch

from mmtx.data import DigitsDataset
from mmtx.eval import judge as judge_mod
from mmtx.eval.judge import judge_data_config, load_judge, real_images

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = {"data": "digits", "image_size": 16}
RECIPE = dict(epochs=5)  # ~5 s on one thread; the default (30 epochs) is what runs use


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    cache = tmp_path_factory.mktemp("judges")
    torch.set_num_threads(1)
    return cache, load_judge(DATA, cache_dir=cache, progress=False, **RECIPE)


def test_digits_judge_reads_real_test_digits(cached):
    _, judge = cached
    assert not judge.from_cache and judge.config == DATA
    assert list(judge.names) == ["class"] and judge.names["class"] == [str(d) for d in range(10)]
    assert judge.ceiling["class"] >= 0.9  # on the 359 real test digits, never seen in training
    images, objects = real_images(judge.config, "val", 1000)
    assert images.shape == (len(DigitsDataset("val")), 1, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    assert judge.accuracy(images, judge.targets(objects))["class"] >= 0.9
    assert judge.features(images[:3]).shape == (3, 128)


def test_digits_judge_trains_on_the_train_split_only(monkeypatch, tmp_path):
    splits = []
    real = judge_mod.real_images

    def spy(config, split, num, seed=0):
        splits.append((split, num))
        return real(config, split, num, seed)

    monkeypatch.setattr(judge_mod, "real_images", spy)
    load_judge(DATA, cache_dir=tmp_path, progress=False, epochs=1)
    assert splits == [("train", 1257), ("test", 359)]  # fit on train, ceiling on test


def test_digits_judge_is_cached_and_read_back_bitwise(cached, monkeypatch):
    cache, first = cached
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1 and not list(cache.glob(".*.tmp"))

    def no_training(*args, **kwargs):
        raise AssertionError("the cached judge was trained again")

    monkeypatch.setattr(judge_mod, "train_judge", no_training)
    again = load_judge(DATA, cache_dir=cache, progress=False, **RECIPE)
    assert again.from_cache and again.ceiling == first.ceiling and again.config == first.config
    mine, theirs = first.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    first.eval()
    assert torch.equal(again.features(x), first.features(x))


def test_digits_cache_key_follows_the_size_and_is_apart_from_shapes():
    recipe = judge_mod.train_defaults(DATA)
    key = judge_mod.judge_key(judge_data_config(**DATA), recipe)
    assert key != judge_mod.judge_key(judge_data_config(data="digits", image_size=32), recipe)
    assert judge_data_config(DigitsDataset(image_size=16, normalize="symmetric")) == DATA
    assert "data" not in judge_data_config()  # shapes keys (and cached judges) as before


def test_digits_judge_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="data.args.normalize: .*'symmetric', got 'stats'"):
        judge_data_config(DigitsDataset(image_size=16))
    with pytest.raises(ValueError, match="unknown judge data option 'colours'"):
        judge_data_config(data="digits", colours=["red"])
    with pytest.raises(ValueError, match="data: expected one of shapes, digits"):
        judge_data_config(data="mnist")
    with pytest.raises(ValueError, match="image_size"):
        judge_data_config(data="digits", image_size=2)
