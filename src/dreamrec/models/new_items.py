"""New-item scoring: how a trained model ranks items that never occur in its training data.

On a split by time, new items keep arriving: on the DreamRec Zhihu split 7.2 % of the test targets
(2.8 % of the validation targets) occur nowhere in the training data. A model trained with a softmax
over the catalog only ever pushes such an item's embedding away from the queries (it is a negative
in every step and a positive in none), so where it ranks them is an accident of that geometry
(``experiments/dreamrec/NOTES.md``, sessions 16-17).

:class:`NewItemScoring` makes the policy explicit, with one offset ``beta`` chosen on validation.
Each row's scores are standardised over the catalog, ``z(s) = (s - mean(s)) / std(s)``, and

* a seen item (one that occurs in training as a target or in a history, so its row was trained)
  keeps ``z(s_i)``, ``s = model.score(history)``;
* a new item gets ``z(s'_i) + beta``, ``s' = model.new_item_scores(history)``.

``new_item_scores`` defaults to ``score`` (it returns None; then ``beta`` is a shift of the new items' scores by
``beta`` row standard deviations). DreamRec with a residual denoiser returns ``c E^T``, the
encoder's guidance against the item table without the learned correction ``f - c``: the correction
is fitted to training targets, among which new items never are, so it carries no information about
them. ``beta = -inf`` (or ``None``) leaves the model's ranking unchanged. ``own_scores=True`` ignores
``new_item_scores`` (the shift of the model's own scores, an ablation of the new-item score).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Each row of ``scores`` [B, n] minus its mean, over its standard deviation (1 if the row is constant)."""
    mu = scores.mean(1, keepdim=True)
    sd = scores.std(1, keepdim=True) if scores.shape[1] > 1 else torch.ones_like(mu)
    return (scores - mu) / torch.where(sd > 0, sd, torch.ones_like(sd))


def new_item_mask(dataset: Any) -> np.ndarray:
    """Boolean mask per internal id of the items that occur nowhere in ``dataset``'s training data
    (index 0, the padding id, is False)."""
    new = ~dataset.train_items_seen()
    new[0] = False
    return new


def run_new_item_mask(run: Any, fallback: Any = None) -> np.ndarray:
    """:func:`new_item_mask` of the data ``run`` (a loaded run) was trained on, its recorded ``data_dir``:
    a run trained on an augmented copy saw items that the original lacks. ``fallback`` (a dataset with the
    run's catalog) stands in when that folder is not here; without one, a ValueError says so."""
    from pathlib import Path

    from dreamrec.data.dataset import PreparedDataset

    data_dir = run.info.get("data_dir")
    if data_dir and Path(data_dir).is_dir():
        ds = PreparedDataset.load(data_dir)
        run.check_dataset(ds, data_dir)
        return new_item_mask(ds)
    if fallback is not None:
        return new_item_mask(fallback)
    raise ValueError(f"new_item_offset: the run's training data ({data_dir!r}) is not here to tell which items "
                     "are new; pass new_items (original ids) instead")


class NewItemScoring(nn.Module):
    """A trained model whose :meth:`score` applies the new-item policy above (for evaluation and serving).

    ``new_items``: boolean mask per internal id (index 0 = padding) of the items absent from training,
    e.g. :func:`new_item_mask`; ``beta``: the offset of their standardised scores; ``own_scores``: shift the
    model's own scores of new items even where it has new-item scores.
    """

    def __init__(self, model: nn.Module, new_items: np.ndarray | torch.Tensor, beta: float | None,
                 own_scores: bool = False):
        super().__init__()
        n_items = int(model.n_items)
        mask = torch.as_tensor(np.asarray(new_items), dtype=torch.bool)
        if mask.ndim != 1 or len(mask) != n_items + 1:
            raise ValueError(f"new_items must be a mask of length n_items + 1 = {n_items + 1}, got shape {tuple(mask.shape)}")
        if bool(mask[0]):
            raise ValueError("new_items[0] is the padding id and must be False")
        if beta is not None and (np.isnan(beta) or beta == float("inf")):
            raise ValueError(f"beta must be a number or -inf / None (policy off), got {beta}")
        self.model = model
        self.n_items = n_items
        self.max_len = model.max_len
        self.beta = None if beta is None or beta == float("-inf") else float(beta)
        self.own_scores = bool(own_scores)
        self.register_buffer("new_columns", mask[1:].clone(), persistent=False)
        self.train(model.training)  # a new Module starts in training mode; keep the wrapped model's

    def ranks_by_query(self) -> bool:
        return False  # ranks through score() (no query or item table of its own), even with the policy off

    def score(self, history: torch.Tensor) -> torch.Tensor:
        s = self.model.score(history)
        if self.beta is None:
            return s
        new = self.new_columns.to(s.device)
        z = standardise(s.float())
        s_new = None if self.own_scores else self.model.new_item_scores(history)
        z_new = z if s_new is None else standardise(s_new.float())
        return torch.where(new[None, :], z_new + self.beta, z)


@torch.no_grad()
def ranks_by_offset(
    model: nn.Module,
    rows: Any,
    new_items: np.ndarray,
    betas: Sequence[float | None],
    *,
    max_len: int | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    own_scores: bool = False,
) -> dict[float | None, np.ndarray]:
    """0-based target ranks of ``rows`` (:class:`~dreamrec.data.dataset.SampleRows`) under
    :class:`NewItemScoring` at every ``beta`` (None: the model's own ranking), computing the model's
    scores once per batch. Equal to ``rank_targets(NewItemScoring(model, new_items, beta), rows, ...)``
    for each beta and ``own_scores`` (tested)."""
    from dreamrec.data.batching import fit_width
    from dreamrec.eval.evaluate import model_device, seeded_rng
    from dreamrec.eval.metrics import target_ranks
    from dreamrec.keyed_noise import keyed_rows, row_keys

    wrapped = {b: NewItemScoring(model, new_items, b, own_scores) for b in betas}  # validates every beta and the mask
    device = model_device(model)
    history = fit_width(rows.history, max_len or model.max_len)
    out = {b: np.empty(len(rows), dtype=np.int64) for b in betas}
    was_training = model.training
    model.eval()
    try:
        with seeded_rng(seed, device):
            for s in range(0, len(rows), batch_size):
                h = torch.from_numpy(history[s : s + batch_size]).to(device)
                t = torch.from_numpy(rows.target[s : s + batch_size]).to(device)
                with keyed_rows(row_keys(seed, h)):  # each row's noise as in rank_targets (issue 31)
                    raw = model.score(h)
                    s_new = None if own_scores else model.new_item_scores(h)
                z = standardise(raw.float())
                z_new = z if s_new is None else standardise(s_new.float())
                for b, w in wrapped.items():
                    if w.beta is None:
                        scores = raw.float()
                    else:
                        scores = torch.where(w.new_columns.to(device)[None, :], z_new + w.beta, z)
                    out[b][s : s + len(t)] = target_ranks(scores, t).cpu().numpy()
    finally:
        model.train(was_training)
    return out
