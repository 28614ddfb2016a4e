"""ShapesDataset's distance and distractor options for the relation task."""

import numpy as np
import pytest

from mmtx.data import ShapesDataset, build_dataset


def _pair_distance(objects, side) -> float:
    a, b = objects[0], objects[1]
    return float(np.hypot(a["x"] - b["x"], a["y"] - b["y"])) / side


@pytest.mark.parametrize("band", [(0.35, 0.45), (0.45, 0.60), (0.60, 0.85)])
@pytest.mark.parametrize("size", [32, 48])
def test_measured_pair_distances_lie_in_the_range(band, size):
    ds = ShapesDataset(150, image_size=size, task="relation", distance=band, split="val")
    for i in range(len(ds)):
        item = ds[i]
        d = item["attributes"]["distance"]
        # attributes round positions to 0.01 px: recompute from them within that rounding
        assert band[0] - 1e-3 <= d <= band[1] + 1e-3
        assert abs(_pair_distance(item["attributes"]["objects"], size) - d) < 0.01
        assert item["label"] == int(item["attributes"]["objects"][0]["shape"]
                                    == item["attributes"]["objects"][1]["shape"])


def test_distance_bands_stay_balanced_and_objects_inside():
    ds = ShapesDataset(400, task="relation", distance=(0.6, 0.85))
    labels = [ds[i]["label"] for i in range(len(ds))]
    assert 0.4 < np.mean(labels) < 0.6
    for i in range(50):
        for o in ds.scene(i):
            assert o.r <= o.x <= 32 - o.r and o.r <= o.y <= 32 - o.r


def test_default_relation_scenes_are_unchanged_by_the_option():
    a = ShapesDataset(20, task="relation")
    b = ShapesDataset(20, task="relation", distance=None, distractors=0)
    for i in range(20):
        assert (a[i]["image"] == b[i]["image"]).all()
        assert "distance" not in a[i]["attributes"]
    assert a._config_key() == b._config_key()


def test_distractors_are_grey_extra_objects_after_the_pair():
    ds = ShapesDataset(40, task="relation", distance=(0.6, 0.85), distractors=(1, 3))
    counts = set()
    for i in range(len(ds)):
        objects = ds[i]["attributes"]["objects"]
        counts.add(len(objects) - 2)
        assert all(o["colour"] != "grey" for o in objects[:2])
        assert all(o["colour"] == "grey" for o in objects[2:])
        assert 0.6 - 1e-3 <= ds[i]["attributes"]["distance"] <= 0.85 + 1e-3
    assert counts <= {1, 2, 3} and len(counts) > 1


def test_distance_reaches_the_dataset_through_build_dataset(tmp_path):
    ds = build_dataset("shapes", "test", num_samples=30, task="relation", distance=[0.4, 0.5],
                       cache=str(tmp_path))
    again = build_dataset("shapes", "test", num_samples=30, task="relation", distance=[0.4, 0.5],
                          cache=str(tmp_path))  # read back from the disk cache
    assert all(0.4 - 1e-3 <= again[i]["attributes"]["distance"] <= 0.5 + 1e-3
               for i in range(30))
    assert ds[3]["attributes"] == again[3]["attributes"]
    other = build_dataset("shapes", "test", num_samples=30, task="relation", cache=str(tmp_path))
    assert "distance" not in other[3]["attributes"]  # another cache file, not the banded one


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "shape", "distance": (0.2, 0.4)}, r"distance: only the relation task.*'shape'"),
    ({"task": "relation", "distance": (0.5, 0.4)}, r"distance: expected 0 < lo <= hi <= 1"),
    ({"task": "relation", "distance": (0.0, 0.4)}, r"distance: expected 0 < lo <= hi <= 1"),
    ({"task": "relation", "distance": (0.5, 1.2)}, r"distance: expected 0 < lo <= hi <= 1"),
    ({"task": "relation", "distance": 0.5}, r"distance: expected a \(lo, hi\) pair"),
    ({"task": "relation", "distance": ("a", "b")}, r"distance: expected a \(lo, hi\) pair"),
    ({"task": "relation", "distractors": -1}, r"distractors: expected .* within 0..6, got -1"),
    ({"task": "relation", "distractors": (3, 1)}, r"distractors: .*got \(3, 1\)"),
    ({"task": "relation", "distractors": 1.5}, r"distractors: expected an int or a"),
    ({"task": "count", "distractors": 2}, r"distractors: only the relation task.*'count'"),
])
def test_bad_distance_and_distractor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(4, **kwargs)
