"""Metrics by segment of the evaluated rows, here by how often the target occurs in the training data.

A single HR@K over all rows can hide opposite effects: one model may hit popular targets more often and
rare or never-seen ones less. :func:`frequency_buckets` assigns every row the bucket of its target's
training count (``train_item_counts``), and :func:`metrics_by_segment` computes the usual metrics
(:func:`dreamrec.eval.metrics.metrics_from_ranks`) within each bucket, with its share of the rows. The
overall metric is the share-weighted sum of the bucket metrics, so ``share * (metric_A - metric_B)`` is
the bucket's contribution to the difference between two models.

Buckets are given by their lower edges: ``edges = (0, 1, 6)`` means counts ``0``, ``1-5`` and ``6+``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from dreamrec.eval.metrics import DEFAULT_KS, metrics_from_ranks

# never in training, 1-5, 6-20, 21-50, 51-100, 101+
DEFAULT_EDGES: tuple[int, ...] = (0, 1, 6, 21, 51, 101)


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """``"0"``, ``"1-5"``, ..., ``"101+"`` for lower ``edges`` (strictly increasing, starting at 0)."""
    edges = [int(e) for e in edges]
    if not edges or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bucket edges must start at 0 and increase strictly, got {edges}")
    labels = []
    for lo, nxt in zip(edges, [*edges[1:], None]):
        if nxt is None:
            labels.append(f"{lo}+")
        elif nxt == lo + 1:
            labels.append(str(lo))
        else:
            labels.append(f"{lo}-{nxt - 1}")
    return labels


def frequency_buckets(counts: np.ndarray, targets: np.ndarray, edges: Sequence[int] = DEFAULT_EDGES) -> np.ndarray:
    """Bucket index (into ``bucket_labels(edges)``) of every row: the bucket of ``counts[target]``.

    ``counts`` is indexed by internal item id (``PreparedDataset.train_item_counts()``; index 0 is padding).
    """
    bucket_labels(edges)  # validates the edges
    counts = np.asarray(counts)
    targets = np.asarray(targets)
    if targets.size and (targets.min() < 0 or targets.max() >= len(counts)):
        raise ValueError(f"target ids must index counts (0..{len(counts) - 1}); got {targets.min()}..{targets.max()}")
    if (counts < 0).any():
        raise ValueError("counts must be non-negative")
    return np.searchsorted(np.asarray(edges), counts[targets], side="right") - 1


def metrics_by_segment(
    ranks: np.ndarray, segment: np.ndarray, labels: Sequence[str], ks: Iterable[int] = DEFAULT_KS
) -> list[dict[str, Any]]:
    """``[{"segment", "n", "share", "metrics"}]``, one per label (empty segments have ``n = 0`` and no metrics).

    ``segment[i]`` is row ``i``'s index into ``labels``; ``ranks`` are the 0-based target ranks of the rows.
    """
    ranks = np.asarray(ranks)
    segment = np.asarray(segment)
    if ranks.shape != segment.shape or ranks.ndim != 1:
        raise ValueError(f"ranks and segment must be 1-d of one length; got {ranks.shape} and {segment.shape}")
    if segment.size and (segment.min() < 0 or segment.max() >= len(labels)):
        raise ValueError(f"segment indices must lie in 0..{len(labels) - 1}")
    ks = tuple(ks)
    out = []
    for j, label in enumerate(labels):
        m = segment == j
        n = int(m.sum())
        out.append({"segment": label, "n": n, "share": n / len(ranks) if len(ranks) else 0.0,
                    "metrics": metrics_from_ranks(ranks[m], ks) if n else {}})
    return out
