"""GRU4Rec (Hidasi et al., ICLR 2016) with a tied item table and full cross-entropy.

``h_t = GRU(e_{s_t}, h_{t-1})``; the query is ``q_t = W h_t + b`` (projection to the embedding
size) and the score of item ``i`` is ``q_t . E_i`` with ``E`` the input embedding table. Trained
with full-softmax cross-entropy at every labelled position (``batch_mode = "seq2seq"``), as in
the modern reimplementations used as DreamRec baselines.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from dreamrec.data.batching import Batch, labelled_positions
from dreamrec.models.base import ModelConfig, SequentialRecommender
from dreamrec.nn.losses import softmax_cross_entropy
from dreamrec.nn.encoders import GRUEncoder


class GRU4RecConfig(ModelConfig):
    embedding: int = Field(64, ge=1)
    hidden: int = Field(128, ge=1)
    n_layers: int = Field(1, ge=1)
    dropout: float = Field(0.3, ge=0, lt=1)
    loss: Literal["ce"] = "ce"
    init_std: float = Field(0.02, gt=0)


class GRU4Rec(SequentialRecommender):
    name: ClassVar[str] = "gru4rec"
    Config: ClassVar[type[ModelConfig]] = GRU4RecConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "seq2seq"
    config: GRU4RecConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or GRU4RecConfig()
        assert isinstance(config, GRU4RecConfig)
        super().__init__(n_items, max_len, config)
        self.encoder = GRUEncoder(
            n_items,
            embedding=config.embedding,
            hidden=config.hidden,
            n_layers=config.n_layers,
            dropout=config.dropout,
            init_std=config.init_std,
        )

    @property
    def item_embedding(self) -> nn.Embedding:
        """The item table, shared by the GRU input and the output scores (tied)."""
        return self.encoder.item_embedding

    def _window(self, history: torch.Tensor) -> torch.Tensor:
        return history[:, -self.max_len :] if history.shape[1] > self.max_len else history

    def loss(self, batch: Batch) -> torch.Tensor:
        hidden = self.encoder(batch.history)  # [B, L, d]
        mask, labels = labelled_positions(batch)
        return softmax_cross_entropy(hidden[mask], self.item_embedding.weight, labels)

    def query(self, history: torch.Tensor) -> torch.Tensor:
        return self.encoder.last_hidden(self._window(history))

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight
