"""Image-caption folders: the COCO-style data users bring.

Layout: a folder with images and a `captions.jsonl`, one JSON object per line,
`{"image": "a.png", "caption": "a dog on a sofa"}` (image paths relative to the folder; an
image may have several lines, one per caption; an optional "label" gives a class). Splits come
from `train/`, `val/`, `test/` subfolders with their own captions.jsonl when they exist;
otherwise the images (never single captions, so no image leaks across splits) are split
80/10/10 with a fixed seed.

Every line and every image is checked at construction. A bad one raises an error naming the file
and line; with `skip_bad=True` each is logged and left out, `self.skipped` lists them and a
summary reports the count. Blank lines are the only thing passed over without a word.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..io import read_utf8
from .base import SPLITS, load_rgb
from .transforms import STATS, build_transforms
from .vision import bad_file_error, check_images

log = logging.getLogger(__name__)

SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
SPLIT_SEED = 0


def read_captions(path: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Parse a captions.jsonl: ([{"image", "caption", "label"?, "line"}], [(where, reason)])."""
    rows, errors = [], []
    for lineno, line in enumerate(read_utf8(path, "captions").split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append((where, f"not valid JSON ({e.msg})"))
            continue
        if not isinstance(obj, dict):
            errors.append((where, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        missing = [k for k in ("image", "caption") if k not in obj]
        if missing:
            errors.append((where, f"missing key(s) {missing}; expected 'image' and 'caption'"
                                  f", got {sorted(obj)}"))
            continue
        if not isinstance(obj["image"], str) or not obj["image"].strip():
            errors.append((where, f"'image' must be a non-empty path, got {obj['image']!r}"))
            continue
        if not isinstance(obj["caption"], str) or not obj["caption"].strip():
            errors.append((where, f"empty caption for {obj['image']!r}"))
            continue
        rows.append({"image": obj["image"], "caption": obj["caption"].strip(),
                     "label": obj.get("label"), "line": lineno})
    return rows, errors


class ImageCaptionFolder(Dataset):
    """Images with captions; one item per caption line.

    Items: `image` (3, S, S) normalised float, `caption` str, `image_id` int (index into
    `self.images`; captions of one image share it, the positives for retrieval) and `label`:
    the line's "label" (classes = sorted distinct labels) when every line has one, else the
    image_id. split=None takes every line.
    """

    def __init__(self, root, skip_bad: bool = False, split: str | None = None, transform=None,
                 image_size: int | None = None, captions_file: str = "captions.jsonl"):
        self.root = Path(root).expanduser()
        if split is not None and split not in SPLITS:
            raise ValueError(f"split: expected None or one of {', '.join(SPLITS)}, got {split!r}")
        self.split, self.skip_bad = split, skip_bad
        own = self.root / split / captions_file if split else None
        path = own if own is not None and own.is_file() else self.root / captions_file
        if not path.is_file():
            raise FileNotFoundError(f"root: expected {captions_file} in {self.root}, found none "
                                    "(lines like {\"image\": \"a.png\", \"caption\": \"...\"})")
        self.captions_path = path
        rows, errors = read_captions(path)
        if errors and not skip_bad:
            where, reason = errors[0]
            raise ValueError(f"{where}: {reason} (pass skip_bad=True to skip bad lines; "
                             f"{len(errors)} bad line(s) in all)")
        for where, reason in errors:
            log.warning("skipping %s: %s", where, reason)
        self.skipped = list(errors)
        base = path.parent
        rows = self._check_images(rows, base)
        if split is not None and path == self.root / captions_file:
            rows = self._split_rows(rows, split)
        if self.skipped:
            log.warning("skipped %d bad line(s) of %s", len(self.skipped), path)
        if not rows:
            raise ValueError(f"{path}: no usable caption lines (split={split!r})")
        self.images = sorted({r["path"] for r in rows})
        image_ids = {p: i for i, p in enumerate(self.images)}
        self.rows = [dict(r, image_id=image_ids[r["path"]]) for r in rows]
        if all(r["label"] is not None for r in self.rows):
            self.class_names = sorted({str(r["label"]) for r in self.rows})
            index = {c: i for i, c in enumerate(self.class_names)}
            self._labels = [index[str(r["label"])] for r in self.rows]
        else:
            self.class_names = [str(Path(p).relative_to(base)) for p in self.images]
            self._labels = [r["image_id"] for r in self.rows]
        self.num_classes = len(self.class_names)
        stats = STATS["caption_folder"]
        self.mean, self.std, self.in_chans = stats.mean, stats.std, 3
        self.image_size = int(image_size or stats.image_size)
        self.transform = transform or build_transforms("caption_folder", "none", self.image_size,
                                                       train=False)

    def _check_images(self, rows: list[dict], base: Path) -> list[dict]:
        for r in rows:
            r["path"] = str(base / r["image"])
        bad = check_images([r["path"] for r in rows], str(base))
        kept = []
        for r in rows:
            if r["path"] not in bad:
                kept.append(r)
                continue
            where, reason = f"{self.captions_path}:{r['line']}", bad[r["path"]]
            if not self.skip_bad:
                raise bad_file_error(f"{where}: image {r['path']}", reason)
            log.warning("skipping %s: image %s: %s", where, r["path"], reason)
            self.skipped.append((where, f"image {r['image']!r}: {reason}"))
        return kept

    @staticmethod
    def _split_rows(rows: list[dict], split: str) -> list[dict]:
        # by the file each path leads to: "a.png", "./a.png" or a link to it is one image
        images = sorted({os.path.realpath(r["path"]) for r in rows})
        order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
        n_train = int(round(len(images) * SPLIT_FRACTIONS["train"]))
        n_val = int(round(len(images) * SPLIT_FRACTIONS["val"]))
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
                  "test": (n_train + n_val, len(images))}[split]
        chosen = {images[i] for i in order[bounds[0] : bounds[1]]}
        return [r for r in rows if os.path.realpath(r["path"]) in chosen]

    @property
    def labels(self) -> list[int]:
        return self._labels

    @property
    def captions(self) -> list[str]:
        return [r["caption"] for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        image = self.transform(load_rgb(row["path"]))
        return {"image": image, "label": self._labels[i], "caption": row["caption"],
                "image_id": row["image_id"]}

    def __repr__(self) -> str:
        return (f"ImageCaptionFolder({str(self.root)!r}, split={self.split!r}, "
                f"captions={len(self)}, images={len(self.images)})")
