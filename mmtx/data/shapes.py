"""The embedded default dataset: procedurally drawn, captioned scenes of simple shapes.

Nothing is downloaded: each item is drawn on the fly from its own random stream, seeded by
(seed, split, index), so an item is the same on every machine and in every worker, and the
train / val / test streams never share a scene. Tasks label the same kind of scene differently:

- "shape", "colour", "size": one object (by default); the label is its attribute.
- "shape_colour": one object (by default); the label is the (shape, colour) pair,
  shape_index * num_colours + colour_index, named "red circle": the classes of a
  class-conditional image generator (6 x 8 = 48 by default).
- "count": 1-3 objects (by default); the label is how many (class 0 = "one").
- "relation": two objects at least 0.45 of the image side apart; the label says whether they are
  the same shape. Deciding needs both far-apart objects at once, which is what attention is credited
  with and what a stack of small convolutions only reaches deep in the network. `distance=(lo, hi)`
  sets the range of their centre-to-centre distance instead (fractions of the side), and
  `distractors=n` (or a (min, max) range) adds small grey objects that are not part of the pair.
- "twins": two objects at least 0.45 of the image side apart that always share shape and colour
  (drawn at random per scene; sizes drawn apart), so nothing but the scene itself says what the
  second object must look like: the "two eyes" test of a generator's global consistency. The
  label says whether the sizes match ("different sizes", "same size"); it names neither shape
  nor colour.
- "caption" (or "captions"): two objects for captioning and contrastive training; the caption has
  no prefix, object 1 lies clearly to one side of object 0 (the larger offset at least twice the
  smaller one), and the label is that relation ("left", "right", "above", "below").

Captions describe the whole scene ("a small red circle to the left of a large blue square") and
always name the labelled attribute: count and relation captions start with it ("two shapes: ...",
"same shape: ...").

`exclude=["red star", ...]` keeps those colour-shape combinations out of every scene (a scene that
would hold one is drawn again from the same stream): held out of a generator's training
captions, they can test whether it composes attributes it never saw together.

Opt-in extras per item: `return_objects=True` adds each object's pixel mask and box,
`return_foils=True` adds foil captions (see mmtx/data/scene_text.py); collate() pads the
per-object tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io import atomic_path, write_json
from .placement import PLACE_TRIES, place, place_at_distance, shrink
from .render import BOUND, COLOURS, SHAPES, Obj, add_clutter, mask_boxes, object_masks, render
from .scene_text import (
    FOIL_KINDS,
    NUMBERS,
    SPATIAL,
    check_foil_kinds,
    make_caption,
    make_foils,
    spatial,
)
from .shape_args import (
    REDRAWS,
    check_classes_drawn,
    check_distance,
    check_distractors,
    check_drawable,
    check_exclude,
)

log = logging.getLogger(__name__)

TASKS = ("shape", "colour", "size", "count", "relation", "caption", "shape_colour", "twins")
_ALIASES = {"color": "colour", "captions": "caption", "shape_color": "shape_colour"}
SPLITS = ("train", "val", "test")
DEFAULT_NUM_SAMPLES = {"train": 10_000, "val": 1_000, "test": 2_000}
DEFAULT_NUM_OBJECTS = {"shape": (1, 1), "colour": (1, 1), "size": (1, 1), "count": (1, 3),
                       "relation": (2, 2), "caption": (2, 2), "shape_colour": (1, 1),
                       "twins": (2, 2)}
# Radius ranges as fractions of the image side, by how crowded the scene is: lone objects are
# drawn big so the default shape task is easy to read at 32 px.
_RADII = {1: {"small": (0.17, 0.22), "large": (0.28, 0.36)},
          2: {"small": (0.14, 0.17), "large": (0.19, 0.24)},
          3: {"small": (0.12, 0.15), "large": (0.16, 0.20)}}
MEAN = (0.5, 0.5, 0.5)  # images are mapped to [-1, 1], convenient for generators too
STD = (0.5, 0.5, 0.5)


DISTRACTOR_COLOUR = "grey"
_GREY = (0.5, 0.5, 0.5)


def shapes_vocabulary() -> list[str]:
    """Every word and mark a shapes caption can use, so a WordTokenizer built from it never
    meets <unk> on any split: WordTokenizer(shapes_vocabulary())."""
    words = ["a", "and", "the", "to", "of", "left", "right", "above", "below", "same",
             "different", "shape", "shapes", "small", "large", ",", ":"]
    return words + list(NUMBERS[1:]) + list(SHAPES) + list(COLOURS)


class ShapesDataset(Dataset):
    """Captioned shape scenes; items are dicts with image, label, caption and attributes.

    Args:
        num_samples: items in this split (default 10,000 train, 1,000 val, 2,000 test), or a
            dict per split ({"train": 40000}: the other splits keep their defaults).
        image_size: side in pixels (square images, 3 channels).
        split: "train", "val" or "test"; each split has its own random streams.
        seed: dataset seed; (seed, split, index) fixes an item.
        task: "shape", "colour" (or "color"), "size", "count", "relation", "caption" or
            "shape_colour" (or "shape_color"; the label is shape * len(colours) + colour).
        num_objects: an int or a (min, max) range; the default depends on the task.
        shapes, colours: subsets of the available names (default all).
        noise: std of Gaussian pixel noise in [0, 1] units (default 0: clean).
        clutter: number of grey specks/strokes per image (default 0).
        colour_jitter: uniform RGB jitter of each object colour.
        cache: False; True renders every item into memory once; a directory path also stores
            the rendered split there (uint8 .npy + JSON, reloaded without unpickling).
        transform: applied to the uint8 (3, H, W) image tensor; default maps to [-1, 1].
        return_objects: add `object_masks`, bool (n, H, W): the pixels showing each object (its
            pixel centre inside the shape; noise and clutter ignored), and `object_boxes`,
            float (n, 4): their tight (x0, y0, x1, y1) boxes in pixels, x1/y1 exclusive. Both
            are on the rendered image's pixel grid: a transform that moves pixels (augment)
            does not move them. Objects are in the order of attributes["objects"].
        return_foils: True or a list of foil kinds ("swap_attributes", "swap_objects",
            "reverse_relation"): add `foil_<kind>`, the foil caption or None where impossible
            (see make_foils).
        distance: relation task only: (lo, hi), the range of the distance between the centres of
            the pair (objects 0 and 1) as fractions of the image side, 0 < lo <= hi <= 1
            (default None: at least 0.45 apart). Objects too large for a short distance are
            shrunk until they fit. Items then carry attributes["distance"] (the measured one).
        distractors: relation task only: an int or a (min, max) range of extra small grey
            objects (colour "grey", after the pair in attributes["objects"]); default 0.
        exclude: colour-shape names ("red star") that no object of any scene has (default none).
    """

    def __init__(self, num_samples: int | None = None, image_size: int = 32, split: str = "train",
                 seed: int = 0, task: str = "shape", *, num_objects=None, shapes=None,
                 colours=None, noise: float = 0.0, clutter: int = 0, colour_jitter: float = 0.05,
                 background=(0.0, 0.0, 0.0), cache=False, transform=None,
                 return_objects: bool = False, return_foils=False, distance=None,
                 distractors=0, exclude=None):
        task = _ALIASES.get(task, task)
        if task not in TASKS:
            raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
        if isinstance(num_samples, dict):  # per split, e.g. {"train": 40000}; others default
            unknown = sorted(set(num_samples) - set(SPLITS))
            if unknown:
                raise ValueError(f"num_samples: keys must be splits ({', '.join(SPLITS)}), got "
                                 f"{unknown}")
            num_samples = num_samples.get(split)
        if num_samples is None:
            num_samples = DEFAULT_NUM_SAMPLES[split]
        if int(num_samples) < 1:
            raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
        if int(image_size) < 8:
            raise ValueError(f"image_size: expected an int >= 8, got {image_size!r}")
        self.shapes = tuple(shapes or SHAPES)
        self.colours = tuple(colours or COLOURS)
        for arg, got, valid in (("shapes", self.shapes, SHAPES),
                                ("colours", self.colours, COLOURS)):
            bad = [g for g in got if g not in valid]
            if bad:
                raise ValueError(f"{arg}: expected names from {', '.join(valid)}, got {bad}")
        lo, hi = DEFAULT_NUM_OBJECTS[task] if num_objects is None else (
            (num_objects, num_objects) if isinstance(num_objects, int) else tuple(num_objects))
        if not 1 <= lo <= hi <= 9:
            raise ValueError(f"num_objects: expected an int or (min, max) within 1..9, "
                             f"got {num_objects!r}")
        if task in ("relation", "caption", "twins") and lo < 2:
            raise ValueError(f"num_objects: the {task} task needs >= 2 objects, got {lo}")
        if task == "relation" and len(self.shapes) < 2:
            raise ValueError("shapes: the relation task needs at least two shapes")
        if noise < 0 or clutter < 0:
            raise ValueError(f"noise and clutter: expected >= 0, got {noise!r} and {clutter!r}")
        self.distance = check_distance(distance, task)
        self.distractors = check_distractors(distractors, task)
        self.exclude = check_exclude(exclude, self.shapes, self.colours)
        check_drawable(self.exclude, self.shapes, self.colours, task, (lo, hi))
        check_classes_drawn(self.exclude, self.shapes, self.colours, task)

        self.num_samples, self.image_size, self.split = int(num_samples), int(image_size), split
        self.seed, self.task, self.num_objects = int(seed), task, (lo, hi)
        self.noise, self.clutter, self.colour_jitter = float(noise), int(clutter), colour_jitter
        self.background = tuple(float(b) for b in background)
        self.transform = transform
        self.return_objects = bool(return_objects)
        self.return_foils = () if return_foils is False or return_foils is None else (
            FOIL_KINDS if return_foils is True else check_foil_kinds(return_foils))
        # index -> (objects, foil captions) of items whose pixels come from the cache: redrawing
        # the scene and its foils was a fifth of a hard-negative CLIP's training step
        self._opt_in_memo: dict[int, tuple[list[Obj], dict]] = {}
        self.in_chans, self.mean, self.std = 3, MEAN, STD
        self.class_names = {
            "shape": list(self.shapes), "colour": list(self.colours), "size": ["small", "large"],
            "count": [NUMBERS[n] for n in range(1, hi + 1)], "relation": ["different", "same"],
            "caption": ["left", "right", "above", "below"],
            "shape_colour": [f"{c} {s}" for s in self.shapes for c in self.colours],
            "twins": ["different sizes", "same size"],
        }[task]
        self.num_classes = len(self.class_names)
        self._labels: list[int] | None = None
        self._images: np.ndarray | None = None  # (N, H, W, 3) uint8 when cached
        self._meta: list[dict] | None = None
        if cache:
            self._build_cache(None if cache is True else Path(cache).expanduser())

    # --- scenes -------------------------------------------------------------------------------
    def _rng(self, index: int) -> np.random.Generator:
        # Same stream as np.random.default_rng([...]) with less call overhead.
        return np.random.Generator(np.random.PCG64([self.seed, SPLITS.index(self.split), index]))

    def _sample_scene(self, rng: np.random.Generator) -> list[Obj]:
        objects = self._draw_scene(rng)
        # An excluded combination: draw again from the same stream. Only when `exclude` is set,
        # so every other scene is what it always was.
        for _ in range(REDRAWS):
            if not any((o.colour, o.shape) in self.exclude for o in objects):
                return objects
            objects = self._draw_scene(rng)
        raise ValueError(f"exclude: no scene without {list(self.exclude)} in {REDRAWS:,} draws")

    def _draw_scene(self, rng: np.random.Generator) -> list[Obj]:
        lo, hi = self.num_objects
        n = int(rng.integers(lo, hi + 1))
        shapes = [self.shapes[i] for i in rng.integers(0, len(self.shapes), n)]
        if self.task == "relation":  # balanced same / different, other objects free
            if rng.random() < 0.5:
                shapes[1] = shapes[0]
            else:
                others = [s for s in self.shapes if s != shapes[0]]
                shapes[1] = others[int(rng.integers(0, len(others)))]
        colours = [self.colours[i] for i in rng.integers(0, len(self.colours), n)]
        if self.task == "twins":  # no extra draws: every other task's streams stay as they were
            shapes[1], colours[1] = shapes[0], colours[0]
        sizes = ["large" if b else "small" for b in rng.random(n) < 0.5]
        side = self.image_size
        ranges = _RADII[min(n, 3)]
        lo_hi = np.array([ranges[s] for s in sizes])  # (n, 2) radius range per object
        radii = rng.uniform(lo_hi[:, 0], lo_hi[:, 1]) * side
        extra = 0
        if self.distractors[1]:  # drawn after the pair's own draws: default streams unchanged
            extra = int(rng.integers(self.distractors[0], self.distractors[1] + 1))
            shapes += [self.shapes[i] for i in rng.integers(0, len(self.shapes), extra)]
            colours += [DISTRACTOR_COLOUR] * extra
            sizes += ["small"] * extra
            radii = np.concatenate([radii, rng.uniform(*_RADII[3]["small"], extra) * side])
            lo_hi = np.concatenate([lo_hi, np.tile(_RADII[3]["small"], (extra, 1))])
            n += extra
        extent = np.array([BOUND[s] for s in shapes])  # farthest extent of each shape per radius
        # Relation and twins scenes keep their first two objects at least 0.45 of the side apart.
        far = 0.45 * side if self.task in ("relation", "twins") else 0.0
        clear = self.task == "caption"
        for attempt in range(PLACE_TRIES):
            if self.distance is None:
                pos = place(rng, radii * extent, side, far, clear)
            else:
                pos = place_at_distance(rng, radii * extent, side, self.distance)
            if pos is not None:
                break
            radii = shrink(radii, lo_hi[:, 0] * side, attempt)
        if pos is None:
            raise RuntimeError(f"could not place {n} objects in a {side} px image")
        rgb = np.array([COLOURS.get(c, _GREY) for c in colours])  # (n, 3)
        rgb = np.clip(rgb + rng.uniform(-self.colour_jitter, self.colour_jitter, (n, 3)), 0, 1)
        return [Obj(shapes[i], colours[i], sizes[i], float(pos[i][0]), float(pos[i][1]),
                    float(radii[i]), tuple(rgb[i].tolist())) for i in range(n)]

    def label_of(self, objects: list[Obj]) -> int:
        if self.task == "shape":
            return self.shapes.index(objects[0].shape)
        if self.task == "colour":
            return self.colours.index(objects[0].colour)
        if self.task == "size":
            return int(objects[0].size == "large")
        if self.task == "shape_colour":
            return (self.shapes.index(objects[0].shape) * len(self.colours)
                    + self.colours.index(objects[0].colour))
        if self.task == "count":
            return len(objects) - 1
        if self.task == "caption":
            return SPATIAL.index(spatial(objects[0], objects[1]))
        if self.task == "twins":
            return int(objects[0].size == objects[1].size)
        return int(objects[0].shape == objects[1].shape)  # relation

    def scene(self, index: int) -> list[Obj]:
        """The objects of item `index` (no rendering)."""
        return self._sample_scene(self._rng(self._check_index(index)))

    def _check_index(self, index: int) -> int:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} items")
        return index % self.num_samples

    def render_uint8(self, index: int) -> tuple[np.ndarray, list[Obj]]:
        """Item `index` as a (H, W, 3) uint8 array and its objects."""
        rng = self._rng(self._check_index(index))
        objects = self._sample_scene(rng)
        img = render(objects, self.image_size, self.background)
        if self.clutter:
            add_clutter(img, rng, self.clutter)
        if self.noise:
            img += rng.normal(0.0, self.noise, img.shape).astype(np.float32)
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), objects

    @staticmethod
    def _attributes(objects: list[Obj]) -> dict:
        attrs = {
            "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size, "x": round(o.x, 2),
                         "y": round(o.y, 2), "radius": round(o.r, 2)} for o in objects],
            "count": len(objects),
        }
        if len(objects) > 1:
            attrs["relation"] = "same" if objects[0].shape == objects[1].shape else "different"
            attrs["spatial"] = spatial(objects[0], objects[1])
        return attrs

    def _item_attributes(self, objects: list[Obj]) -> dict:
        attrs = self._attributes(objects)
        if self.distance is not None:  # the pair's measured distance, a fraction of the side
            d = np.hypot(objects[0].x - objects[1].x, objects[0].y - objects[1].y)
            attrs["distance"] = round(float(d) / self.image_size, 4)
        return attrs

    @property
    def labels(self) -> list[int]:
        """Every item's label, from the scenes alone (used for stratified subsets)."""
        if self._labels is None:
            if self._meta is not None:
                self._labels = [m["label"] for m in self._meta]
            else:
                self._labels = [self.label_of(self.scene(i)) for i in range(self.num_samples)]
        return self._labels

    @property
    def captions(self) -> list[str]:
        """Every item's caption, from the scenes alone (e.g. to build a tokenizer)."""
        if self._meta is not None:
            return [m["caption"] for m in self._meta]
        return [make_caption(self.scene(i), self.task) for i in range(self.num_samples)]

    def vocabulary(self) -> list[str]:
        """Every word a caption of any split or task can use (`shapes_vocabulary`), so a
        tokenizer built from it reads every shapes caption (`VocabularyDataset`)."""
        return shapes_vocabulary()

    # --- cache --------------------------------------------------------------------------------
    def _config_key(self) -> str:
        cfg = [self.num_samples, self.image_size, self.split, self.seed, self.task,
               self.num_objects, self.shapes, self.colours, self.noise, self.clutter,
               self.colour_jitter, self.background, 2]  # last: renderer version
        if self.distance is not None or self.distractors[1]:  # default keys stay as they were
            cfg += [self.distance, self.distractors]
        if self.exclude:
            cfg += [self.exclude]
        return hashlib.sha1(repr(cfg).encode()).hexdigest()[:16]

    def _build_cache(self, directory: Path | None) -> None:
        if directory is not None:
            stem = directory / f"shapes-{self.split}-{self._config_key()}"
            npy, meta = stem.with_suffix(".npy"), stem.with_suffix(".json")
            if npy.exists() and meta.exists():
                self._images = np.load(npy, mmap_mode="r", allow_pickle=False)
                self._meta = json.loads(meta.read_text())
                log.info("shapes: loaded cached %s split from %s", self.split, npy)
                return
        side = self.image_size
        images = np.empty((self.num_samples, side, side, 3), dtype=np.uint8)
        metas = []
        for i in range(self.num_samples):
            images[i], objects = self.render_uint8(i)
            metas.append({"label": self.label_of(objects),
                          "caption": make_caption(objects, self.task),
                          "attributes": self._item_attributes(objects)})
        self._images, self._meta = images, metas
        if directory is not None:
            # Written under temporary names, then renamed (metadata last, as the loader checks
            # both): runs sharing the directory never read half a file.
            with atomic_path(npy) as tmp, open(tmp, "wb") as f:
                np.save(f, images, allow_pickle=False)
            write_json(meta, metas)
            log.info("shapes: cached %s split at %s", self.split, npy)

    @property
    def uses_global_rng(self) -> bool:
        """Whether items draw from the global RNGs: scenes come from their own seeded generator,
        so only a transform (an augmentation) can."""
        return self.transform is not None

    # --- Dataset ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        if self._images is not None:
            index = self._check_index(index)
            img, meta = np.array(self._images[index]), self._meta[index]  # copy: mmap is read-only
            label, caption, attrs = meta["label"], meta["caption"], meta["attributes"]
            objects = None
        else:
            img, objects = self.render_uint8(index)
            label, caption = self.label_of(objects), make_caption(objects, self.task)
            attrs = self._item_attributes(objects)
        image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)  # (3, H, W) uint8
        if self.transform is not None:
            image = self.transform(image)
        else:  # the default: [0, 255] -> [-1, 1], i.e. Normalize(MEAN, STD) after scaling
            image = image.float().mul_(2.0 / 255.0).sub_(1.0)
        item = {"image": image, "label": label, "caption": caption, "attributes": attrs}
        if self.return_objects or self.return_foils:
            item.update(self._opt_in_keys(index, objects))
        return item

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """Items for a batch of indices (DataLoader calls this when it exists), equal to
        [self[i] for i in indices]. With cached pixels and no transform, the images are
        converted in one tensor operation rather than three per item: the per-item work was
        ~7% of a small model's training step."""
        if self._images is None or self.transform is not None:
            return [self[i] for i in indices]
        idx = [self._check_index(i) for i in indices]
        pixels = torch.from_numpy(self._images[idx])  # fancy indexing copies: (N, H, W, 3) uint8
        images = pixels.permute(0, 3, 1, 2).float().mul_(2.0 / 255.0).sub_(1.0).contiguous()
        items = [{"image": image, "label": m["label"], "caption": m["caption"],
                  "attributes": m["attributes"]}
                 for image, m in zip(images, (self._meta[i] for i in idx))]
        if self.return_objects or self.return_foils:
            for item, i in zip(items, idx):
                item.update(self._opt_in_keys(i, None))
        return items

    def _opt_in_keys(self, index: int, objects: list[Obj] | None) -> dict:
        """The opt-in keys (object masks and boxes, foils) of item `index`, whose objects are
        given when it was just rendered, None when its pixels came from the cache."""
        if objects is None:  # cached pixels: the scene is redrawn once, then remembered
            if index not in self._opt_in_memo:
                scene = self.scene(index)
                self._opt_in_memo[index] = scene, self._foils(scene)
            objects, foils = self._opt_in_memo[index]
        else:
            foils = self._foils(objects)
        out = dict(foils)
        if self.return_objects:
            masks = object_masks(objects, self.image_size)  # (n, H, W) bool
            out["object_masks"] = torch.from_numpy(masks)
            out["object_boxes"] = torch.from_numpy(mask_boxes(masks))  # (n, 4)
        return out

    def _foils(self, objects: list[Obj]) -> dict:
        if not self.return_foils:
            return {}
        return {f"foil_{kind}": foil
                for kind, foil in make_foils(objects, self.return_foils, self.task).items()}

    def __repr__(self) -> str:
        return (f"ShapesDataset(num_samples={self.num_samples}, image_size={self.image_size}, "
                f"split={self.split!r}, seed={self.seed}, task={self.task!r}, "
                f"num_objects={self.num_objects})")

