"""Layers that reproduce details of the DiffuRec authors' Transformer (Li et al., TOIS 2023; code at
github.com/WHUIR/DiffuRec, ``src/diffurec.py``), shared with the DiffuRecSys code (Zolghadr,
github.com/shararezr/DiffuRecSys, ``diffurec.py``), where they differ from the project's defaults:

* :class:`QueryMaskedSelfAttention`: the mask acts on padded *queries* only (``diffurec.py:232-234``:
  the row of a padded query is filled with -1e9, so it attends uniformly to every position); a
  real position attends to every key, padding included;
* :func:`official_init`: Xavier-normal weights of the feed-forward layers and of the attention
  output projection (``diffurec.py:203-205, 224-225``), torch's default elsewhere;
* :func:`tanh_gelu`: the feed-forward activation is the tanh approximation of GELU
  (``diffurec.py:209``); their LayerNorm is torch's with ``eps = 1e-12`` (``diffurec.py:161-174``).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from dreamrec.nn.encoders import FeedForward, MultiHeadSelfAttention

GeluKind = Literal["exact", "tanh"]
InitKind = Literal["torch", "xavier"]

# the value the authors write into masked attention logits (finite: a fully masked row is uniform)
MASK_FILL = -1e9


def query_mask(valid: torch.Tensor) -> torch.Tensor:
    """``[B, 1, L, 1]`` (True = a real query): the mask of :class:`QueryMaskedSelfAttention`."""
    return valid[:, None, :, None]


class QueryMaskedSelfAttention(MultiHeadSelfAttention):
    """Self-attention whose mask only hides padded queries, as the DiffuRec code: ``mask``
    ``[B, 1, L, 1]`` (:func:`query_mask`) sets the whole logit row of a padded query to -1e9, so
    that row is the plain average of the values; real queries see every key, padding included."""

    def _fill(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~mask, MASK_FILL)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        weights = torch.softmax(self._fill(logits, mask), dim=-1)
        if self.training and self.attn_dropout > 0:
            weights = self.attn_drop(weights)
        return weights @ v


def tanh_gelu(ffn: FeedForward) -> FeedForward:
    """``ffn`` with the tanh approximation of GELU, ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    ffn.act = nn.GELU(approximate="tanh")
    return ffn


def official_init(ffn: FeedForward, attention_out: nn.Linear) -> None:
    """Xavier-normal weights of both feed-forward layers and of the attention output projection
    (biases keep torch's default), as ``PositionwiseFeedForward.init_weights`` and
    ``MultiHeadedAttention.init_weights`` of the DiffuRec code."""
    for layer in (ffn.fc1, ffn.fc2, attention_out):
        nn.init.xavier_normal_(layer.weight)
