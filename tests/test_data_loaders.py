"""Real-data loaders on small files the tests write: digits, torchvision (MNIST format), image
folders, image-caption folders; build_dataset's contract; transforms presets."""

import json
import logging
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from mmtx.data import (
    DigitsDataset,
    ImageCaptionFolder,
    ShapesDataset,
    build_dataset,
    build_transforms,
    list_datasets,
)

# --- digits -------------------------------------------------------------------------------------


def test_digits_fixed_stratified_disjoint_split():
    parts = {s: DigitsDataset(s) for s in ("train", "val", "test")}
    rows = [set(ds.source_indices.tolist()) for ds in parts.values()]
    assert sum(map(len, rows)) == 1797 and len(set.union(*rows)) == 1797  # disjoint, complete
    assert [len(ds) for ds in parts.values()] == [1258, 180, 359]
    for ds in parts.values():  # stratified: every class near its 10% share
        counts = np.bincount(ds.labels, minlength=10) / len(ds)
        assert np.all(np.abs(counts - 0.1) < 0.02)
    assert DigitsDataset("test").source_indices.tolist() == parts["test"].source_indices.tolist()


def test_digits_items_match_sklearn():
    from sklearn.datasets import load_digits

    ds, raw = DigitsDataset("val"), load_digits()
    item, row = ds[5], ds.source_indices[5]
    assert item["image"].shape == (1, 8, 8) and item["label"] == raw.target[row]
    expected = (torch.from_numpy(raw.images[row]).float() / 16 - ds.mean[0]) / ds.std[0]
    assert torch.allclose(item["image"][0], expected, atol=1e-6)
    assert (ds.num_classes, ds.in_chans, ds.image_size) == (10, 1, 8)
    # Train-split statistics are what the normalisation uses.
    train = torch.stack([x["image"] for x in DigitsDataset("train")])
    assert abs(train.mean().item()) < 0.01 and abs(train.std().item() - 1) < 0.01


# --- torchvision datasets on files written here (MNIST's idx format, no pickle) -----------------


def _write_idx(path, array: np.ndarray) -> None:
    # idx header: two zero bytes, dtype code 0x08 (uint8), ndim, then big-endian dims.
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                     *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root, folder="MNIST", n_train=40, n_test=20):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28))
        images[:, 0, 0] = np.arange(n)  # a per-image tag to check splits
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_loader_on_written_files(tmp_path, name, folder):
    _fake_mnist(tmp_path, folder)
    parts = {s: build_dataset(name, s, root=tmp_path) for s in ("train", "val", "test")}
    assert [len(ds) for ds in parts.values()] == [36, 4, 20]
    train_tags = {parts["train"].base.data[i, 0, 0].item() for i in parts["train"].indices}
    val_tags = {parts["val"].base.data[i, 0, 0].item() for i in parts["val"].indices}
    assert not train_tags & val_tags and len(train_tags | val_tags) == 40
    item = parts["test"][3]
    assert item["image"].shape == (1, 28, 28) and item["label"] == 3
    raw = parts["test"].base.data[3].float() / 255
    assert torch.allclose(item["image"][0], (raw - parts["test"].mean[0]) / parts["test"].std[0],
                          atol=1e-5)
    ds = parts["train"]
    assert (ds.num_classes, ds.in_chans, ds.image_size, len(ds.class_names)) == (10, 1, 28, 10)
    assert build_dataset(name, "test", root=tmp_path, image_size=32)[0]["image"].shape == (1, 32,
                                                                                           32)


@pytest.mark.parametrize("name, where", [("cifar10", "cifar-10-batches-py"),
                                         ("cifar100", "cifar-100-python"), ("mnist", "MNIST/raw")])
def test_missing_files_say_where_to_put_them(tmp_path, name, where):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset(name, root=tmp_path)
    assert str(tmp_path / where) in str(err.value) and "download=True" in str(err.value)


@pytest.mark.parametrize("name, module", [("cifar10", "cifar"), ("mnist", "mnist")])
def test_offline_download_is_a_clear_error(tmp_path, monkeypatch, name, module):
    import importlib

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(importlib.import_module(f"torchvision.datasets.{module}"),
                        "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match="no network") as err:
        build_dataset(name, root=tmp_path, download=True)
    assert str(tmp_path) in str(err.value)


# --- image folders ------------------------------------------------------------------------------


def _png(path, value, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 0)).save(path)


def _image_tree(root, classes=("cat", "dog"), n=10):
    for c, name in enumerate(classes):
        for i in range(n):
            _png(root / name / f"{i}.png", 10 * i + c)


