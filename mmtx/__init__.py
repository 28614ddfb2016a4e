"""mmtx: vision-and-text attention models built from one shared attention library."""

from .models import create_model, list_models, model_info, model_summary

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "model_summary", "__version__"]
