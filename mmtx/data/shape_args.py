"""Argument checks of ShapesDataset: each turns what a user wrote into the dataset's own form,
or raises a ValueError naming the argument, what it expects and what came."""

from __future__ import annotations

import numpy as np


def check_distance(distance, task: str):
    """None or a (lo, hi) float pair with 0 < lo <= hi <= 1, for the relation task."""
    if distance is None:
        return None
    if task != "relation":
        raise ValueError(f"distance: only the relation task places a pair at a set distance, "
                         f"got task={task!r}")
    try:
        lo, hi = (float(v) for v in distance)
    except (TypeError, ValueError):
        raise ValueError(f"distance: expected a (lo, hi) pair of fractions of the image side, "
                         f"got {distance!r}") from None
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"distance: expected 0 < lo <= hi <= 1 (fractions of the image side), "
                         f"got {distance!r}")
    return (lo, hi)


def check_distractors(distractors, task: str) -> tuple[int, int]:
    """An int or a (min, max) range within 0..6, for the relation task."""
    if isinstance(distractors, bool) or not isinstance(distractors, (int, list, tuple)):
        raise ValueError(f"distractors: expected an int or a (min, max) range, got "
                         f"{distractors!r}")
    lo, hi = (distractors, distractors) if isinstance(distractors, int) else tuple(distractors)
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= 6):
        raise ValueError(f"distractors: expected an int or a (min, max) range within 0..6, "
                         f"got {distractors!r}")
    if hi and task != "relation":
        raise ValueError(f"distractors: only the relation task has distractor objects, "
                         f"got task={task!r}")
    return (lo, hi)


def check_exclude(exclude, shapes, colours) -> tuple[tuple[str, str], ...]:
    """["red star", ...] -> (("red", "star"), ...), colour-shape names of this dataset."""
    if exclude is None:
        return ()
    if isinstance(exclude, str) or not isinstance(exclude, (list, tuple)):
        raise ValueError(f"exclude: expected a list of 'colour shape' names, got {exclude!r}")
    out = []
    for name in exclude:
        parts = str(name).split()
        if len(parts) != 2 or parts[0] not in colours or parts[1] not in shapes:
            raise ValueError(f"exclude: expected 'colour shape' names such as 'red star' "
                             f"(colours: {', '.join(colours)}; shapes: {', '.join(shapes)}), "
                             f"got {name!r}")
        out.append((parts[0], parts[1]))
    if len(set(out)) >= len(shapes) * len(colours):
        raise ValueError(f"exclude: leaves no colour-shape combination to draw, got {exclude!r}")
    return tuple(out)


def check_classes_drawn(exclude, shapes, colours, task: str) -> None:
    """Refuse an `exclude` under which a class of `task` is never drawn: where the label is the
    first object's shape, colour or both, a class whose every combination is excluded would
    have no example to train on or test, and nothing would say so."""
    if task == "shape":
        never = [s for s in shapes if all((c, s) in exclude for c in colours)]
    elif task == "colour":
        never = [c for c in colours if all((c, s) in exclude for s in shapes)]
    elif task == "shape_colour":  # every combination is a class
        never = [f"{c} {s}" for s in shapes for c in colours if (c, s) in exclude]
    else:
        return
    if never:
        raise ValueError(f"exclude: leaves {task} classes that no scene can show: "
                         f"{', '.join(never)}; exclude fewer combinations, or use a task "
                         f"whose label does not name them")


# A scene holding an excluded combination is drawn again; a scene that needs more draws than
# this on average is refused at construction (a hang otherwise), and REDRAWS bounds the loop:
# at >= 1 / MEAN_DRAWS acceptance, 10,000 failed draws in a row happen with odds e^-100.
MEAN_DRAWS, REDRAWS = 100, 10_000


def check_drawable(exclude, shapes, colours, task: str, num_objects) -> None:
    """Refuse an `exclude` under which a scene of `task` takes over MEAN_DRAWS draws on
    average (or can never be drawn), or, for the relation task, under which one of its two
    labels (same / different shape) can never be drawn."""
    if not exclude:
        return
    ok = np.array([[(c, s) not in exclude for c in colours] for s in shapes], float)  # (S, C)
    p = ok.mean()  # one object with a free shape and colour is allowed
    first = ok.mean(1) / len(shapes)  # (S,) P(object 0 has shape s and is allowed)
    if task == "twins":  # object 1 is a copy of object 0
        pairs = {"": p}
    elif task == "relation":  # object 1: the same shape, or one of the others
        other = (ok.mean(1).sum() - ok.mean(1)) / max(len(shapes) - 1, 1)  # (S,)
        pairs = {"same shape": float(first @ ok.mean(1)), "different shapes": float(first @ other)}
    else:
        pairs = {"": p * p}
    lo, hi = num_objects
    for label, pair in pairs.items():
        rate = np.mean([p if n == 1 else pair * p ** (n - 2) for n in range(lo, hi + 1)])
        if rate * MEAN_DRAWS < 1:
            scenes = f"{task} scenes" + (f" with {label}" if label else "")
            objects = f"{lo}" if lo == hi else f"{lo}-{hi}"
            draws = "can never be drawn" if rate == 0 else \
                f"would take about {1 / rate:,.0f} draws each (at most {MEAN_DRAWS} allowed)"
            left = [f"{c} {s}" for i, s in enumerate(shapes) for j, c in enumerate(colours)
                    if ok[i, j]]
            left = f" ({', '.join(left)})" if len(left) <= 4 else ""
            raise ValueError(f"exclude: leaves {int(ok.sum())} of {ok.size} colour-shape "
                             f"combinations{left}, and {scenes} of {objects} objects "
                             f"{draws}; exclude fewer combinations or draw fewer objects")
