"""Checks for the failures training is known to fall into, reported while it runs.

* **Item-table collapse.** A model trained only to regress item embeddings (DreamRec's MSE without a
  stop-gradient target, for one) can shrink the table towards one point: every item then looks the same
  and the ranking is noise. :func:`item_table_health` measures the mean pairwise cosine of the item rows
  and their mean norm; :func:`collapse_cause` names the collapse when the rows point one way
  (mean cosine above ``COSINE_LIMIT``) or have shrunk to almost nothing (mean norm below ``NORM_FRACTION``
  of its value before training).
* **Below popularity.** A sequential model whose validation metric is not above the training popularity
  ranking's has learned nothing a count could not give: usually a bug or a degenerate query.
  :func:`popularity_reference` is popularity's validation metrics under the same evaluator.

The trainer logs both per validated epoch (``item_cos``, ``item_norm``, ``popularity`` in ``log.jsonl``),
and :func:`run_warnings` turns them into the warnings ``metrics.json`` keeps and the run ends with.
"""
from __future__ import annotations

from typing import Any

import torch

COSINE_LIMIT = 0.8
NORM_FRACTION = 0.1


@torch.no_grad()
def item_table_health(model: torch.nn.Module) -> dict[str, float] | None:
    """``{"item_cos": mean pairwise cosine, "item_norm": mean row norm}`` of the item table (rows 1..n),
    or None for models without a learned table of at least two dimensions (popularity, DiffRec).

    The mean cosine over all ordered pairs ``i != j`` is ``(||sum_i u_i||^2 - n) / (n (n - 1))`` with
    ``u_i`` the unit rows (zero rows count as zero vectors): exact, in O(n d)."""
    if getattr(model, "batch_mode", "none") == "none":
        return None
    try:
        table = model.item_embeddings()
    except NotImplementedError:
        return None
    if not isinstance(table, torch.Tensor) or table.ndim != 2 or table.shape[1] < 2 or table.shape[0] < 3:
        return None
    rows = table[1:].detach().float()
    norms = rows.norm(dim=1)
    units = rows / norms.clamp_min(1e-12)[:, None]
    n = rows.shape[0]
    total = units.sum(0)
    ones = (norms > 0).sum()
    cos = ((total @ total) - ones) / (n * (n - 1))
    return {"item_cos": float(cos), "item_norm": float(norms.mean())}


def collapse_cause(health: dict[str, float], initial_norm: float | None) -> str | None:
    """Why the table counts as collapsed (a short phrase), or None."""
    if health["item_cos"] > COSINE_LIMIT:
        return f"the item embeddings point one way (mean pairwise cosine {health['item_cos']:.3f})"
    if initial_norm and health["item_norm"] < NORM_FRACTION * initial_norm:
        return (f"the item embeddings shrank towards zero (mean norm {health['item_norm']:.2e}, "
                f"{initial_norm:.2e} before training)")
    return None


def popularity_reference(dataset: Any, evaluate_rows: Any) -> dict[str, float]:
    """Popularity's metrics on the validation rows, ranked by ``evaluate_rows(model)`` (the trainer's
    own validation, so both use one evaluator)."""
    from dreamrec.models.popularity import Popularity

    model = Popularity(dataset.n_items, dataset.max_len)
    model.fit_statistics(dataset)
    return evaluate_rows(model)


def run_warnings(history: list[dict[str, Any]], best_epoch: int, val_metric: str,
                 popularity: dict[str, float] | None) -> list[str]:
    """The warnings a finished training run ends with, from its epoch log."""
    out: list[str] = []
    collapsed = [e for e in history if e.get("collapse")]
    if collapsed:
        first = collapsed[0]
        at_best = any(e["epoch"] == best_epoch for e in collapsed)
        out.append(f"item table collapsed from epoch {first['epoch']}: {first['collapse']}"
                   + ("; the selected epoch is collapsed too" if at_best else "; the selected epoch is before it"))
    if popularity is not None:
        best = next((e for e in history if e["epoch"] == best_epoch and e.get("val")), None)
        ref = popularity.get(val_metric)
        if best is not None and ref is not None and best["val"][val_metric] <= ref:
            out.append(f"validation {val_metric} of the selected epoch ({best['val'][val_metric]:.4f}) is not above "
                       f"the popularity ranking's ({ref:.4f}): the model learned nothing a count does not give")
    return out
