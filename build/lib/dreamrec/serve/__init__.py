"""Serving: load a trained run and recommend (Python API; the HTTP app in ``app`` builds on it)."""
from dreamrec.serve.recommender import (
    IntentNotSupportedError,
    Recommendation,
    Recommender,
    RequestError,
    UnknownItemsError,
)

__all__ = ["IntentNotSupportedError", "Recommendation", "Recommender", "RequestError", "UnknownItemsError"]
