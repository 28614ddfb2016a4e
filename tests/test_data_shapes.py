"""ShapesDataset: determinism, split disjointness, labels that agree with captions and pixels."""

import hashlib

import numpy as np
import pytest
import torch
from scipy import ndimage

from mmtx.data import ShapesDataset, build_dataset, build_transforms
from mmtx.data.render import COLOURS, SHAPES
from mmtx.data.shapes import NUMBERS


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.numpy().tobytes()).hexdigest()


def test_item_format_and_attributes():
    ds = ShapesDataset(10)
    item = ds[3]
    assert set(item) == {"image", "label", "caption", "attributes"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert isinstance(item["label"], int) and 0 <= item["label"] < ds.num_classes
    assert (ds.num_classes, ds.in_chans, ds.image_size) == (len(SHAPES), 3, 32)
    assert ds.class_names == list(SHAPES)
    assert item["attributes"]["objects"][0]["shape"] == ds.class_names[item["label"]]


def test_deterministic_per_seed_split_index():
    a, b = ShapesDataset(50, task="count"), ShapesDataset(50, task="count")
    # Order of access must not matter: item 7 alone equals item 7 after others.
    first = a[7]
    for i in range(10):
        b[i]
    second = b[7]
    assert torch.equal(first["image"], second["image"])
    assert first["caption"] == second["caption"] and first["label"] == second["label"]
    other_seed = ShapesDataset(50, task="count", seed=1)[7]
    assert not torch.equal(first["image"], other_seed["image"])


def test_splits_are_disjoint():
    train = ShapesDataset(400, split="train", task="count")
    val = ShapesDataset(400, split="val", task="count")
    test = ShapesDataset(400, split="test", task="count")
    hashes = [{_digest(ds[i]["image"]) for i in range(len(ds))} for ds in (train, val, test)]
    assert all(len(h) == 400 for h in hashes)  # no duplicate scenes within a split either
    assert not hashes[0] & hashes[1] and not hashes[0] & hashes[2] and not hashes[1] & hashes[2]


@pytest.mark.parametrize("task", ["shape", "colour", "size", "count", "relation"])
def test_caption_names_the_label(task):
    ds = ShapesDataset(200, task=task, split="val")
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        name, caption, objs = ds.class_names[item["label"]], item["caption"], item["attributes"]
        seen.add(item["label"])
        if task in ("shape", "colour", "size"):
            assert caption.split()[:4] == ["a", objs["objects"][0]["size"],
                                           objs["objects"][0]["colour"],
                                           objs["objects"][0]["shape"]]
            assert f" {name}" in caption
        elif task == "count":
            assert caption.startswith(f"{name} shape")
            assert name == NUMBERS[objs["count"]] and caption.count(" a ") == objs["count"]
        else:
            same = objs["objects"][0]["shape"] == objs["objects"][1]["shape"]
            assert name == ("same" if same else "different")
            assert caption.startswith("same shape:" if same else "different shapes:")
    assert seen == set(range(ds.num_classes))  # every class occurs


def test_spatial_words_match_positions():
    ds = ShapesDataset(100, task="relation")
    for i in range(len(ds)):
        a, b = ds[i]["attributes"]["objects"][:2]
        caption = ds[i]["caption"]
        dx, dy = a["x"] - b["x"], a["y"] - b["y"]
        if abs(dx) >= abs(dy):
            assert ("to the left of" if dx < 0 else "to the right of") in caption
        else:
            assert (" above " if dy < 0 else " below ") in caption


def test_relation_objects_are_far_apart():
    ds = ShapesDataset(100, task="relation")
    for i in range(len(ds)):
        a, b = ds[i]["attributes"]["objects"][:2]
        assert np.hypot(a["x"] - b["x"], a["y"] - b["y"]) >= 0.45 * ds.image_size - 1e-6


@pytest.mark.parametrize("task", ["caption", "twins"])
def test_size_words_match_the_drawn_sizes(task):
    # Objects that do not fit are moved before they are shrunk, and not shrunk below their size's
    # range: a "large" object drawn smaller than a "small" one would make the caption wrong.
    from mmtx.data.shapes import _RADII

    ds = ShapesDataset(1000, task=task, split="test")
    side, ranges = ds.image_size, _RADII[2]
    objects = [o for i in range(len(ds)) for o in ds.scene(i)]
    inside = [ranges[o.size][0] * side - 1e-6 <= o.r <= ranges[o.size][1] * side + 1e-6
              for o in objects]
    assert np.mean(inside) >= 0.99
    smallest_large = min(o.r for o in objects if o.size == "large")
    assert smallest_large > 0.9 * ranges["small"][1] * side


def test_count_label_matches_connected_components():
    # Pixels more than half covered have centres inside a shape, and shapes are >= 1.5 px apart,
    # so 8-connected components of those pixels are exactly the objects.
    ds = ShapesDataset(150, task="count", split="test")
    for i in range(len(ds)):
        img, objects = ds.render_uint8(i)
        _, n = ndimage.label(img.max(axis=-1) > 128, structure=np.ones((3, 3)))
        assert n == len(objects) == ds.labels[i] + 1


def test_colour_label_matches_centre_pixel():
    ds = ShapesDataset(60, task="colour", colour_jitter=0.0)
    for i in range(len(ds)):
        img, (obj,) = ds.render_uint8(i)
        pixel = img[int(obj.y), int(obj.x)] / 255.0
        assert np.allclose(pixel, COLOURS[ds.class_names[ds.labels[i]]], atol=0.01)


def test_labels_property_matches_items_and_is_balanced():
    ds = ShapesDataset(300, task="relation")
    assert ds.labels == [ds[i]["label"] for i in range(len(ds))]
    assert 0.35 < np.mean(ds.labels) < 0.65


def test_memory_and_disk_cache_match_generation(tmp_path):
    plain = ShapesDataset(20, task="count", noise=0.05, clutter=3)
    mem = ShapesDataset(20, task="count", noise=0.05, clutter=3, cache=True)
    disk = ShapesDataset(20, task="count", noise=0.05, clutter=3, cache=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    reloaded = ShapesDataset(20, task="count", noise=0.05, clutter=3, cache=tmp_path)
    for i in (0, 7, 19):
        ref = plain[i]
        for ds in (mem, disk, reloaded):
            assert torch.equal(ds[i]["image"], ref["image"])
            assert ds[i]["caption"] == ref["caption"] and ds[i]["label"] == ref["label"]
            assert ds[i]["attributes"] == ref["attributes"]


def test_default_normalisation_equals_the_none_pipeline():
    ds = ShapesDataset(5)
    pipeline = build_transforms("shapes", "none", 32)
    raw = torch.from_numpy(ds.render_uint8(2)[0]).permute(2, 0, 1)
    assert torch.allclose(pipeline(raw), ds[2]["image"], atol=1e-6)


def test_noise_and_clutter_change_pixels_but_not_labels():
    clean, noisy = ShapesDataset(10), ShapesDataset(10, noise=0.1, clutter=5)
    assert not torch.equal(clean[0]["image"], noisy[0]["image"])
    assert clean.labels == noisy.labels


def test_other_sizes_and_subsets():
    ds = ShapesDataset(10, image_size=64, shapes=["circle", "star"], colours=["red", "blue"])
    assert ds[0]["image"].shape == (3, 64, 64) and ds.class_names == ["circle", "star"]
    assert all(ds[i]["attributes"]["objects"][0]["colour"] in ("red", "blue") for i in range(10))


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "sahpe"}, "task"), ({"split": "dev"}, "split"), ({"num_samples": 0}, "num_samples"),
    ({"task": "relation", "num_objects": 1}, "num_objects"), ({"shapes": ["hexagon"]}, "shapes"),
    ({"image_size": 4}, "image_size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**{"num_samples": 10, **kwargs})


def test_index_out_of_range():
    with pytest.raises(IndexError):
        ShapesDataset(5)[5]


def test_build_dataset_shapes_options():
    ds = build_dataset("shapes", "test", num_samples=30, task="count", scene_seed=3)
    assert ds.seed == 3 and ds.task == "count" and len(ds) == 30
    with pytest.raises(ValueError, match="num_sample"):
        build_dataset("shapes", num_sample=10)


def test_a_cache_directory_is_shared_and_written_atomically(tmp_path):
    """Runs of an experiment share one rendered copy per split; no temporary file is left and
    a second dataset reads the files instead of drawing again."""
    first = ShapesDataset(split="val", num_samples=30, image_size=16, cache=tmp_path / "c")
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len(files) == 2 and not any(".tmp" in f for f in files)
    again = ShapesDataset(split="val", num_samples=30, image_size=16, cache=tmp_path / "c")
    assert isinstance(again._images, np.memmap)  # loaded, not drawn
    assert torch.equal(first[7]["image"], again[7]["image"])
    assert first[7]["label"] == again[7]["label"]


def test_collate_can_keep_only_the_keys_a_task_reads():
    from mmtx.data import collate

    ds = ShapesDataset(split="val", num_samples=4, image_size=16)
    batch = collate([ds[i] for i in range(4)], keys=("image", "label"))
    assert set(batch) == {"image", "label"} and batch["image"].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="item 0 has no \\['mask'\\]"):
        collate([ds[0]], keys=("image", "mask"))


def test_num_samples_per_split():
    sizes = {"train": 40, "test": 7}
    assert [len(ShapesDataset(num_samples=sizes, split=s)) for s in ("train", "val", "test")] \
        == [40, 1000, 7]  # val keeps its default
    with pytest.raises(ValueError, match=r"num_samples: keys must be splits .*\['trian'\]"):
        ShapesDataset(num_samples={"trian": 5})
