"""The new-item policy's offset sweep (:mod:`dreamrec.models.new_items`): target ranks at many offsets
``beta`` from one pass of the model's scores, for choosing ``beta`` on validation."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dreamrec.data.batching import fit_width
from dreamrec.eval.evaluate import model_device, seeded_rng
from dreamrec.eval.metrics import target_ranks
from dreamrec.keyed_noise import keyed_rows, row_keys
from dreamrec.models.new_items import NewItemScoring, standardise


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
                with keyed_rows(row_keys(seed, h)):  # each row's noise as in rank_targets
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
