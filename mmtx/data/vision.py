"""Real image datasets through torchvision: CIFAR-10/100, MNIST, Fashion-MNIST, image folders.

The official train sets are split once more into train and a stratified 10% val (fixed seed, so
val never changes between runs); "test" is the official test set. Without the files and without
`download=True`, loading raises FileNotFoundError that says which files go where.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch.utils.data import Dataset
from tqdm import tqdm

from .base import SPLITS, check_split, load_rgb, stratified_split, verify_image
from .transforms import STATS, build_transforms

log = logging.getLogger(__name__)

VAL_FRACTION = 0.1
SPLIT_SEED = 0

# name -> (torchvision class name, folder under root, what a user must put there)
TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                "data_batch_1..5, test_batch and batches.meta (cifar-10-python.tar.gz, "
                "extracted)"),
    "cifar100": ("CIFAR100", "cifar-100-python",
                 "train, test and meta (cifar-100-python.tar.gz, extracted)"),
    "mnist": ("MNIST", "MNIST/raw",
              "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
              "t10k-labels-idx1-ubyte (gunzipped)"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw",
                      "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                      "t10k-labels-idx1-ubyte (gunzipped)"),
}


def default_root() -> Path:
    """$MMTX_DATA_ROOT, else ~/.cache/mmtx/data."""
    return Path(os.environ.get("MMTX_DATA_ROOT", "~/.cache/mmtx/data")).expanduser()


def _open_torchvision(name: str, root: Path, train: bool, download: bool):
    import torchvision.datasets as tvd

    cls_name, folder, files = TORCHVISION[name]
    where = root / folder
    hint = (f"put {files} in {where} (root={str(root)!r}), or pass download=True "
            "on a machine with network access")
    try:
        return getattr(tvd, cls_name)(str(root), train=train, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted" / download errors
        raise FileNotFoundError(f"{name}: dataset files not found or incomplete: {hint}"
                                + (f" (download failed: {e})" if download else "")) from None
    except OSError as e:  # urllib errors when offline are OSErrors
        raise FileNotFoundError(f"{name}: could not download ({e}); {hint}") from None


class TorchvisionDataset(Dataset):
    """A torchvision classification dataset as mmtx items: dicts with `image` and `label`."""

    def __init__(self, name: str, split: str = "train", root=None, download: bool = False,
                 transform=None, image_size: int | None = None):
        if name not in TORCHVISION:
            raise ValueError(f"name: expected one of {', '.join(TORCHVISION)}, got {name!r}")
        self.name, self.split = name, check_split(split)
        root = Path(root).expanduser() if root is not None else default_root()
        self.base = _open_torchvision(name, root, train=split != "test", download=download)
        targets = [int(t) for t in self.base.targets]
        if split == "test":
            self.indices = list(range(len(targets)))
        else:
            parts = stratified_split(targets, {"val": VAL_FRACTION}, seed=SPLIT_SEED)
            self.indices = parts[split].tolist()
        self._labels = [targets[i] for i in self.indices]
        stats = STATS[name]
        self.mean, self.std = stats.mean, stats.std
        self.image_size = int(image_size or stats.image_size)
        self.in_chans = len(stats.mean)
        self.class_names = list(self.base.classes)
        self.num_classes = len(self.class_names)
        self.transform = transform or build_transforms(name, "none", self.image_size, train=False)

    @property
    def labels(self) -> list[int]:
        return self._labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        image, label = self.base[self.indices[i]]  # PIL image, int
        return {"image": self.transform(image), "label": int(label)}

    def __repr__(self) -> str:
        return f"TorchvisionDataset({self.name!r}, split={self.split!r}, n={len(self)})"


def check_images(paths, what: str) -> dict[str, str]:
    """Verify image files; returns {path: reason} for the bad ones (progress bar when many)."""
    paths = list(dict.fromkeys(paths))
    bad = {}
    for p in tqdm(paths, desc=f"checking {what}", disable=len(paths) < 2000, leave=False):
        reason = verify_image(Path(p))
        if reason is not None:
            bad[p] = reason
    return bad


def bad_file_error(where: str, reason: str) -> Exception:
    """The error for a bad file: FileNotFoundError when missing, else ValueError."""
    cls = FileNotFoundError if reason == "file not found" else ValueError
    return cls(f"{where}: {reason} (pass skip_bad=True to skip bad files)")


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file `path` leads to; None when it cannot be stat'ed (a broken
    link: the image check reports it)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk(top: str, seen: dict[str, str], folder: Path):
    """(folder path, sorted file names) under `top` (inside `folder`), links followed, in
    os.walk's top-down order. `seen` maps each real folder read so far to the path it was read
    by; reaching one a second time (a link back to a folder above, which would list the same
    files without end, or a second path to a folder already read) is refused, naming both
    paths."""
    limit = os.path.realpath(folder)
    for root, subdirs, names in os.walk(top, followlinks=True):
        real = os.path.realpath(root)
        if real in seen or os.path.commonpath([real, limit]) == real:
            first = seen.get(real, str(folder))
            raise ValueError(f"root: {root} is the folder {real}, already read as {first} (a "
                             f"symbolic link loop, or two paths to one folder); remove the link "
                             f"so that each image is read once")
        seen[real] = root
        subdirs.sort()
        yield root, sorted(n for n in names if not n.startswith("."))


def list_image_folder(folder: Path) -> tuple[list[str], list[tuple[str, int]], dict]:
    """(classes, [(path, class index)], {(device, inode): path}) of a class-per-subfolder tree,
    in torchvision ImageFolder's order (so its splits are unchanged), hidden files left out.

    Symbolic links are followed, but each real folder and each real file is read once: a loop
    or a second path to a folder or file already read (link or hard link) is refused, naming
    both paths. Otherwise one file would be several items, and could land in train and test."""
    from torchvision.datasets.folder import find_classes

    classes, _ = find_classes(str(folder))
    samples, files, seen = [], {}, {}
    for index, name in enumerate(classes):
        for root, names in sorted(_walk(os.path.join(folder, name), seen, folder)):
            for file in names:
                path = os.path.join(root, file)
                key = _file_id(path)
                if key is not None and key in files:
                    raise ValueError(f"root: {path} and {files[key]} are the same file (a link "
                                     f"or hard link); remove one so that the image is one item")
                if key is not None:
                    files[key] = path
                samples.append((path, index))
    empty = sorted(set(classes) - {classes[t] for _, t in samples})
    if empty:
        raise FileNotFoundError(f"no image file in the class folder(s) {', '.join(empty)}")
    return classes, samples, files


def _check_disjoint(folder: Path, files: dict, others: list[Path]) -> None:
    """Refuse a file of split folder `folder` (files: {(device, inode): path}) that another
    split folder also holds, through a link or a hard link: it would be trained and tested on."""
    for other in others:
        if not other.is_dir():
            continue
        for root, names in _walk(str(other), {}, other.parent):
            for name in names:
                path = os.path.join(root, name)
                if _file_id(path) in files:
                    raise ValueError(f"root: {files[_file_id(path)]} and {path} are the same "
                                     f"file in two splits ({folder.name} and {other.name}); "
                                     f"keep it in one")


class ImageFolderDataset(Dataset):
    """Class-per-subfolder images (torchvision's ImageFolder layout) as mmtx items.

    Splits: root/train, root/val and root/test when those folders exist (a missing val is carved
    from train, 10% stratified); a root without split folders is split 70/10/20 stratified.
    Every file is checked at construction: a bad one raises naming it, or with `skip_bad=True`
    is logged and left out, and `self.skipped` lists them.
    """

    def __init__(self, root, split: str = "train", transform=None, image_size: int | None = None,
                 skip_bad: bool = False):
        self.root, self.split = Path(root).expanduser(), check_split(split)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: image folder {self.root} does not exist")
        folder, carve = self.root, {"val": 0.1, "test": 0.2}  # no split folders: 70/10/20
        if (self.root / "train").is_dir():
            has_val = (self.root / "val").is_dir()
            if split != "test" and not has_val:  # val carved from train
                folder, carve = self.root / "train", {"val": VAL_FRACTION}
            elif (self.root / split).is_dir():
                folder, carve = self.root / split, None
            else:
                raise FileNotFoundError(f"root: {self.root} has a train folder but no {split}")
        try:  # every file is listed here, so that broken ones are reported, not dropped
            classes, samples, files = list_image_folder(folder)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"root: {folder}: {e}") from None
        if len(classes) < 2:  # every label the same: any model scores 100%
            raise ValueError(f"root: {folder} has {len(classes)} class folder(s) "
                             f"{classes}; expected at least 2 (root/<class>/<image>)")
        if folder != self.root:  # split folders: none may hold a file of another
            _check_disjoint(folder, files, [self.root / s for s in SPLITS
                                            if self.root / s != folder])
        if carve is not None:
            keep = stratified_split([t for _, t in samples], carve, seed=SPLIT_SEED)[split]
            samples = [samples[i] for i in keep]
        bad = check_images([p for p, _ in samples], str(folder))
        if bad and not skip_bad:
            raise bad_file_error(*next(iter(bad.items())))
        for p, reason in bad.items():
            log.warning("skipping %s: %s", p, reason)
        if bad:
            log.warning("skipped %d of %d files in %s", len(bad), len(samples), folder)
        self.skipped = list(bad.items())
        self.samples = [(p, t) for p, t in samples if p not in bad]
        stats = STATS["image_folder"]
        self.mean, self.std, self.in_chans = stats.mean, stats.std, 3
        self.image_size = int(image_size or stats.image_size)
        self.class_names = list(classes)
        self.num_classes = len(self.class_names)
        self.transform = transform or build_transforms("image_folder", "none", self.image_size,
                                                       train=False)

    @property
    def labels(self) -> list[int]:
        return [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        path, label = self.samples[i]
        return {"image": self.transform(load_rgb(path)), "label": label}

    def __repr__(self) -> str:
        return f"ImageFolderDataset({str(self.root)!r}, split={self.split!r}, n={len(self)})"
