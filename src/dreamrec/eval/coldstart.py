"""Cold-start items: recommend items that never occur in training (iDreamRec's text-derived table).

:func:`cold_start_split` holds out a share of the catalog (10 % by default, drawn with a seed):
every interaction with a held-out ("cold") item is removed from the TRAINING data (training
sequences lose those items; training rows whose target is cold are dropped and cold items are
removed from their histories) and from the validation split (rows with a cold target dropped,
cold items removed from histories), while the test split is kept whole. The catalog (ids,
metadata, hence item texts) is unchanged, so a text-based model still embeds cold items.

:func:`evaluate_cold_start` reports HR@K / NDCG@K on the test rows whose target is cold, for the
model, for popularity fitted on the reduced training data (cold items have count 0 and rank last
among ties), and for a uniformly random ranking (``HR@K = K / n_items`` exactly, in expectation);
:func:`evaluate_target_groups` reports the cold rows and the warm ones (every other test row) side by side.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterable

import numpy as np
import torch

from dreamrec.data.dataset import PreparedDataset, SampleRows, Sequences, pad_left
from dreamrec.eval.evaluate import evaluate


def _drop_items(history: np.ndarray, cold: np.ndarray) -> np.ndarray:
    """Remove cold items from right-aligned histories (re-aligned to the right, same width)."""
    keep = history * ~np.isin(history, cold)
    return pad_left([row[row > 0] for row in keep], history.shape[1])


def _strip_rows(rows: SampleRows, cold: np.ndarray) -> SampleRows:
    ok = ~np.isin(rows.target, cold)
    return SampleRows(_drop_items(rows.history[ok], cold), rows.target[ok], rows.user[ok])


def cold_start_split(
    dataset: PreparedDataset, frac: float = 0.1, seed: int = 0
) -> tuple[PreparedDataset, np.ndarray]:
    """``(dataset with cold items' interactions removed from train and val, cold internal ids)``."""
    if not 0 < frac < 1:
        raise ValueError(f"frac must be in (0, 1), got {frac}")
    rng = np.random.default_rng(seed)
    n = dataset.n_items
    cold = np.sort(rng.choice(np.arange(1, n + 1), size=max(1, int(round(frac * n))), replace=False))
    train = dataset.train
    if isinstance(train, Sequences):
        seqs = [s[~np.isin(s, cold)] for s in (train.get(u) for u in range(len(train)))]
        new_train: SampleRows | Sequences = Sequences.from_lists(seqs, train.user)
    else:
        new_train = _strip_rows(train, cold)
    info = {**dataset.info, "cold_start": {"frac": frac, "seed": seed, "n_cold": int(len(cold))}}
    out = replace(dataset, train=new_train, val=_strip_rows(dataset.val, cold), info=info)
    return out, cold


def target_groups(rows: SampleRows, cold: np.ndarray) -> dict[str, SampleRows]:
    """``{"cold": rows whose target is a cold item, "warm": the others}``; together they are every row once."""
    is_cold = np.isin(rows.target, cold)
    return {group: SampleRows(rows.history[m], rows.target[m], rows.user[m])
            for group, m in (("cold", is_cold), ("warm", ~is_cold))}


def cold_rows(rows: SampleRows, cold: np.ndarray) -> SampleRows:
    """The rows whose target is a cold item."""
    return target_groups(rows, cold)["cold"]


def evaluate_target_groups(
    model: torch.nn.Module,
    dataset: PreparedDataset,
    cold: np.ndarray,
    *,
    groups: Iterable[str] = ("cold", "warm"),
    ks: Iterable[int] = (20,),
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, dict[str, Any]]:
    """Per group of test rows (by target: ``cold`` or ``warm``), ``{"n": rows, "model": metrics, "popularity":
    metrics}``: ``model`` and popularity fitted on ``dataset``'s (reduced) training data; no metrics for an empty
    group."""
    from dreamrec.models.popularity import Popularity

    ks = list(ks)
    pop = Popularity(dataset.n_items, dataset.max_len)
    pop.fit_statistics(dataset)
    split = target_groups(dataset.test, cold)
    out: dict[str, dict[str, Any]] = {}
    for group in groups:
        if group not in split:
            raise ValueError(f"unknown group {group!r}: expected 'cold' or 'warm'")
        rows = split[group]
        out[group] = {"n": len(rows)}
        if len(rows):
            out[group]["model"] = evaluate(model, rows, ks=ks, batch_size=batch_size, seed=seed)
            out[group]["popularity"] = evaluate(pop, rows, ks=ks, batch_size=batch_size, seed=seed)
    return out


def evaluate_cold_start(
    model: torch.nn.Module,
    dataset: PreparedDataset,
    cold: np.ndarray,
    *,
    ks: Iterable[int] = (20,),
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, Any]:
    """HR/NDCG@K on the test rows with a cold target: ``model``, ``popularity`` (fitted on
    ``dataset``'s reduced training data) and ``random`` (``K / n_items``); ``n`` = number of rows."""
    ks = list(ks)
    group = evaluate_target_groups(model, dataset, cold, groups=("cold",), ks=ks, seed=seed, batch_size=batch_size)
    out: dict[str, Any] = {**group["cold"], "n_cold_items": int(len(cold))}
    if out["n"]:
        out["random"] = {f"HR@{k}": min(k, dataset.n_items) / dataset.n_items for k in ks}
    return out
