"""Model families, each built from mmtx.layers, and the registry that names them."""

from .registry import create_model, list_models, register_model
from .summary import model_summary

__all__ = ["create_model", "list_models", "register_model", "model_summary"]
