"""Exact top-k by inner product, chunked over the catalog so memory stays bounded."""
from __future__ import annotations

import torch


def topk_from_scores(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of [B, n] scores, ties broken by lower column index. Returns (scores, columns)."""
    k = min(k, scores.shape[1])
    # a stable descending sort keeps equal scores in column order
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order


class ExactIndex:
    """Inner-product search over ``items`` [n, d] (row j = internal item j + 1)."""

    def __init__(self, items: torch.Tensor, chunk_size: int = 262_144):
        self.items = items
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return self.items.shape[0]

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, k], columns [B, k]) of the best ``k`` items per query."""
        if len(self) == 0:
            raise ValueError("ExactIndex.search: the catalog is empty")
        k = min(k, len(self))
        best_s = best_i = None
        for start in range(0, len(self), self.chunk_size):
            block = self.items[start : start + self.chunk_size]
            s = queries @ block.T
            s, i = topk_from_scores(s, k)
            i = i + start
            if best_s is None:
                best_s, best_i = s, i
            else:
                cs, ci = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
                best_s, pos = topk_from_scores(cs, k)
                best_i = ci.gather(1, pos)
        assert best_s is not None and best_i is not None
        return best_s, best_i
