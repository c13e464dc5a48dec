"""Dropout with a uniform-threshold mask, applied as one multiply.

``torch.nn.Dropout`` draws its mask with ``bernoulli_``, which on CPU took ~40 % of a SASRec
training step here; thresholding ``rand_like`` gives the same distribution (keep with probability
``1 - p``, scale by ``1 / (1 - p)``) about four times faster.

The mask is built in place in the uniform draw's own buffer (``u >= p`` as 0/1, times the scale,
times an optional 0/1 ``keep`` tensor such as a history's validity), so the input is multiplied
once, in the forward pass and in the backward pass. On a ``[256, 10, 64]`` activation that is two
passes over memory instead of six. The result is bitwise that of ``x * keep_mask * scale * keep``:
every factor but the scale is 0 or 1.
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

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Dropout of ``x``, then times ``keep`` (0/1 entries, broadcastable to ``x``; None = all ones)."""
        if not self.training or self.p == 0.0:
            return x if keep is None else x * keep
        mask = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        if keep is not None:
            mask.mul_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
