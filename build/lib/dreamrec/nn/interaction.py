"""Networks over a user's whole interaction vector ``x in R^{|I|}`` (collaborative DiffRec).

:class:`InteractionDenoiser` is DiffRec's ``x0_hat_theta(x_t, t)`` (Wang et al., SIGIR 2023, Sec. 3.4):
an MLP over the concatenation of the (optionally L2-normalised, then dropped-out) noisy vector ``x_t``
and a step embedding, mirrored widths ``|I| + e -> d_1 -> ... -> d_k -> ... -> d_1 -> |I|``, ``tanh``
between layers and a linear output.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dreamrec.nn.denoisers import SinusoidalTimeEmbedding


class InteractionDenoiser(nn.Module):
    """``x0_hat(x_t, t)``: ``[B, n]`` noisy interaction vectors and ``[B]`` (or ``[1]``) steps -> ``[B, n]``.

    ``dims`` are the hidden widths ``d_1..d_k`` (DiffRec: ``[1000]``); ``time_dim`` the width ``e`` of the
    step embedding (sinusoidal, then one linear layer); ``dropout`` acts on the input vector;
    ``normalize`` divides ``x_t`` by its L2 norm first.
    """

    def __init__(self, n: int, dims: Sequence[int], *, time_dim: int = 10, dropout: float = 0.5, normalize: bool = False):
        super().__init__()
        if not dims:
            raise ValueError("InteractionDenoiser needs at least one hidden width in dims")
        self.normalize = normalize
        self.time = SinusoidalTimeEmbedding(time_dim)
        self.time_proj = nn.Linear(time_dim, time_dim)
        widths = [n + time_dim, *dims, *reversed(list(dims)[:-1]), n]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(dropout)
        for layer in self.layers:
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x_t = F.normalize(x_t, dim=-1)
        emb = self.time_proj(self.time(t)).expand(x_t.shape[0], -1)
        h = torch.cat([self.dropout(x_t), emb], dim=-1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.tanh(h)
        return h
