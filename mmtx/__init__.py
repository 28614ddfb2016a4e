"""mmtx: vision-and-text attention models built from one shared attention library."""

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "model_summary", "__version__"]


def __getattr__(name):
    # Read on first use, so that importing a light module (the CLI's parser, the stop-signal
    # handling a pool worker sets up before anything else) does not import torch.
    if name in ("create_model", "list_models", "model_info", "model_summary"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'mmtx' has no attribute {name!r}")
