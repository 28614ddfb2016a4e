"""The "twins" shapes scenes and the global-consistency measure on real images."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from mmtx.data import ShapesDataset
from mmtx.data.render import COLOURS, render
from mmtx.eval.consistency import consistency, split_objects
from mmtx.eval.judge import load_judge

N = 300


@pytest.fixture(scope="module")
def twins():
    return ShapesDataset(num_samples=N, task="twins", split="test")


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    # the real one-object judge (trained here once, ~20 s; 100% on real one-object scenes)
    return load_judge(None, cache_dir=tmp_path_factory.mktemp("judges"), progress=False)


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() * 2 - 1


def test_twins_share_shape_and_colour_far_apart(twins):
    sizes_equal = []
    for i in range(100):
        a, b = twins.scene(i)
        assert (a.shape, a.colour) == (b.shape, b.colour)
        assert math.hypot(a.x - b.x, a.y - b.y) >= 0.45 * twins.image_size
        assert twins.label_of([a, b]) == int(a.size == b.size)
        sizes_equal.append(a.size == b.size)
    assert 0.3 < np.mean(sizes_equal) < 0.7  # sizes are drawn apart
    assert len({twins.scene(i)[0].shape for i in range(100)}) == len(twins.shapes)
    assert twins.class_names == ["different sizes", "same size"]
    with pytest.raises(ValueError, match="twins task needs >= 2 objects"):
        ShapesDataset(num_samples=4, task="twins", num_objects=1)


def test_consistency_is_high_on_real_twins_and_near_chance_when_one_is_redrawn(twins, judge):
    real = torch.stack([twins[i]["image"] for i in range(N)])
    got = consistency(judge, real)
    assert got["two_objects"] >= 0.99 and got["consistency"] >= 0.98, got

    rng = np.random.default_rng(0)
    redrawn = []
    for i in range(N):
        objects = twins.scene(i)
        other = objects[1]
        shape = rng.choice([s for s in twins.shapes if s != other.shape])
        colour = rng.choice([c for c in twins.colours if c != other.colour])
        objects[1] = dataclasses.replace(other, shape=str(shape), colour=str(colour),
                                         rgb=COLOURS[str(colour)])
        redrawn.append(as_tensor(render(objects, twins.image_size, twins.background)))
    got = consistency(judge, torch.stack(redrawn))
    # both attributes differ, so a right reading says 0; chance for two random objects is 1/48
    assert got["two_objects"] >= 0.98 and got["consistency"] <= 0.05, got


def test_split_objects_needs_two_objects_and_checks_its_input():
    lone = ShapesDataset(num_samples=8, task="shape", split="test")
    images = torch.stack([lone[i]["image"] for i in range(8)])
    objects, found = split_objects(images)
    assert objects.shape == (8, 2, 3, 32, 32) and not found.any()
    assert (objects == -1).all()  # rows without a pair hold the background
    with pytest.raises(ValueError, match=r"images must be \(N, C, H, W\)"):
        split_objects(images[0])
    with pytest.raises(ValueError, match="zoom must be >= 1, got 0.5"):
        split_objects(images, zoom=0.5)
    with pytest.raises(ValueError, match=r"background must have one value per channel \(3\)"):
        split_objects(images, background=(-1.0,))