def test_image_folder_splits_and_items(tmp_path):
    _image_tree(tmp_path)
    parts = {s: build_dataset("image_folder", s, root=tmp_path, image_size=16)
             for s in ("train", "val", "test")}
    files = [{p for p, _ in ds.samples} for ds in parts.values()]
    assert [len(f) for f in files] == [14, 2, 4] and len(set.union(*files)) == 20
    ds = parts["train"]
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2 and ds.in_chans == 3
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["label"] in (0, 1)
    assert sorted(set(ds.labels)) == [0, 1]


def test_image_folder_with_split_folders(tmp_path):
    _image_tree(tmp_path / "train")
    _image_tree(tmp_path / "test", n=3)
    test = build_dataset("image_folder", "test", root=tmp_path)
    train, val = (build_dataset("image_folder", s, root=tmp_path) for s in ("train", "val"))
    assert len(test) == 6 and len(train) + len(val) == 20 and len(val) == 2
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}


def test_image_folder_bad_file_raises_or_is_skipped_and_logged(tmp_path, caplog):
    _image_tree(tmp_path / "train", n=4)
    bad = tmp_path / "train" / "cat" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="broken.png"):
        build_dataset("image_folder", "train", root=tmp_path)
    with caplog.at_level(logging.WARNING):
        ds = build_dataset("image_folder", "train", root=tmp_path, skip_bad=True)
    assert all("broken.png" not in p for p, _ in ds.samples) and len(ds.skipped) == 1
    assert "broken.png" in caplog.text and "skipped 1" in caplog.text


def test_image_folder_needs_root(tmp_path):
    with pytest.raises(ValueError, match="root"):
        build_dataset("image_folder")
    with pytest.raises(FileNotFoundError, match="nothing"):
        build_dataset("image_folder", root=tmp_path / "nothing")


# --- image-caption folders ----------------------------------------------------------------------


def _caption_folder(root, n_images=10, captions_per_image=3, labels=False):
    lines = []
    for i in range(n_images):
        _png(root / "img" / f"{i}.png", 20 * i)
        for k in range(captions_per_image):
            line = {"image": f"img/{i}.png", "caption": f"picture {i} take {k}"}
            if labels:
                line["label"] = "even" if i % 2 == 0 else "odd"
            lines.append(json.dumps(line))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return lines


def test_caption_folder_items(tmp_path):
    _caption_folder(tmp_path)
    ds = ImageCaptionFolder(tmp_path, image_size=16)
    assert len(ds) == 30 and len(ds.images) == 10 and ds.num_classes == 10
    item = ds[4]
    assert item["image"].shape == (3, 16, 16) and item["caption"] == "picture 1 take 1"
    assert item["image_id"] == item["label"] == 1
    same_image = [ds[i]["image_id"] for i in range(len(ds)) if ds[i]["caption"].startswith(
        "picture 1 ")]
    assert same_image == [1, 1, 1]


def test_caption_folder_labels_and_splits(tmp_path):
    _caption_folder(tmp_path, labels=True)
    parts = {s: build_dataset("caption_folder", s, root=tmp_path) for s in ("train", "val", "test")}
    images = [set(ds.images) for ds in parts.values()]
    assert [len(i) for i in images] == [8, 1, 1] and len(set.union(*images)) == 10
    assert all(len(ds) == 3 * len(ds.images) for ds in parts.values())  # captions stay together
    ds = parts["train"]
    assert ds.class_names == ["even", "odd"] and ds.num_classes == 2
    assert all(ds[i]["label"] == ("odd" in ds.class_names[ds.labels[i]]) for i in range(len(ds)))


def test_caption_folder_split_subfolders(tmp_path):
    _caption_folder(tmp_path / "train", n_images=4)
    _caption_folder(tmp_path / "val", n_images=2, captions_per_image=1)
    assert len(build_dataset("caption_folder", "val", root=tmp_path)) == 2
    assert len(build_dataset("caption_folder", "train", root=tmp_path)) == 12


@pytest.mark.parametrize("line, message, error", [
    ("{not json", "not valid JSON", ValueError),
    ('{"image": "img/0.png"}', "missing key", ValueError),
    ('{"caption": "x"}', "missing key", ValueError),
    ('{"image": "img/0.png", "caption": "   "}', "empty caption", ValueError),
    ('["img/0.png", "x"]', "JSON object", ValueError),
    ('{"image": "img/none.png", "caption": "x"}', "none.png", FileNotFoundError),
    ('{"image": "img/bad.png", "caption": "x"}', "bad.png", ValueError),
])
def test_caption_folder_bad_lines_name_file_and_line(tmp_path, caplog, line, message, error):
    lines = _caption_folder(tmp_path, n_images=3, captions_per_image=1)
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG broken")
    lines.insert(1, line)
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(error, match=message) as err:
        ImageCaptionFolder(tmp_path)
    assert "captions.jsonl:2" in str(err.value)
    with caplog.at_level(logging.WARNING):
        ds = ImageCaptionFolder(tmp_path, skip_bad=True)
    assert len(ds) == 3 and len(ds.skipped) == 1 and ds.skipped[0][0].endswith("captions.jsonl:2")
    assert "captions.jsonl:2" in caplog.text and "skipped 1 bad line" in caplog.text


