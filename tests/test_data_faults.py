"""Data faults on real files: symbolic-link loops and second paths to one file (never one file
in two splits), FIFOs and folders where an image should be (refused without opening them),
decompression bombs, and shapes `exclude` lists that leave no scene drawable."""

import json
import os
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from mmtx.data import ImageCaptionFolder, ImageFolderDataset, ShapesDataset, stratified_split
from mmtx.data.base import load_rgb, verify_image
from mmtx.data.render import COLOURS, SHAPES

pytestmark = pytest.mark.usefixtures("single_thread")


def _tree(root, classes=("a", "b"), n=10):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = (20 * i, 100 if c == "b" else 0, 0)
            Image.new("RGB", (8, 8), colour).save(root / c / f"{i}.png")


def _inodes(ds):
    return {os.stat(p).st_ino for p, _ in ds.samples}


@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_symlink_loop_is_refused_naming_the_link(tmp_path, skip_bad):
    _tree(tmp_path)
    os.symlink("..", tmp_path / "a" / "loop")  # a/loop/a/loop/... lists every file again
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=rf"root: {tmp_path}/a/loop is the folder "
                                             rf"{tmp_path}, already read as .*remove the link"):
            ImageFolderDataset(tmp_path, split=split, skip_bad=skip_bad)


def test_two_paths_to_one_folder_or_file_are_refused_naming_both(tmp_path):
    _tree(tmp_path / "x")
    os.symlink("../b", tmp_path / "x" / "a" / "alias")  # b's files again, under class a
    with pytest.raises(ValueError, match=r"x/b is the folder .*/x/b, already read as "
                                         r".*x/a/alias \(a symbolic link loop, or two paths"):
        ImageFolderDataset(tmp_path / "x")
    _tree(tmp_path / "y")
    os.symlink(tmp_path / "y" / "b" / "3.png", tmp_path / "y" / "a" / "copy.png")
    with pytest.raises(ValueError, match=r"y/b/3.png and .*y/a/copy.png are the same file"):
        ImageFolderDataset(tmp_path / "y")
    _tree(tmp_path / "z")
    os.link(tmp_path / "z" / "a" / "1.png", tmp_path / "z" / "a" / "hard.png")
    with pytest.raises(ValueError, match=r"z/a/hard.png and .*z/a/1.png are the same file"):
        ImageFolderDataset(tmp_path / "z")


def test_one_file_in_two_split_folders_is_refused(tmp_path):
    _tree(tmp_path / "train")
    _tree(tmp_path / "test", n=3)
    os.link(tmp_path / "train" / "a" / "7.png", tmp_path / "test" / "a" / "7b.png")
    for split in ("train", "val", "test"):
        with pytest.raises(ValueError, match=r"(7.png and .*7b.png|7b.png and .*7.png) are "
                                             r"the same file in two splits"):
            ImageFolderDataset(tmp_path, split=split)


