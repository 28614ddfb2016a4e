"""What tasks may read of a dataset, as `typing.Protocol`s checked with `isinstance`.

A dataset need not be one of mmtx's: any object with these attributes serves (a subset or a
fraction of one passes its base's attributes through). The tasks ask these instead of probing
attributes one by one, or naming a dataset class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class ImageDataset(Protocol):
    """Items hold images (C, H, W) of `in_chans` channels and side `image_size`."""

    in_chans: int
    image_size: int


@runtime_checkable
class ClassDataset(Protocol):
    """Items hold a class id in [0, num_classes)."""

    num_classes: int


@runtime_checkable
class NamedClassDataset(ClassDataset, Protocol):
    """A `ClassDataset` whose class_names[i] names class i."""

    class_names: Sequence[str] | None


@runtime_checkable
class VocabularyDataset(Protocol):
    """Captions drawn from a fixed vocabulary: every word any split's caption can use."""

    def vocabulary(self) -> list[str]: ...


def class_names(dataset) -> list[str] | None:
    """The class names of a `NamedClassDataset`, else None."""
    if isinstance(dataset, NamedClassDataset) and dataset.class_names is not None:
        return list(dataset.class_names)
    return None
