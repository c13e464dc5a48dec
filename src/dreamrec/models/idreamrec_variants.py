"""``idreamrec-residual``: iDreamRec with a learned residual per item on top of its text embedding.

Not the paper's method. iDreamRec (:mod:`dreamrec.models.idreamrec`) ranks by a FIXED table ``A(e_j)`` of transformed
text embeddings, so two items with similar texts can never be told apart by who watches them. This variant adds the
smallest learnable part that lets collaborative signal in: one vector ``r_j`` per item,

    ``v_j = A(e_j) + r_j``,    ``r_j`` starting at zero,

and ``v`` replaces ``A(e)`` everywhere the paper uses the item table: as the history tokens of the DiT, as the
diffusion target ``x_0 = v_n`` and as the retrieval keys (``score_j = x_0_hat · v_j``). Everything else is iDreamRec's:
the TEM and the transform ``A``, the in-context DiT, the x0 loss with no negative sampling, classifier-free guidance
over history and intention, and the samplers.

Two choices the method's idea leaves open, made to keep DreamRec's failure out:

* the target is ``stopgrad(v_n)`` (``residual_target: stopgrad``, default): with a learnable target the x0 loss is
  minimised by moving every target to one point (DreamRec's item table shrinks and collapses), so ``r`` learns
  only through the history tokens, and the target follows it. ``joint`` lets the loss move ``r_n`` too.
* an item that never appears in a training history (a cold item; with ``joint``, also never as a target) gets no
  gradient, so under AdamW (a zero gradient moves no moment, and weight decay scales a zero row) its ``r_j`` stays
  zero: it is generated and ranked by its text alone, as in iDreamRec.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from dreamrec.models.base import ModelConfig
from dreamrec.models.idreamrec import IDreamRec, IDreamRecConfig


class IDreamRecResidualConfig(IDreamRecConfig):
    residual_target: Literal["stopgrad", "joint"] = Field(
        "stopgrad", description="x_0 = stopgrad(A(e_n) + r_n) (default) or with the gradient into r_n (joint)")


class IDreamRecResidual(IDreamRec):
    name: ClassVar[str] = "idreamrec-residual"
    Config: ClassVar[type[ModelConfig]] = IDreamRecResidualConfig
    config: IDreamRecResidualConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or IDreamRecResidualConfig()
        assert isinstance(config, IDreamRecResidualConfig)
        super().__init__(n_items, max_len, config)
        D = self.item_text_emb.shape[1]
        self.item_residual = nn.Embedding(n_items + 1, D, padding_idx=0)  # r_j; row 0 (padding) stays zero
        nn.init.zeros_(self.item_residual.weight)

    def item_embeddings(self) -> torch.Tensor:
        """``[n + 1, D]``: ``v_j = A(e_j) + r_j`` (row 0 zero), differentiable in ``r``."""
        return self.text_table() + self.item_residual.weight

    def target_embeddings(self, table: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x0 = table[target]
        return x0.detach() if self.config.residual_target == "stopgrad" else x0
