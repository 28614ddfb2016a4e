"""Imports every model family so that its factories are registered."""

# Each import registers that family's models; add new families here.
from . import text  # noqa: F401,E402
