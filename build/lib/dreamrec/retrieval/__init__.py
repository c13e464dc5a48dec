"""Retrieval: exact top-k (default) and an optional FAISS index behind one interface."""
from dreamrec.retrieval.base import ItemIndex, build_index
from dreamrec.retrieval.exact import ExactIndex, topk_from_scores

__all__ = ["ExactIndex", "ItemIndex", "build_index", "topk_from_scores"]
