"""Two-object caption scenes, foil captions, object masks and boxes, and their collate."""

import random
import re

import numpy as np
import pytest
import torch

from mmtx.data import (
    FOIL_KINDS,
    CaptionCollate,
    ShapesDataset,
    WordTokenizer,
    build_dataset,
    collate,
    make_foils,
    shapes_vocabulary,
)
from mmtx.data.render import BOUND, Obj
from mmtx.data.scene_text import OPPOSITE, spatial

OPPOSITE_WORD = {"left": "right", "right": "left", "above": "below", "below": "above"}


def _obj(shape="circle", colour="red", size="small", x=8.0, y=16.0):
    return Obj(shape, colour, size, x, y, 4.0, (1.0, 0.0, 0.0))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[,:]", text)  # marks are words, as in WordTokenizer


def _diff(a: str, b: str) -> list[int]:
    """Word positions where a and b differ; the foils never change the number of words."""
    wa, wb = _words(a), _words(b)
    assert len(wa) == len(wb), (a, b)
    return [i for i, (x, y) in enumerate(zip(wa, wb)) if x != y]


def _spans(caption: str, attrs: dict) -> tuple[range, range, range]:
    """Word spans of subject, relation and object in a caption's first clause."""
    words = _words(caption)
    prefix = words.index(":") + 1 if ":" in words else 0
    rel = len(attrs["spatial"].split())
    subject = range(prefix, prefix + 4)  # "a small red circle"
    relation = range(subject.stop, subject.stop + rel)
    return subject, relation, range(relation.stop, relation.stop + 4)


def test_caption_task_two_objects_clear_relation():
    ds = ShapesDataset(300, task="caption", split="val")
    assert ds.class_names == ["left", "right", "above", "below"] and ds.num_objects == (2, 2)
    assert ShapesDataset(5, task="captions").task == "caption"
    tok = WordTokenizer(shapes_vocabulary())
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        a, b = item["attributes"]["objects"]
        words = item["caption"].split()
        assert words[:4] == ["a", a["size"], a["colour"], a["shape"]]  # no prefix
        assert words[-4:] == ["a", b["size"], b["colour"], b["shape"]]
        assert ds.class_names[item["label"]] in words
        seen.add(item["label"])
        off = sorted([abs(a["x"] - b["x"]), abs(a["y"] - b["y"])])
        assert off[1] >= 2.0 * off[0] - 0.02  # positions are rounded to 0.01 px
        assert tok.unk_id not in tok.encode(item["caption"])
    assert seen == set(range(4))
    with pytest.raises(ValueError, match="num_objects"):
        ShapesDataset(5, task="caption", num_objects=1)


@pytest.mark.parametrize("task, num_objects", [("caption", None), ("relation", None),
                                               ("count", (2, 3))])
def test_foils_differ_exactly_where_they_should(task, num_objects):
    ds = ShapesDataset(150, task=task, num_objects=num_objects, return_foils=True)
    made = dict.fromkeys(FOIL_KINDS, 0)
    for i in range(len(ds)):
        item = ds[i]
        caption, attrs = item["caption"], item["attributes"]
        subject, relation, obj = _spans(caption, attrs)
        words = _words(caption)
        for kind in FOIL_KINDS:
            foil = item[f"foil_{kind}"]
            if foil is None:
                continue
            made[kind] += 1
            fw, changed = _words(foil), _diff(caption, foil)
            if kind == "swap_attributes":  # exactly the two colour words, exchanged
                assert changed == [subject[2], obj[2]]
                assert (fw[subject[2]], fw[obj[2]]) == (words[obj[2]], words[subject[2]])
            elif kind == "swap_objects":  # the two noun phrases, exchanged; relation kept
                assert changed and set(changed) <= set(subject) | set(obj)
                assert fw[subject.start:subject.stop] == words[obj.start:obj.stop]
                assert fw[obj.start:obj.stop] == words[subject.start:subject.stop]
            else:  # one relation word, replaced by its opposite
                assert len(changed) == 1 and changed[0] in relation
                assert OPPOSITE_WORD[words[changed[0]]] == fw[changed[0]]
    assert all(n > 0.8 * len(ds) for n in made.values()), made


def test_two_object_foils_are_none_exactly_when_impossible():
    ds = ShapesDataset(400, task="caption", split="test", colours=["red", "blue"],
                       shapes=["circle", "square"])  # few names: many ties to check
    nones = dict.fromkeys(FOIL_KINDS, 0)
    for i in range(len(ds)):
        a, b = ds.scene(i)
        foils = make_foils([a, b])
        alike = (a.size, a.colour, a.shape) == (b.size, b.colour, b.shape)
        assert (foils["swap_attributes"] is None) == (a.colour == b.colour)
        assert (foils["swap_objects"] is None) == alike
        assert (foils["reverse_relation"] is None) == alike  # true of the other object
        for kind, foil in foils.items():
            nones[kind] += foil is None
    assert all(n > 0 for n in nones.values()), nones


