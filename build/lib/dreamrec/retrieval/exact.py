"""Exact top-k by inner product, chunked over the catalog so memory stays bounded."""
from __future__ import annotations

import torch


def topk_from_scores(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of [B, n] scores, ties broken by lower column index. Returns (scores, columns).

    ``torch.topk`` finds the k-th best score; every column scoring at least that much is a
    candidate, and a stable sort of the candidates (in column order) breaks ties by lower column.
    Where ties make the candidate set large, the whole row is sorted instead; both give the result
    of a stable descending sort of the full row.
    """
    n = scores.shape[1]
    k = min(k, n)
    if k == 0:
        empty = scores[:, :0]
        return empty, torch.zeros_like(empty, dtype=torch.long)
    kth = torch.topk(scores, k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values
    mask = scores >= kth
    m = int(mask.sum(1).max())
    if 4 * m > n:
        # a stable descending sort keeps equal scores in column order
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        return scores.gather(1, order), order
    cols = torch.arange(n, device=scores.device).expand_as(scores)
    # the m smallest candidate columns per row, ascending; n marks "no candidate"
    cand = torch.topk(torch.where(mask, cols, n), m, dim=1, largest=False, sorted=True).values
    cand_scores = torch.where(cand < n, scores.gather(1, cand.clamp(max=n - 1)), float("-inf"))
    pos = torch.sort(cand_scores, dim=1, descending=True, stable=True).indices[:, :k]
    order = cand.gather(1, pos)
    return scores.gather(1, order), order


class ExactIndex:
    """Inner-product search over ``items`` [n, d] (row j = internal item j + 1).

    Implements :class:`dreamrec.retrieval.base.ItemIndex`. Scores are computed one block of
    ``chunk_size`` items at a time and merged, so memory stays at ``B * (chunk + k)`` scores, with
    ``chunk = min(chunk_size, max_scores // B)``.
    This is the default everywhere, and the only index the evaluation uses."""

    def __init__(self, items: torch.Tensor, chunk_size: int = 262_144, max_scores: int = 1 << 24):
        self.items = items
        self.chunk_size = chunk_size
        self.max_scores = max_scores  # per block: B * chunk scores at most (64 MB of float32 by default)

    def __len__(self) -> int:
        return self.items.shape[0]

    def nbytes(self) -> int:
        """Bytes of the item matrix (the only data the exact index holds)."""
        return self.items.element_size() * self.items.nelement()

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, k], columns [B, k]) of the best ``k`` items per query."""
        if len(self) == 0:
            raise ValueError("ExactIndex.search: the catalog is empty")
        k = min(k, len(self))
        best_s = best_i = None
        chunk = max(1, min(self.chunk_size, self.max_scores // max(1, queries.shape[0])))
        for start in range(0, len(self), chunk):
            block = self.items[start : start + chunk]
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
