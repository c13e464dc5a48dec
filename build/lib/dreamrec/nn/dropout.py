"""Dropout with a uniform-threshold mask.

``torch.nn.Dropout`` draws its mask with ``bernoulli_``, which on CPU took ~40 % of a SASRec
training step here; thresholding ``rand_like`` gives the same distribution
(keep with probability ``1 - p``, scale by ``1 / (1 - p)``) about four times faster.
"""
from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand_like(x) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"