def test_impossible_foils_by_hand():
    red_circle, blue_square = _obj(), _obj("square", "blue", "large", x=24.0)
    foils = make_foils([red_circle, blue_square])
    assert foils == {
        "swap_attributes": "a small blue circle to the left of a large red square",
        "swap_objects": "a large blue square to the left of a small red circle",
        "reverse_relation": "a small red circle to the right of a large blue square"}
    same_colour = make_foils([red_circle, _obj("square", "red", "large", x=24.0)])
    assert same_colour["swap_attributes"] is None and same_colour["swap_objects"] is not None
    assert make_foils([red_circle, _obj("square", x=24.0)], attribute="size")[
        "swap_attributes"] is None  # both small
    twins = make_foils([red_circle, _obj(x=24.0)])
    assert twins == dict.fromkeys(FOIL_KINDS)
    assert make_foils([red_circle]) == dict.fromkeys(FOIL_KINDS)  # nothing to relate
    # a third object that makes the changed clause true: a small blue circle left of a red
    # large square also exists, so the colour swap is no foil; the other two still are
    third = [red_circle, blue_square, _obj("circle", "blue", "small", x=4.0, y=26.0),
             _obj("square", "red", "large", x=28.0, y=26.0)]
    foils = make_foils(third, task="count")
    assert foils["swap_attributes"] is None
    assert foils["swap_objects"].startswith("four shapes: a large blue square to the left of")
    with pytest.raises(ValueError, match="kinds"):
        make_foils([red_circle, blue_square], kinds=["swap_colours"])
    with pytest.raises(ValueError, match="attribute"):
        make_foils([red_circle, blue_square], attribute="position")


def test_foils_from_item_attributes_and_kinds_subset():
    ds = ShapesDataset(30, task="caption", return_foils=["reverse_relation"])
    for i in range(len(ds)):
        item = ds[i]
        assert [k for k in item if k.startswith("foil_")] == ["foil_reverse_relation"]
        from_attrs = make_foils(item["attributes"], kinds="reverse_relation")
        assert from_attrs["reverse_relation"] == item["foil_reverse_relation"]
        a, b = item["attributes"]["objects"]
        assert OPPOSITE[spatial(a, b)] == spatial(b, a) == OPPOSITE[item["attributes"]["spatial"]]
    with pytest.raises(ValueError, match="kinds"):
        ShapesDataset(5, return_foils=["nope"])


@pytest.mark.parametrize("task, kwargs", [("caption", {}), ("count", {"num_objects": (1, 5)}),
                                          ("shape", {"image_size": 48})])
def test_masks_and_boxes_match_the_object_pixels(task, kwargs):
    ds = ShapesDataset(60, task=task, return_objects=True, **kwargs)
    side = ds.image_size
    for i in range(len(ds)):
        item = ds[i]
        img, objects = ds.render_uint8(i)
        masks, boxes = item["object_masks"], item["object_boxes"]
        assert masks.dtype == torch.bool and masks.shape == (len(objects), side, side)
        assert boxes.dtype == torch.float32 and boxes.shape == (len(objects), 4)
        masks, boxes, img = masks.numpy(), boxes.numpy(), img.astype(np.float64) / 255.0
        assert masks.sum(axis=0).max() <= 1  # no pixel belongs to two objects
        ys, xs = np.mgrid[0:side, 0:side] + 0.5  # pixel centres
        for o, m, box in zip(objects, masks, boxes):
            assert m.any() and m[int(o.y), int(o.x)]  # the centre pixel shows the object
            # inside the image and inside the object's bounding circle
            assert np.all(np.hypot(xs[m] - o.x, ys[m] - o.y) <= BOUND[o.shape] * o.r + 1e-3)
            rows, cols = np.nonzero(m)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert 0 <= box[0] < box[2] <= side and 0 <= box[1] < box[3] <= side
            # each mask pixel is this object's colour over more than half of the pixel (black
            # background): img = a * rgb with a > 0.5
            rgb = np.asarray(o.rgb)
            px = img[m]  # (k, 3)
            a = px @ rgb / (rgb @ rgb)
            assert a.min() >= 0.5 - 2 / 255
            assert np.abs(px - a[:, None] * rgb).max() <= 2 / 255
            assert a.max() > 0.99  # and some pixels are fully covered
        # every pixel outside the masks is at most half covered
        outside = ~masks.any(axis=0)
        brightest = max(max(o.rgb) for o in objects)
        assert img[outside].max() <= 0.5 * brightest + 2 / 255


