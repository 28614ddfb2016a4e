"""Captions and foils of shape scenes, from one structured description of the scene.

A caption is a `SceneText`: an optional task prefix ("two shapes: ", "same shape: "), a first
clause "SUBJECT RELATION OBJECT" about objects 0 and 1, and one clause per further object
giving its place relative to object 1:

    a small red circle | to the left of | a large blue square
    | , and a small green star above the square

A foil is the same structure with one part changed, so it differs from the caption exactly
where it should (word for word) and is rendered by the same code:

- "swap_attributes": the colours (or `attribute`) of subject and object swapped
  ("a small blue circle to the left of a large red square");
- "swap_objects": subject and object swapped around the relation
  ("a large blue square to the left of a small red circle");
- "reverse_relation": the relation replaced by its opposite ("... to the right of ...").

The prefix and the later clauses are left as they are: they stay true of the image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPATIAL = ("to the left of", "to the right of", "above", "below")
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of",
            "above": "below", "below": "above"}
FOIL_KINDS = ("swap_attributes", "swap_objects", "reverse_relation")
SWAPPABLE = ("colour", "size", "shape")


def _get(o, key: str):
    """An attribute of an Obj, or a key of the dicts in an item's attributes["objects"]."""
    return o[key] if isinstance(o, dict) else getattr(o, key)


def spatial(a, b) -> str:
    """Where a is relative to b, by the larger of the horizontal and vertical offsets."""
    dx, dy = _get(a, "x") - _get(b, "x"), _get(a, "y") - _get(b, "y")
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


@dataclass(frozen=True)
class Phrase:
    """One object as the caption names it: "a small red circle"."""

    size: str
    colour: str
    shape: str

    @classmethod
    def of(cls, o) -> Phrase:
        return cls(_get(o, "size"), _get(o, "colour"), _get(o, "shape"))

    def __str__(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class SceneText:
    """A caption as structure. `relation` says where `subject` is relative to `object`; each
    extra is (phrase, relation, referent shape) for ", and PHRASE RELATION the REFERENT"."""

    prefix: str
    subject: Phrase
    relation: str | None = None
    object: Phrase | None = None
    extras: tuple[tuple[Phrase, str, str], ...] = ()

    def text(self) -> str:
        text = self.prefix + str(self.subject)
        if self.object is not None:
            text += f" {self.relation} {self.object}"
        for phrase, relation, referent in self.extras:
            text += f", and {phrase} {relation} the {referent}"
        return text


def converse(caption: str) -> str | None:
    """The same two-object caption said from the other object ("A to the left of B" -> "B to
    the right of A"): just as true of the image. None for a caption without exactly one
    relation between two phrases (one object, or further clauses)."""
    if ", and " in caption:
        return None
    for relation in sorted(SPATIAL, key=len, reverse=True):
        head, sep, obj = caption.partition(f" {relation} ")
        if sep:
            prefix, colon, subject = head.rpartition(": ")
            return f"{prefix}{colon}{obj} {OPPOSITE[relation]} {subject}"
    return None


def _objects(scene) -> list:
    """Objects from a list of Obj / attribute dicts, or from an item's "attributes" dict."""
    if isinstance(scene, dict):
        if "objects" not in scene:
            raise ValueError(f"scene: expected a list of objects or an item's attributes dict "
                             f"with an 'objects' key, got a dict with keys {sorted(scene)}")
        scene = scene["objects"]
    objects = list(scene)
    if not objects:
        raise ValueError("scene: expected at least one object, got none")
    return objects


def describe_scene(scene, task: str) -> SceneText:
    """The structured caption of a scene; object 0 comes first, relations are relative to
    object 1. `task` picks the prefix: "count" names the number, "relation" same/different."""
    objects = _objects(scene)
    n = len(objects)
    prefix = ""
    if task == "count":
        prefix = f"{NUMBERS[n]} shape{'s' if n > 1 else ''}: "
    elif task == "relation":
        same = n > 1 and _get(objects[0], "shape") == _get(objects[1], "shape")
        prefix = f"{'same shape' if same else 'different shapes'}: "
    if n == 1:
        return SceneText(prefix, Phrase.of(objects[0]))
    referent = _get(objects[1], "shape")
    extras = tuple((Phrase.of(o), spatial(o, objects[1]), referent) for o in objects[2:])
    return SceneText(prefix, Phrase.of(objects[0]), spatial(objects[0], objects[1]),
                     Phrase.of(objects[1]), extras)


def make_caption(objects, task: str) -> str:
    """English caption of a scene; object 0 comes first and relations are relative to object 1."""
    return describe_scene(objects, task).text()


def _holds(objects: list, subject: Phrase, relation: str, obj: Phrase) -> bool:
    """Whether some pair of distinct objects fits "SUBJECT RELATION OBJECT"."""
    phrases = [Phrase.of(o) for o in objects]
    return any(phrases[i] == subject and phrases[j] == obj
               and spatial(objects[i], objects[j]) == relation
               for i in range(len(objects)) for j in range(len(objects)) if i != j)


def _foil_clause(desc: SceneText, kind: str, attribute: str) -> SceneText:
    if kind == "swap_attributes":
        a, b = getattr(desc.subject, attribute), getattr(desc.object, attribute)
        return replace(desc, subject=replace(desc.subject, **{attribute: b}),
                       object=replace(desc.object, **{attribute: a}))
    if kind == "swap_objects":
        return replace(desc, subject=desc.object, object=desc.subject)
    return replace(desc, relation=OPPOSITE[desc.relation])  # reverse_relation


def check_foil_kinds(kinds) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [k for k in kinds if k not in FOIL_KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds: expected names from {', '.join(FOIL_KINDS)}, got {list(kinds)}")
    return kinds


def make_foils(scene, kinds=FOIL_KINDS, task: str = "caption",
               attribute: str = "colour") -> dict[str, str | None]:
    """Foil captions of a scene, one per kind; None where that foil is impossible.

    Args:
        scene: the scene's objects (ShapesDataset.scene(i), or item["attributes"]).
        kinds: any of "swap_attributes", "swap_objects", "reverse_relation".
        task: the dataset task, for the caption's prefix ("caption": none).
        attribute: what "swap_attributes" swaps: "colour" (default), "size" or "shape".

    A foil is None when the scene has one object (no relation to change), and whenever its
    first clause would still be true of the image: both objects have the same colour (swapping
    colours changes nothing); both are named alike ("a small red circle left of a small red
    circle": swapped, it is the same caption, and reversed, it is true of the other circle);
    or, in scenes of three or more objects, another pair of objects fits the changed clause.
    """
    kinds = check_foil_kinds(kinds)
    if attribute not in SWAPPABLE:
        raise ValueError(f"attribute: expected one of {', '.join(SWAPPABLE)}, got {attribute!r}")
    objects = _objects(scene)
    if len(objects) < 2:
        return dict.fromkeys(kinds)
    desc = describe_scene(objects, task)
    foils = {}
    for kind in kinds:
        foil = _foil_clause(desc, kind, attribute)
        true = _holds(objects, foil.subject, foil.relation, foil.object)
        foils[kind] = None if true else foil.text()
    return foils
