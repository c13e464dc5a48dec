"""Most-popular baseline: every history gets the same ranking, by training interaction count."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from dreamrec.data.batching import Batch
from dreamrec.models.base import ModelConfig, SequentialRecommender


class PopularityConfig(ModelConfig):
    """No hyperparameters."""


class Popularity(SequentialRecommender):
    """Scores item ``i`` by its number of training interactions (``PreparedDataset.train_item_counts``).

    Ties are broken by internal id by the evaluator. Expressed in the embedding contract as a
    one-dimensional model: ``query = 1`` for every history and ``item_embeddings = counts``.
    """

    name: ClassVar[str] = "popularity"
    Config: ClassVar[type[ModelConfig]] = PopularityConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "none"

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        super().__init__(n_items, max_len, config or PopularityConfig())
        self.register_buffer("counts", torch.zeros(n_items + 1, dtype=torch.float32))

    def fit_statistics(self, dataset: Any) -> None:
        counts = torch.as_tensor(dataset.train_item_counts(), dtype=torch.float32)
        if counts.shape != self.counts.shape:
            raise ValueError(f"dataset has {counts.shape[0] - 1} items, model was built for {self.n_items}")
        counts[0] = 0.0
        self.counts.copy_(counts.to(self.counts.device))

    def loss(self, batch: Batch) -> torch.Tensor:
        raise RuntimeError("Popularity has no training loss; it is fitted by fit_statistics")

    def query(self, history: torch.Tensor) -> torch.Tensor:
        return torch.ones(history.shape[0], 1, dtype=self.counts.dtype, device=self.counts.device)

    def item_embeddings(self) -> torch.Tensor:
        return self.counts[:, None]

    def score(self, history: torch.Tensor) -> torch.Tensor:
        return self.counts[1:][None, :].expand(history.shape[0], -1)
