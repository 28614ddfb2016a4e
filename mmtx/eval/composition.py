"""Text-to-image composition: does a generated shapes scene show what its caption asked for?

The GenEval idea (Ghosh et al. 2023) on the shapes data. A prompt names one object ("a large red
circle") or two and where the first lies ("a small red circle to the left of a large blue
square"). Each generated image is read by the shapes judge (mmtx.eval.judge, trained on real
lone objects only):

- one object: the judge reads the whole image (a lone object, as it was trained on);
- two objects: the two largest foreground components, cut out alone and magnified
  (mmtx.eval.consistency.split_objects, the same cut-out as the consistency measure), are read
  one by one; each is matched to the prompt object it agrees with on more attributes (shape,
  colour, size), and the relation is read from their centres with the captions' own rule
  (mmtx.data.scene_text.spatial). A scene without two components gets every object wrong.

Per image: for each attribute the fraction of prompt objects drawn with it right, `relation`
(two-object prompts only) and `prompt`, everything right. Run it on the real images of the same
prompts for the measure's ceiling: sizes of two-object scenes, magnified, are the weakest
reading.
"""

from __future__ import annotations

import torch

from ..data.scene_text import spatial
from .consistency import split_objects

ATTRIBUTES = ("shape", "colour", "size")


def _check(images: torch.Tensor, scenes: list) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor (N, C, H, W), got {got}")
    if len(scenes) != images.shape[0]:
        raise ValueError(f"scenes: expected one per image ({images.shape[0]}), got {len(scenes)}")
    for i, objs in enumerate(scenes):
        if len(objs) not in (1, 2):
            raise ValueError(f"scenes[{i}]: expected 1 or 2 objects, got {len(objs)}")
        for o in objs:
            missing = [k for k in (*ATTRIBUTES, "x", "y") if k not in o]
            if missing:
                raise ValueError(f"scenes[{i}]: each object needs shape, colour, size, x and "
                                 f"y; missing {missing}")


def _read(judge, images: torch.Tensor) -> dict[str, list[str]]:
    """The judge's reading of each image: {attribute: [name per image]}."""
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        logits = judge.eval().predict(images)
    return {a: [judge.names[a][k] for k in logits[a].argmax(-1).tolist()] for a in ATTRIBUTES}


def _centres(alone: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(M, 2, C, H, W) objects cut out in place -> their centres (M, 2, (x, y)) in pixels."""
    fg = (alone - background).abs().amax(2) > 1e-6  # (M, 2, H, W)
    H, W = fg.shape[-2:]
    ys = torch.arange(H, dtype=torch.float32)[:, None] + 0.5  # pixel centres
    xs = torch.arange(W, dtype=torch.float32)[None, :] + 0.5
    area = fg.sum((-2, -1)).clamp(min=1)  # (M, 2)
    return torch.stack([(fg * xs).sum((-2, -1)) / area, (fg * ys).sum((-2, -1)) / area], -1)


@torch.no_grad()
def composition(judge, images: torch.Tensor, scenes: list, background=(-1.0, -1.0, -1.0),
                zoom: float = 1.5, **split_kw) -> dict[str, torch.Tensor]:
    """Per-image scores of generated `images` (N, C, H, W) in [-1, 1] against their prompts'
    `scenes` (an item's attributes["objects"] each: 1 or 2 dicts with shape, colour, size, x,
    y): {"shape", "colour", "size": fraction of the prompt's objects right (N,), "relation":
    (N,) with NaN for one-object prompts, "prompt": (N,) 1.0 when everything is right}."""
    _check(images, scenes)
    images = images.detach().float().cpu()
    n = images.shape[0]
    out = {k: torch.zeros(n) for k in (*ATTRIBUTES, "prompt")}
    out["relation"] = torch.full((n,), float("nan"))
    one = [i for i, s in enumerate(scenes) if len(s) == 1]
    two = [i for i, s in enumerate(scenes) if len(s) == 2]
    if one:
        seen = _read(judge, images[one])
        for j, i in enumerate(one):
            right = [seen[a][j] == scenes[i][0][a] for a in ATTRIBUTES]
            for a, r in zip(ATTRIBUTES, right):
                out[a][i] = float(r)
            out["prompt"][i] = float(all(right))
    if two:
        bg = torch.tensor(background, dtype=torch.float32).reshape(1, 1, -1, 1, 1)
        zoomed, found = split_objects(images[two], background, zoom=zoom, **split_kw)
        alone, _ = split_objects(images[two], background, zoom=1.0, **split_kw)
        centres = _centres(alone, bg)  # (M, 2, 2)
        seen = _read(judge, zoomed.flatten(0, 1))  # 2M readings: image j's objects at 2j, 2j+1
        for j, i in enumerate(two):
            if not found[j]:
                out["relation"][i] = 0.0
                continue
            read = [{a: seen[a][2 * j + k] for a in ATTRIBUTES} for k in (0, 1)]
            want = scenes[i]
            agree = [[sum(r[a] == w[a] for a in ATTRIBUTES) for r in read] for w in want]
            # prompt object 0 takes component 0 unless the swapped matching agrees on more
            order = (1, 0) if agree[0][1] + agree[1][0] > agree[0][0] + agree[1][1] else (0, 1)
            right = {a: [read[order[k]][a] == want[k][a] for k in (0, 1)] for a in ATTRIBUTES}
            for a in ATTRIBUTES:
                out[a][i] = sum(right[a]) / 2
            c = centres[j]
            drawn = spatial({"x": float(c[order[0], 0]), "y": float(c[order[0], 1])},
                            {"x": float(c[order[1], 0]), "y": float(c[order[1], 1])})
            rel = drawn == spatial(want[0], want[1])
            out["relation"][i] = float(rel)
            out["prompt"][i] = float(rel and all(all(r) for r in right.values()))
    return out


def summarize(scores: dict[str, torch.Tensor], rows=None) -> dict[str, float]:
    """Mean of each score over `rows` (indices; default all); relation over its two-object
    prompts only (NaN when there are none)."""
    idx = torch.arange(len(scores["prompt"])) if rows is None else torch.as_tensor(rows)
    out = {}
    for key, values in scores.items():
        v = values[idx]
        v = v[~v.isnan()]
        out[key] = float(v.mean()) if len(v) else float("nan")
    out["images"] = int(len(idx))
    return out
