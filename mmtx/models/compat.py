"""Old option names that model configs may still hold, mapped to the one spelling of today.

Every family spells its dropout options `drop_rate`, `attn_drop_rate` and `drop_path_rate`; the
text models and the LSTM used to say `dropout` and `attn_drop`, and YAML files written then still
do. Those names keep working with a DeprecationWarning; giving the old and the new is an error.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping


def rename_options(options: Mapping, renames: Mapping[str, str], where: str) -> dict:
    """`options` with every old name in `renames` (old -> new) replaced by its new name.

    Warns (DeprecationWarning) once per old name used; ValueError when both names are given.
    `where` names the model in the messages.
    """
    out = dict(options)
    for old, new in renames.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"{where}: got both {old}={out[old]!r} and {new}={out[new]!r}; "
                             f"{old!r} is the old name of {new!r}, give only {new!r}")
        warnings.warn(f"{where}: option {old!r} is now called {new!r}; the old name will go",
                      DeprecationWarning, stacklevel=3)
        out[new] = out.pop(old)
    return out


def renamed_options(**renames: str):
    """Decorator for a model's `__init__` (or a factory) taking keyword options: accepts each
    old name (`old="new"`) through `rename_options`."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            owner = args[0].__class__.__name__ if args else fn.__name__
            return fn(*args, **rename_options(kwargs, renames, owner))

        call.renamed_options = dict(renames)
        return call

    return wrap
