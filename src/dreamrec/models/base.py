"""The one contract every model follows (docs/architecture.md: models produce queries, retrieval ranks).

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


def check_sampler_steps(steps: int | None, timesteps: int) -> None:
    """A config check shared by the diffusion models: ``S`` (``sampler_steps``; None = all steps) fits in ``T``."""
    if steps is not None and steps > timesteps:
        raise ValueError(f"sampler_steps ({steps}) exceeds timesteps ({timesteps})")


def switch_sampler(
    model: "SequentialRecommender", sampler: str | None, steps: int | None, **options: Any
) -> None:
    """Change a diffusion model's inference sampler without retraining (shared ``set_sampler``).

    ``sampler`` (ddpm | ddim | onestep) sets ``sampler_steps`` to ``steps`` with it (None = all T);
    ``steps`` alone changes only the step count; every other option (``ddim_eta``,
    ``guidance_w``, ...) is set when not None. The new config is validated by the model's own
    Config class and the model's ``scheduler`` is reset to match.
    """
    update: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if sampler is not None:
        update.update(sampler=sampler, sampler_steps=steps)
    elif steps is not None:
        update["sampler_steps"] = steps
    cfg = type(model.config)(**{**model.config.model_dump(), **update})
    model.scheduler.set_timesteps(cfg.sampler_steps, sampler=cfg.sampler, eta=cfg.ddim_eta)
    model.config = cfg


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

    def new_item_scores(self, history: torch.Tensor) -> torch.Tensor | None:
        """[B, n_items] scores for items absent from the training data (see
        :mod:`dreamrec.models.new_items`), or None: the same as :meth:`score`."""
        return None

    def ranks_by_query(self) -> bool:
        """True when :meth:`score` is ``query @ item_embeddings()[1:].T``, so a retrieval index
        over the item table ranks exactly as :meth:`score`; False for models that score items
        directly (popularity, DiffRec) or combine several queries (DreamRec with ``draws > 1``)."""
        return type(self).score is SequentialRecommender.score