def test_linked_images_are_each_one_item_and_splits_share_no_file(tmp_path):
    # every image a link to a file elsewhere, one class folder a link too: all read once
    _tree(tmp_path / "store", n=15)
    (tmp_path / "data" / "a").mkdir(parents=True)
    for i in range(15):
        os.symlink(tmp_path / "store" / "a" / f"{i}.png", tmp_path / "data" / "a" / f"{i}.png")
    os.symlink(tmp_path / "store" / "b", tmp_path / "data" / "b")
    parts = [_inodes(ImageFolderDataset(tmp_path / "data", split=s))
             for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [21, 3, 6]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_the_splitter_gives_every_index_exactly_one_part():
    labels = np.random.default_rng(0).integers(0, 7, 1001)
    parts = stratified_split(labels, {"val": 0.1, "test": 0.2}, seed=3)
    every = np.concatenate(list(parts.values()))
    assert sorted(every.tolist()) == list(range(1001))


def test_caption_folder_splits_one_image_by_its_file_not_its_path(tmp_path):
    lines = []
    for i in range(30):
        Image.new("RGB", (8, 8), (8 * i, 0, 0)).save(tmp_path / f"{i}.png")
        os.symlink(tmp_path / f"{i}.png", tmp_path / f"link{i}.png")
        for name in (f"{i}.png", f"./{i}.png", f"link{i}.png"):  # three paths, one image
            lines.append(json.dumps({"image": name, "caption": f"image {i}"}))
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    splits = [ImageCaptionFolder(tmp_path, split=s) for s in ("train", "val", "test")]
    files = [{os.path.realpath(p) for p in ds.images} for ds in splits]
    assert [len(f) for f in files] == [24, 3, 3] and len(set.union(*files)) == 30
    assert all(len(ds) == 3 * len(f) for ds, f in zip(splits, files))


class _Unblock:
    """Opens the FIFO for writing once a reader waits on it, so that a test of code that opens
    it fails on its message instead of hanging."""

    def __init__(self, fifo):
        self.fifo, self.done = str(fifo), False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.done:
            try:
                os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: nobody reads it (the case under test)
                time.sleep(0.05)

    def __enter__(self):
        self.thread.start()

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()


def test_a_fifo_among_images_is_refused_without_opening_it(tmp_path):
    _tree(tmp_path, n=4)
    os.mkfifo(tmp_path / "a" / "pipe.png")
    with _Unblock(tmp_path / "a" / "pipe.png"):
        with pytest.raises(ValueError, match=r"a/pipe.png: is a FIFO, not a regular file"):
            ImageFolderDataset(tmp_path, split="test")
        ds = ImageFolderDataset(tmp_path, split="train", skip_bad=True)
        assert [p.endswith("pipe.png") for p, _ in ds.skipped] in ([True], [])
        with pytest.raises(ValueError, match="pipe.png: is a FIFO"):
            load_rgb(tmp_path / "a" / "pipe.png")
    assert verify_image(tmp_path / "a") == "is a directory, not an image file"


def _png_header(path, width, height):
    """A PNG that claims width x height grey pixels (a few hundred bytes: a decompression
    bomb as far as the header goes; PIL reads no further before refusing it)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [10_000, 30_000])  # PIL warns at 89M pixels, refuses at 179M
def test_a_decompression_bomb_is_refused_naming_it(tmp_path, side):
    _tree(tmp_path, n=4)
    _png_header(tmp_path / "b" / "bomb.png", side, side)
    with pytest.raises(ValueError, match=rf"b/bomb.png: refused: Image size \({side ** 2} "
                                         r"pixels\) exceeds limit"):
        ImageFolderDataset(tmp_path, split="test")
    with pytest.raises(ValueError, match=r"bomb.png: refused"):
        load_rgb(tmp_path / "b" / "bomb.png")


def _all_but(*keep):
    return [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in keep]


@pytest.mark.parametrize("task, exclude, expected", [
    ("caption", _all_but("red circle"), r"1 of 48 colour-shape combinations \(red "
     r"circle\), and caption scenes of 2 objects would take about 2,304 draws each"),
    ("count", _all_but("blue star"), r"count scenes of 1-3 objects would take about 141"),
    ("relation", [f"{c} {s}" for c in COLOURS for s in SHAPES if s != "circle"],
     r"relation scenes with different shapes of 2 objects can never be drawn"),
])
def test_an_exclude_list_leaving_no_drawable_scene_is_refused_at_construction(task, exclude,
                                                                              expected):
    with pytest.raises(ValueError, match=rf"^exclude: leaves .*{expected}"):
        ShapesDataset(num_samples=4, task=task, exclude=exclude)  # before any scene is drawn


@pytest.mark.parametrize("task, exclude, never", [
    ("shape", [f"{c} star" for c in COLOURS], "star"),
    ("colour", [f"red {s}" for s in SHAPES], "red"),
    ("shape_colour", ["red star", "blue circle"], "blue circle, red star"),
])
def test_an_exclude_list_that_leaves_a_class_undrawn_is_refused(task, exclude, never):
    with pytest.raises(ValueError, match=rf"^exclude: leaves {task} classes that no scene can "
                                         rf"show: {never}; exclude fewer"):
        ShapesDataset(num_samples=4, task=task, exclude=exclude)
    ShapesDataset(num_samples=4, task="size", exclude=exclude)  # a label that names neither


def test_an_exclude_list_that_leaves_enough_draws_every_scene():
    held = ["red circle", "blue square", "green star"]
    ds = ShapesDataset(num_samples=50, task="caption", exclude=held)
    drawn = {f"{o['colour']} {o['shape']}" for i in range(50) for o in
             ds[i]["attributes"]["objects"]}
    assert drawn and not drawn & set(held)
