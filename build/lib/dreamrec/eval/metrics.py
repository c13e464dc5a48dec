"""Full-ranking metrics from ranks.

The rank of the target is its 0-based position in the full ranking of all real items
(never the padding id): the number of items scoring strictly higher, plus the number scoring
exactly the same with a lower internal id (ties broken by id, as the top-k lists are).
A NaN score never helps: a NaN target score is a miss (rank ``n_items``) and other items' NaN
scores count as ``-inf`` (a diverged model must not look perfect).

HR@K = [rank < K];  NDCG@K = [rank < K] / log2(rank + 2);  MRR@K = [rank < K] / (rank + 1).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)


def target_ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``target`` (internal ids, 1..n_items) in each row of ``scores`` [B, n_items]."""
    if scores.ndim != 2 or target.ndim != 1 or scores.shape[0] != target.shape[0]:
        raise ValueError(f"scores must be [B, n] and target [B]; got {tuple(scores.shape)} and {tuple(target.shape)}")
    if int(target.min()) < 1 or int(target.max()) > scores.shape[1]:
        raise ValueError("target ids must lie in 1..n_items (0 is padding)")
    col = (target - 1).long()[:, None]
    s_t = scores.gather(1, col)  # [B, 1]
    if torch.isnan(scores.sum()):  # a NaN somewhere (or +inf beside -inf): the general path
        return _target_ranks_nan(scores, col, s_t)
    # no NaN: count strictly higher, and break ties by id only in the rows that have a tie (int32
    # counts: summing booleans into int64 costs twice as long on the CPU)
    higher = (scores > s_t).sum(1, dtype=torch.int32).long()
    tied = (scores >= s_t).sum(1, dtype=torch.int32).long() - higher  # the target itself and any equal score
    rows = (tied > 1).nonzero().squeeze(1)
    if len(rows):
        idx = torch.arange(scores.shape[1], device=scores.device)[None, :]
        before = ((scores[rows] == s_t[rows]) & (idx < col[rows])).sum(1)
        higher = higher.index_add(0, rows, before)
    return higher


def _target_ranks_nan(scores: torch.Tensor, col: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
    """:func:`target_ranks` where scores may hold NaN: a NaN target is a miss (rank ``n``), other
    NaN scores count as ``-inf``."""
    nan_target = torch.isnan(s_t)[:, 0]
    scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    s_t = scores.gather(1, col)
    higher = (scores > s_t).sum(1)
    idx = torch.arange(scores.shape[1], device=scores.device)[None, :]
    ties_before = ((scores == s_t) & (idx < col)).sum(1)
    return torch.where(nan_target, scores.shape[1], higher + ties_before)


def metrics_from_ranks(ranks: np.ndarray | torch.Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean HR@K, NDCG@K and MRR@K (fractions) over all rows, plus ``n``."""
    r = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64)
    out: dict[str, float] = {}
    n = len(r)
    for k in ks:
        hit = r < k
        out[f"HR@{k}"] = float(hit.mean()) if n else 0.0
        out[f"NDCG@{k}"] = float((hit / np.log2(r + 2)).mean()) if n else 0.0
        out[f"MRR@{k}"] = float((hit / (r + 1)).mean()) if n else 0.0
    out["n"] = n
    return out
