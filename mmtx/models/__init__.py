"""Model families, each built from mmtx.layers, and the registry that names them.

The registry comes first and imports no family; importing each family module registers its
factories. Add a new family's module to the second import.
"""

from .registry import ModelInfo, create_model, list_models, model_info, register_model

# isort: split
from . import captioner, clip  # noqa: F401  (the vision-language families)

# isort: split
from . import cnn, dit, hybrid, rnn, text, unet, vit  # noqa: F401  (registers every family's models)
from .examples import model_example
from .summary import model_summary

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model",
           "model_summary", "model_example"]