def test_objects_and_foils_are_deterministic_and_cached_alike(tmp_path):
    kw = dict(task="caption", return_objects=True, return_foils=True)
    a, b = ShapesDataset(40, **kw), ShapesDataset(40, **kw)
    cached = ShapesDataset(40, cache=tmp_path, **kw)
    first = a[11]
    for i in range(12):
        b[i]
    for other in (b[11], cached[11], ShapesDataset(40, cache=tmp_path, **kw)[11]):
        assert set(other) == set(first)
        for key, value in first.items():
            same = torch.equal(value, other[key]) if isinstance(value, torch.Tensor) else (
                value == other[key])
            assert same, key
    changed = ShapesDataset(40, seed=1, **kw)[11]
    assert not torch.equal(first["object_masks"], changed["object_masks"])
    assert first["foil_swap_objects"] != changed["foil_swap_objects"]
    # the opt-in keys leave every existing key as it was
    plain = ShapesDataset(40, task="caption")[11]
    assert set(plain) == {"image", "label", "caption", "attributes"}
    assert all(torch.equal(plain[k], first[k]) if k == "image" else plain[k] == first[k]
               for k in plain)


def test_collate_pads_objects_and_lists_foils():
    ds = build_dataset("shapes", "test", num_samples=16, task="count", num_objects=(1, 3),
                       return_objects=True, return_foils=True)
    items = [ds[i] for i in range(8)]
    counts = [len(it["attributes"]["objects"]) for it in items]
    assert len(set(counts)) > 1  # ragged on purpose
    batch = CaptionCollate(WordTokenizer(shapes_vocabulary()))(items)
    n = max(counts)
    assert batch["object_masks"].shape == (8, n, 32, 32) and batch["object_masks"].dtype == (
        torch.bool)
    assert batch["object_boxes"].shape == (8, n, 4)
    assert batch["object_valid"].tolist() == [[j < c for j in range(n)] for c in counts]
    for b, it in enumerate(items):
        c = counts[b]
        assert torch.equal(batch["object_masks"][b, :c], it["object_masks"])
        assert not batch["object_masks"][b, c:].any() and not batch["object_boxes"][b, c:].any()
    for kind in FOIL_KINDS:  # one entry per item, None where the item has no such foil
        assert batch[f"foil_{kind}"] == [it[f"foil_{kind}"] for it in items]
    assert any(c == 1 for c in counts) and None in batch["foil_swap_objects"]
    assert batch["caption_ids"].shape[0] == 8 and batch["label"].shape == (8,)
    bad = dict(items[0], object_boxes=items[0]["object_boxes"][:1])
    if counts[0] > 1:
        with pytest.raises(ValueError, match="object counts"):
            collate([bad, items[1]])


def test_caption_collate_encodes_one_foil_per_item_drawn_among_its_kinds():
    ds = ShapesDataset(48, task="caption", colours=["red", "blue"], return_foils=True)
    items = [ds[i] for i in range(len(ds))]
    tok = WordTokenizer(shapes_vocabulary())
    kinds = ["swap_attributes", "reverse_relation"]
    random.seed(0)
    batch = CaptionCollate(tok, foils=kinds)(items)
    drawn = []
    for b, it in enumerate(items):
        have = [k for k in kinds if it[f"foil_{k}"] is not None]
        kind = batch["foil_kind"][b]
        assert (kind in have) if have else kind is None
        assert batch["has_foil"][b].item() == bool(have)
        ids = batch["foil_ids"][b][batch["foil_mask"][b]].tolist()
        assert tok.decode(ids) == (it[f"foil_{kind}"] if kind else it["caption"])
        if len(have) == 2:
            drawn.append(kind)
    # two colours only: many items cannot swap colours and take the kind they have; the items
    # with both kinds show both (taking the first existing kind would never show the second)
    assert any(it["foil_swap_attributes"] is None and it["foil_reverse_relation"] is not None
               for it in items)
    assert set(drawn) == set(kinds)
    assert (batch["foil_ids"] != batch["caption_ids"]).any(dim=1).tolist() == batch[
        "has_foil"].tolist()
    random.seed(0)  # the engine seeds Python's RNG every step: the same batch again
    assert CaptionCollate(tok, foils=kinds)(items)["foil_kind"] == batch["foil_kind"]
    with pytest.raises(ValueError, match="return_foils"):
        CaptionCollate(tok, foils="swap_objects")([ShapesDataset(4, task="caption")[0]])
    with pytest.raises(ValueError, match="kinds"):
        CaptionCollate(tok, foils="swap_everything")
