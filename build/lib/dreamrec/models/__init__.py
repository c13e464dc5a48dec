"""Models: one file per model, a registry from name to class."""
from dreamrec.models.registry import MODELS, build_model, get_model_class

__all__ = ["MODELS", "build_model", "get_model_class"]
