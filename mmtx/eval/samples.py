"""The judged-sample suite of a generation run on shapes or digits data, and generation.json.

`SampleSuite` holds what judging generated images needs: the training scenes' options (a
`ShapesDataset`) or the training digits (a `DigitsDataset`, upscaled, in [-1, 1]), the
reference images (the test split of that data), the judge (trained on real images only,
mmtx.eval.judge) and what each image was asked to show. `judge_samples` takes
a sampling function, so it knows nothing of models or tasks:

    suite = SampleSuite(ShapesDataset(task="shape_colour"), judge=True, seed=0)
    suite.judge_samples(lambda cond, n: sample_images(model, cond, n), 256, cond="class",
                        num_classes=48)
    # {"sample_s_per_image", "fd_shapes", "fd_shapes_floor", "cond_acc_shape", ...}
    digits = SampleSuite(judge=True); digits.digits = DigitsDataset(image_size=16,
                                                                    normalize="symmetric")
    # ... judge_samples: {"fd_digits", "fd_digits_floor", "cond_acc_class", ...}

`generation_spec` / `read_generation_spec` write and read back generation.json, what
`mmtx sample` needs of a run beyond its model: image shape, classes, scenes or digits,
autoencoder.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data.digits import DigitsDataset
from ..data.shapes import ShapesDataset

# The ShapesDataset options that decide what the training scenes look like (generation.json).
SHAPES_KEYS = ("image_size", "seed", "task", "num_objects", "shapes", "colours", "noise",
               "clutter", "colour_jitter", "background")
DIGITS_KEYS = ("image_size", "normalize")  # the DigitsDataset options (generation.json)


def shapes_base(dataset) -> ShapesDataset | None:
    """The ShapesDataset behind `dataset` (itself or a subset's base), else None."""
    base = getattr(dataset, "base", dataset)
    return base if isinstance(base, ShapesDataset) else None


def digits_base(dataset) -> DigitsDataset | None:
    """The DigitsDataset behind `dataset` (itself or a subset's base), else None."""
    base = getattr(dataset, "base", dataset)
    return base if isinstance(base, DigitsDataset) else None


class SampleSuite:
    """Judged samples for a generation run: see the module docstring.

    shapes: the training scenes; digits: the training digits (normalize="symmetric"); with
    neither (other data) nothing is judged but the sampling time. judge: True, False or a dict
    of judge training options (mmtx.eval.judge.load_judge); seed: of the Frechet distance's
    subsampling."""

    def __init__(self, shapes: ShapesDataset | None = None, judge=True,
                 image_key: str = "image", seed: int = 0, digits: DigitsDataset | None = None):
        self.shapes, self.judge_opts, self.image_key, self.seed = shapes, judge, image_key, seed
        self.digits = digits
        self._judge, self._reference = None, None

    @property
    def data(self):
        """The judged training data: the shapes scenes, else the digits, else None."""
        return self.shapes if self.shapes is not None else self.digits

    @property
    def fd_name(self) -> str:
        """The key of the Frechet distance on the judge's features: fd_shapes or fd_digits."""
        return "fd_digits" if self.shapes is None and self.digits is not None else "fd_shapes"

    def reference(self, num: int):
        """The test split of the training data, `num` items (shapes; for digits the whole
        test split, 359 images, whatever `num`)."""
        if self.shapes is None and self.digits is not None:
            if self._reference is None:
                ds = self.digits
                self._reference = DigitsDataset("test", image_size=ds.image_size,
                                                normalize=ds.normalize)
            return self._reference
        ds = self.shapes
        if ds is None:
            return None
        if self._reference is None or len(self._reference) < num:
            self._reference = ShapesDataset(
                num, image_size=ds.image_size, split="test", seed=ds.seed, task=ds.task,
                num_objects=ds.num_objects, shapes=ds.shapes, colours=ds.colours,
                noise=ds.noise, clutter=ds.clutter, colour_jitter=ds.colour_jitter,
                background=ds.background)
        return self._reference

    def judge(self):
        """The judge for this data and judge options (trained once, then cached); None
        without shapes or digits data or with judge: False."""
        if self._judge is None and self.judge_opts and self.data is not None:
            from .judge import load_judge

            opts = self.judge_opts if isinstance(self.judge_opts, dict) else {}
            self._judge = load_judge(self.data, **opts)
        return self._judge

    @property
    def background(self) -> tuple:
        """The scenes' background colour in the model's [-1, 1] pixel range."""
        return tuple(2 * b - 1 for b in self.shapes.background)

    def targets(self, cond: str, y: torch.Tensor | None, items: list[dict]) -> dict[int, dict]:
        """What each judged image was asked to show: {image index: {attribute: name}} (class
        conditions, or one-object captions)."""
        ds = self.shapes
        if ds is None:  # digits: the class asked for, by name
            if cond != "class" or self.digits is None:
                return {}
            return {i: {"class": self.digits.class_names[int(k)]} for i, k in enumerate(y)}
        if cond == "class":
            nc = len(ds.colours)
            per_task = {
                "shape_colour": lambda k: {"shape": ds.shapes[k // nc],
                                           "colour": ds.colours[k % nc]},
                "shape": lambda k: {"shape": ds.shapes[k]},
                "colour": lambda k: {"colour": ds.colours[k]},
                "size": lambda k: {"size": ("small", "large")[k]},
            }
            if ds.task not in per_task:
                return {}
            return {i: per_task[ds.task](int(k)) for i, k in enumerate(y)}
        out = {}
        for i, item in enumerate(items):  # captions: one-object scenes name all three
            objs = item["attributes"]["objects"]
            if len(objs) == 1:
                out[i] = {a: objs[0][a] for a in ("shape", "colour", "size")}
        return out

    @torch.no_grad()
    def judge_samples(self, sample, n: int, cond: str, num_classes: int = 0,
                      encode=None) -> dict:
        """The measures on `n` images from `sample(condition, n)` (classes evenly, or the
        first test captions through `encode(captions)`): fd_shapes (fd_digits) and its floor,
        cond_acc per attribute and its ceiling, sample_s_per_image, and on twins scenes
        consistency. Only sample_s_per_image without a judge or judged data."""
        result = {}
        if n == 0:
            return result
        ref = self.reference(2 * n)
        items = [ref[i] for i in range(min(n, len(ref)))] if ref is not None else []
        if cond == "caption":
            if ref is None:
                return result
            condition = encode([it["caption"] for it in items])
        elif cond == "class":
            condition = {"y": torch.arange(n) % num_classes}  # every class, evenly
        else:
            condition = None
        tic = time.perf_counter()
        fake = sample(condition, n)
        result["sample_s_per_image"] = (time.perf_counter() - tic) / n
        judge = self.judge()
        if judge is None or ref is None:
            return result
        from .generation import frechet_report

        real = torch.stack([ref[i][self.image_key] for i in range(len(ref))])
        with torch.autocast(fake.device.type, enabled=False):
            fd = frechet_report(real, fake.cpu(), judge.feature_extractor(), name=self.fd_name,
                                generator=torch.Generator().manual_seed(self.seed))
        result.update(fd)
        # twins scenes: do the two far-apart objects match?
        if self.shapes is not None and self.shapes.task == "twins":
            from .consistency import consistency

            bg = self.background
            result["consistency"] = consistency(judge, fake.cpu(), bg)["consistency"]
            result["consistency_ceiling"] = consistency(judge, real[:n], bg)["consistency"]
        targets = self.targets(cond, condition["y"] if cond == "class" else None, items)
        if targets:
            idx = sorted(targets)
            asked = judge.targets([targets[i] for i in idx])
            acc = judge.accuracy(fake[idx].cpu(), asked)
            for attr, value in acc.items():
                result[f"cond_acc_{attr}"] = value
                if attr in judge.ceiling:
                    result[f"cond_acc_{attr}_ceiling"] = judge.ceiling[attr]
            result["cond_acc_images"] = len(idx)
        return result


def generation_spec(image_shape, num_classes: int, class_names, shapes: ShapesDataset | None,
                    vae, digits: DigitsDataset | None = None) -> dict:
    """generation.json's content: what `mmtx sample` (and judging a run's samples again)
    needs without the training data."""
    return {"image_shape": list(image_shape), "num_classes": num_classes,
            "class_names": class_names,
            "shapes": None if shapes is None else {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in ((k, getattr(shapes, k)) for k in SHAPES_KEYS)},
            "digits": None if digits is None else {k: getattr(digits, k) for k in DIGITS_KEYS},
            "vae": None if vae is None else str(Path(vae).expanduser().resolve())}


def read_generation_spec(spec, where: str = "generation.json") -> dict:
    """generation.json's content, checked: {"image_shape": (C, H, W), "num_classes",
    "class_names" (list or None), "shapes" (a ShapesDataset or None), "digits" (a DigitsDataset,
    the train split, or None; absent in files written before it), "vae" (str or None)}. A
    missing or malformed key is a ValueError naming `where` and the key."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a JSON object with image_shape, num_classes, "
                         f"class_names, shapes, vae; got {type(spec).__name__}")
    for key in ("image_shape", "num_classes"):
        if key not in spec:
            raise ValueError(f"{where}: no {key!r}; expected the file a generation run writes "
                             f"when it finishes (image_shape, num_classes, class_names, ...)")
    shape = spec["image_shape"]
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"{where}: image_shape: expected [C, H, W] of positive ints, "
                         f"got {shape!r}")
    num = spec["num_classes"]
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise ValueError(f"{where}: num_classes: expected an int >= 0, got {num!r}")
    names = spec.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == num
                                  and all(isinstance(c, str) for c in names)):
        raise ValueError(f"{where}: class_names: expected a list of {num} names (num_classes), "
                         f"got {names!r}")
    vae = spec.get("vae")
    if vae is not None and not isinstance(vae, str):
        raise ValueError(f"{where}: vae: expected a folder name or null, got {vae!r}")
    shapes = spec.get("shapes")
    if shapes is not None:
        if not isinstance(shapes, dict) or set(shapes) - set(SHAPES_KEYS):
            raise ValueError(f"{where}: shapes: expected null or an object with some of "
                             f"{', '.join(SHAPES_KEYS)}, got {shapes!r}")
        try:
            shapes = ShapesDataset(1, **shapes)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: shapes: {e}") from None
    digits = spec.get("digits")
    if digits is not None:
        if not isinstance(digits, dict) or set(digits) != set(DIGITS_KEYS):
            raise ValueError(f"{where}: digits: expected null or an object with "
                             f"{', '.join(DIGITS_KEYS)}, got {digits!r}")
        try:
            digits = DigitsDataset(**digits)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: digits: {e}") from None
    return {"image_shape": tuple(shape), "num_classes": num, "class_names": names,
            "shapes": shapes, "digits": digits, "vae": vae}


def check_spec_fits(model_shape, image_shape, num_classes: int, args: dict,
                    where: str = "generation.json") -> None:
    """Refuse a restored generation.json that does not fit the model built with `args`
    (model.json): another class count, or images of another shape (`model_shape` is what the
    generator reads: the image's (C, H, W), or its latent's)."""
    c, h, w = model_shape
    for key, mine, what in (("in_chans", c, "image_shape"), ("img_size", h, "image_shape"),
                            ("num_classes", num_classes, "num_classes")):
        theirs = args.get(key)
        if key == "img_size" and isinstance(theirs, (list, tuple)):
            mine, theirs = [h, w], list(theirs)
        if theirs is not None and theirs != mine:
            value = list(image_shape) if what == "image_shape" else num_classes
            raise ValueError(f"{where}: {what} {value} does not fit the model, built with "
                             f"{key}={theirs!r} (model.json); expected the files of one run")
