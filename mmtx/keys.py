"""The one check of option names (config keys, dataset options, keyword arguments): an unknown
one is a ValueError naming it and the nearest valid names, or all of them when none is near.
Imports nothing of mmtx, so every layer of the package can use it."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable


def nearest(key: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """The valid names closest to `key`, best first (none when nothing is near). Dotted names
    ("optim.learning_rate") also compare their last part, within the same section first."""
    valid = [str(v) for v in valid]
    close = difflib.get_close_matches(str(key), valid, n=n, cutoff=0.5)
    if close or "." not in str(key):
        return close
    section, last = str(key).split(".")[0], str(key).split(".")[-1]
    tails = difflib.get_close_matches(last, [v.split(".")[-1] for v in valid], n=n, cutoff=0.4)
    hits = [v for v in valid if v.split(".")[-1] in tails]
    return [v for v in hits if v.startswith(section + ".")] or hits


def unknown_key(key, valid: Iterable[str], what: str = "option", of: str = "") -> ValueError:
    """The error for `key`, not one of `valid`: "unknown option 'x' for dataset 'shapes'; did
    you mean y?" (or "; valid: ..." listing them all when none is near)."""
    valid = [str(v) for v in valid]
    where = f" for {of}" if of else ""
    close = nearest(key, valid)
    hint = f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(valid) or '-'}"
    return ValueError(f"unknown {what} {key!r}{where}; {hint}")


def check_keys(given: Iterable, valid: Iterable[str], what: str = "option", of: str = "") -> None:
    """A ValueError (see `unknown_key`) for the first name in `given` not in `valid`."""
    valid = [str(v) for v in valid]
    for key in given:
        if key not in valid:
            raise unknown_key(key, valid, what, of)


def check_kwargs(fn: Callable, kwargs: Iterable, what: str = "argument", of: str = "") -> None:
    """`check_keys` against the keyword names `fn` (a function or a class) takes; nothing is
    checked when it takes **kwargs."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    check_keys(kwargs, [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                            p.KEYWORD_ONLY)], what, of)
