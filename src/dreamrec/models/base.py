"""The one contract every model follows (see DESIGN: models produce queries, retrieval ranks).

A model is a ``torch.nn.Module`` built from ``(n_items, max_len, config)``. It

* declares ``batch_mode``: ``"pairs"`` or ``"seq2seq"`` (which batches the trainer feeds it,
  see :mod:`dreamrec.data.batching`), or ``"none"`` for models fitted without gradient steps;
* computes a scalar training ``loss(batch)``;
* maps a right-aligned history ``[B, L]`` (0 = padding, possibly all padding) to
  ``score(history) -> [B, n_items]`` whose column ``j`` scores internal item ``j + 1``.
  Embedding models implement ``query`` and ``item_embeddings`` and inherit ``score``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from dreamrec.data.batching import Batch


class ModelConfig(BaseModel):
    """Base of every model's typed hyperparameters; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")


class SequentialRecommender(nn.Module):
    name: ClassVar[str] = "base"
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"

    def __init__(self, n_items: int, max_len: int, config: ModelConfig):
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        self.config = config

    # -- training --------------------------------------------------------------------------
    def loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def fit_statistics(self, dataset: Any) -> None:
        """Hook for models with non-gradient state (e.g. popularity counts). Called once before training."""

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Optional extra numbers to log per epoch (e.g. embedding norms)."""
        return {}

    # -- inference -------------------------------------------------------------------------
    def query(self, history: torch.Tensor) -> torch.Tensor:
        """[B, L] history -> [B, d] query vector."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """[n_items + 1, d] item table; row 0 is padding and is never ranked."""
        raise NotImplementedError

    def score(self, history: torch.Tensor) -> torch.Tensor:
        """[B, L] history -> [B, n_items] scores of internal items 1..n_items."""
        return self.query(history) @ self.item_embeddings()[1:].T
