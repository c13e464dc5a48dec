"""Evaluation of any model on a split: full ranking, every row counted, eval mode, no gradient.

Sampled (diffusion) models draw each row's noise from a key of (seed, the row's history, its
intent) (:mod:`dreamrec.keyed_noise`), so a row's rank does not depend on the batch size or on its
neighbours, and equals what ``Recommender`` answers for the same history.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from dreamrec.data.batching import fit_width
from dreamrec.data.dataset import SampleRows
from dreamrec.eval.metrics import DEFAULT_KS, metrics_from_ranks, target_ranks
from dreamrec.keyed_noise import keyed_rows, row_keys


@contextmanager
def seeded_rng(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the body with torch's generators seeded by ``seed`` and restore them afterwards
    (the CPU generator, and the CUDA generator of ``device`` when it is a GPU). Only those two are
    seeded: ``torch.manual_seed`` would also reseed every other backend's generators, unrestored,
    and costs about 75 us a call (a serving request makes one)."""
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.default_generator.manual_seed(seed)
        if dev.type == "cuda":
            with torch.cuda.device(dev):
                torch.cuda.manual_seed(seed)
        yield


def exclude_history(scores: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Set the scores of items already in the history to -inf (padding ignored)."""
    scores = scores.clone()
    rows = torch.arange(history.shape[0], device=history.device)[:, None].expand_as(history)
    mask = history > 0
    scores[rows[mask], history[mask] - 1] = float("-inf")
    return scores


@torch.no_grad()
def rank_targets(
    model: torch.nn.Module,
    rows: SampleRows,
    *,
    batch_size: int = 1024,
    max_len: int | None = None,
    exclude_seen: bool = False,
    device: str | torch.device | None = None,
    seed: int = 0,
    intents: Sequence[str | None] | None = None,
    topk: int = 0,
) -> Any:
    """0-based rank of every row's target. The model is put in eval mode and restored after.

    ``seed`` fixes any randomness of the model's inference (diffusion sampling): each row's noise is
    keyed by (seed, its history, its intent), so the result is deterministic and independent of
    ``batch_size`` and of the other rows; the global RNG state is saved and restored. ``intents`` (one text or None per
    row) is passed to ``model.query(history, intents)`` for models that take an intention (iDreamRec).
    With ``topk > 0`` the result is ``(ranks, top)``, ``top`` the internal ids [N, topk] ranked first.
    ``device`` defaults to the device of the model's weights.
    """
    if device is None:
        device = model_device(model)
    if intents is not None and len(intents) != len(rows):
        raise ValueError(f"got {len(intents)} intents for {len(rows)} rows; give one (or None) per row")
    was_training = model.training
    model.eval()
    width = max_len or getattr(model, "max_len", rows.width)
    history = fit_width(rows.history, width)
    ranks = np.empty(len(rows), dtype=np.int64)
    tops: list[np.ndarray] = []
    try:
        with seeded_rng(seed, device):
            for s in range(0, len(rows), batch_size):
                h = torch.from_numpy(history[s : s + batch_size]).to(device)
                t = torch.from_numpy(rows.target[s : s + batch_size]).to(device)
                texts = None if intents is None else list(intents[s : s + batch_size])
                with keyed_rows(row_keys(seed, h, texts)):
                    if texts is None:
                        scores = model.score(h).float()
                    else:
                        q = model.query(h, texts)
                        scores = (q @ model.item_embeddings()[1:].T).float()
                if exclude_seen:  # the whole stored history, not only the model's window
                    scores = exclude_history(scores, torch.from_numpy(rows.history[s : s + batch_size]).to(device))
                ranks[s : s + len(t)] = target_ranks(scores, t).cpu().numpy()
                if topk:
                    tops.append((scores.topk(topk, dim=1).indices + 1).cpu().numpy())
    finally:
        model.train(was_training)
    if topk:
        return ranks, (np.concatenate(tops) if tops else np.zeros((0, topk), dtype=np.int64))
    return ranks


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; the CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def evaluate(
    model: torch.nn.Module,
    rows: SampleRows,
    *,
    ks: Iterable[int] = DEFAULT_KS,
    batch_size: int = 1024,
    max_len: int | None = None,
    exclude_seen: bool = False,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """HR@K, NDCG@K, MRR@K (fractions) and ``n`` over all rows of ``rows``."""
    ranks = rank_targets(
        model, rows, batch_size=batch_size, max_len=max_len, exclude_seen=exclude_seen, device=device, seed=seed
    )
    return metrics_from_ranks(ranks, ks)
