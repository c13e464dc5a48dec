"""Serving: load a trained run and recommend (Python API; the HTTP app builds on it)."""
from dreamrec.serve.recommender import Recommendation, Recommender

__all__ = ["Recommendation", "Recommender"]