def test_caption_folder_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        ImageCaptionFolder(tmp_path)


# --- build_dataset contract ---------------------------------------------------------------------


def test_unknown_name_lists_valid_names_nearest_first():
    with pytest.raises(ValueError) as err:
        build_dataset("shaeps")
    message = str(err.value)
    assert "'shaeps'" in message and message.split("first): ")[1].startswith("shapes")
    assert all(name in message for name in list_datasets())
    with pytest.raises(ValueError, match="cifar10"):
        build_dataset("cifar-10")


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "dev"}, "split"), ({"fraction": 0.0}, "fraction"), ({"fraction": 1.5}, "fraction"),
    ({"augment": "heavy"}, "augment"), ({"bogus": 1}, "bogus"),
])
def test_build_dataset_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_dataset("digits", **kwargs)


def test_every_dataset_has_the_contract_attributes(tmp_path):
    _fake_mnist(tmp_path)
    _image_tree(tmp_path / "folder")
    _caption_folder(tmp_path / "captions")
    datasets = [build_dataset("shapes", num_samples=8), build_dataset("digits"),
                build_dataset("mnist", root=tmp_path),
                build_dataset("image_folder", root=tmp_path / "folder", image_size=8),
                build_dataset("caption_folder", root=tmp_path / "captions", image_size=8)]
    for ds in datasets:
        assert isinstance(ds.num_classes, int) and isinstance(ds.in_chans, int)
        assert isinstance(ds.image_size, int) and len(ds.class_names) == ds.num_classes
        item = ds[0]
        assert item["image"].dtype == torch.float32
        assert item["image"].shape == (ds.in_chans, ds.image_size, ds.image_size)
        assert isinstance(item["label"], int) and 0 <= item["label"] < ds.num_classes


def test_fraction_is_stratified_deterministic_and_train_only():
    full = build_dataset("digits", "train")
    sub = build_dataset("digits", "train", fraction=0.1, seed=1)
    assert len(sub) == round(0.1 * len(full)) and sub.num_classes == 10
    assert np.all(np.bincount(sub.labels, minlength=10) >= 11)  # every class ~12-13
    again = build_dataset("digits", "train", fraction=0.1, seed=1)
    assert sub.indices == again.indices
    assert sub.indices != build_dataset("digits", "train", fraction=0.1, seed=2).indices
    bigger = build_dataset("digits", "train", fraction=0.5, seed=1)
    assert set(sub.indices) <= set(bigger.indices)  # nested: curves compare like with like
    assert len(build_dataset("digits", "test", fraction=0.1)) == len(DigitsDataset("test"))
    shapes = build_dataset("shapes", "train", num_samples=600, task="count", fraction=0.25)
    labels = ShapesDataset(600, task="count").labels
    assert len(shapes) == 150 and shapes.labels == [labels[i] for i in shapes.indices]
    assert np.all(np.abs(np.bincount(shapes.labels) / 150 - np.bincount(labels) / 600) < 0.01)


# --- transforms -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shapes", "digits", "cifar10", "fashion_mnist", "image_folder"])
@pytest.mark.parametrize("preset", ["none", "light", "strong"])
def test_transform_presets_keep_shape_and_normalise(name, preset):
    size = {"digits": 8, "fashion_mnist": 28}.get(name, 32)
    chans = 1 if name in ("digits", "fashion_mnist") else 3
    pipeline = build_transforms(name, preset, size, train=True)
    image = torch.randint(0, 256, (chans, 40 if name == "image_folder" else size, 40 if
                                   name == "image_folder" else size), dtype=torch.uint8)
    torch.manual_seed(0)
    out = pipeline(image)
    assert out.shape == (chans, size, size) and out.dtype == torch.float32
    eval_out = build_transforms(name, preset, size, train=False)(image)
    assert torch.equal(eval_out, build_transforms(name, "none", size)(image))  # eval: no augment


def test_augment_applies_to_train_split_only():
    train = build_dataset("shapes", "train", num_samples=4, augment="strong")
    test = build_dataset("shapes", "test", num_samples=4, augment="strong")
    plain = build_dataset("shapes", "test", num_samples=4)
    assert torch.equal(test[0]["image"], plain[0]["image"])
    torch.manual_seed(0)
    first = train[0]["image"]
    assert not torch.equal(first, train[0]["image"])  # random each time


def test_bad_transform_arguments():
    with pytest.raises(ValueError, match="preset"):
        build_transforms("shapes", "medium")
    with pytest.raises(ValueError, match="dataset_name"):
        build_transforms("imagenet")
