"""Caser (Tang & Wang, WSDM 2018): convolutional sequence embedding of the last ``L`` items.

The ``L x d`` matrix ``E`` of the ``L`` most recent item embeddings (Sec. 3.1, Eq. 1) is read by

* horizontal filters ``F^k`` of heights ``h = 1..L`` (``n_h`` per height): ``c^k_i = phi_c(E_{i:i+h-1} ⊙ F^k)``
  (Eq. 2), max-pooled over ``i`` (Eq. 3) -> ``o`` of size ``n_h L``;
* vertical filters ``F~^k`` of shape ``L x 1`` (``n_v`` of them): ``c~^k = sum_l F~^k_l E_l`` (Eq. 4-5)
  -> ``o~`` of size ``n_v d``;
* ``z = phi_a(W [o; o~] + b)`` (Eq. 6) after dropout, with ``phi_c = phi_a = ReLU``.

The score of item ``i`` is ``y_i = W'_i . z + b'_i`` (Eq. 7 without the user embedding ``P_u``:
the library's models see histories, not user ids). It is written as an inner product with the
query ``[z; 1]`` and the output table ``[W'; b']``. Trained with full-softmax cross-entropy on
the next item (``pairs`` batches), the common modern variant of Caser's Eq. 8.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dreamrec.data.batching import Batch
from dreamrec.models.base import ModelConfig, SequentialRecommender
from dreamrec.nn.dropout import Dropout
from dreamrec.nn.losses import softmax_cross_entropy


class CaserConfig(ModelConfig):
    hidden: int = Field(64, ge=1, description="embedding size d")
    window: int = Field(5, ge=1, description="L, the number of most recent items read (the paper's Markov order)")
    n_h: int = Field(16, ge=1, description="horizontal filters per height")
    n_v: int = Field(4, ge=1, description="vertical filters")
    dropout: float = Field(0.5, ge=0, lt=1)
    init_std: float = Field(0.02, gt=0)


class Caser(SequentialRecommender):
    name: ClassVar[str] = "caser"
    Config: ClassVar[type[ModelConfig]] = CaserConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"
    config: CaserConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or CaserConfig()
        assert isinstance(config, CaserConfig)
        super().__init__(n_items, max_len, config)
        d, L = config.hidden, config.window
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.horizontal = nn.ModuleList(nn.Conv2d(1, config.n_h, (h, d)) for h in range(1, L + 1))
        self.vertical = nn.Conv2d(1, config.n_v, (L, 1))
        self.dropout = Dropout(config.dropout)
        self.fc = nn.Linear(config.n_h * L + config.n_v * d, d)
        self.out_embedding = nn.Embedding(n_items + 1, d)  # W'
        self.out_bias = nn.Parameter(torch.zeros(n_items + 1))  # b'
        for emb in (self.item_embedding, self.out_embedding):
            nn.init.normal_(emb.weight, std=config.init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def _window(self, history: torch.Tensor) -> torch.Tensor:
        """The ``L`` most recent columns (left-padded with 0 when the history is narrower)."""
        L = self.config.window
        if history.shape[1] >= L:
            return history[:, -L:]
        return F.pad(history, (L - history.shape[1], 0))

    def hidden_state(self, history: torch.Tensor) -> torch.Tensor:
        """``z`` [B, d] of Eq. 6."""
        E = self.item_embedding(self._window(history))[:, None]  # [B, 1, L, d]
        o = [F.relu(conv(E)).squeeze(3).amax(dim=2) for conv in self.horizontal]  # Eq. 2-3, [B, n_h] each
        o_tilde = self.vertical(E).flatten(1)  # Eq. 4-5, [B, n_v * d]
        return F.relu(self.fc(self.dropout(torch.cat([*o, o_tilde], dim=1))))  # Eq. 6

    def loss(self, batch: Batch) -> torch.Tensor:
        keep = batch.target > 0
        q = self.query(batch.history[keep])
        return softmax_cross_entropy(q, self.item_embeddings(), batch.target[keep])

    def query(self, history: torch.Tensor) -> torch.Tensor:
        """``[z; 1]`` [B, d + 1], so that ``query . [W'_i; b'_i] = W'_i . z + b'_i`` (Eq. 7)."""
        z = self.hidden_state(history)
        return torch.cat([z, torch.ones_like(z[:, :1])], dim=1)

    def item_embeddings(self) -> torch.Tensor:
        """``[W'; b']`` [n_items + 1, d + 1] (row 0 = padding, never ranked)."""
        return torch.cat([self.out_embedding.weight, self.out_bias[:, None]], dim=1)
