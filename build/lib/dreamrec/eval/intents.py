"""Evaluation with an intention text per row (iDreamRec): the metrics of :func:`rank_targets` with ``intents``."""
from __future__ import annotations

from typing import Any

import torch

from dreamrec.eval.evaluate import rank_targets
from dreamrec.eval.metrics import DEFAULT_KS, metrics_from_ranks


@torch.no_grad()
def evaluate_with_intents(
    model: torch.nn.Module,
    rows: Any,
    intents: list[str | None] | None,
    *,
    ks: tuple[int, ...] | list[int] = DEFAULT_KS,
    batch_size: int = 1024,
    seed: int = 0,
    return_topk: int = 0,
) -> dict[str, Any]:
    """Full-ranking HR/NDCG/MRR@K of ``model`` on ``rows`` (:class:`SampleRows`) with one intention
    text (or None) per row (:func:`~dreamrec.eval.evaluate.rank_targets` with ``intents``);
    ``return_topk > 0`` adds ``"topk"`` (internal ids [N, k]). Seeded."""
    ranked = rank_targets(model, rows, batch_size=batch_size, seed=seed, intents=intents, topk=return_topk)
    ranks, top = ranked if return_topk else (ranked, None)
    out: dict[str, Any] = metrics_from_ranks(ranks, ks)
    if return_topk:
        out["topk"] = top
    return out
