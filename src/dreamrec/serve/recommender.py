"""``Recommender``: a trained run directory -> top-k items for raw histories (original ids)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dreamrec.data.batching import fit_width
from dreamrec.data.dataset import _coerce_id, _py
from dreamrec.eval.evaluate import exclude_history
from dreamrec.retrieval.exact import topk_from_scores
from dreamrec.train.run import load_run


@dataclass
class Recommendation:
    items: list[Any]
    scores: list[float]
    unknown: list[Any] = field(default_factory=list)  # history ids not in the catalog (ignored)
    truncated: bool = False  # history longer than the model's window: only the most recent items used

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "scores": self.scores, "unknown": self.unknown, "truncated": self.truncated}


class Recommender:
    """Recommend from a trained run. Histories are lists of ORIGINAL item ids, oldest first.

    Unknown ids are ignored and reported; an empty history is allowed (the model's answer for
    no context: popularity for popularity, the learned empty-history query for SASRec/GRU4Rec);
    histories longer than the model's window keep their most recent items. Calls are serialised
    by a lock, so one instance can be shared between threads.
    """

    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        self.run = load_run(run_dir, device)
        self.device = device
        self.model = self.run.model
        self.max_len = int(self.run.info["max_len"])
        ids = self.run.item_ids.tolist()
        self._index = {k: i + 1 for i, k in enumerate(ids)}
        self._ids = np.asarray([_py(v) for v in ids], dtype=object)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu") -> "Recommender":
        return cls(run_dir, device)

    @property
    def n_items(self) -> int:
        return len(self._ids)

    def _encode(self, history: Sequence[Any]) -> tuple[list[int], list[Any]]:
        known, unknown = [], []
        for x in history:
            key = _coerce_id(x, self._index)
            (unknown.append(x) if key is None else known.append(self._index[key]))
        return known, unknown

    def recommend(self, history: Sequence[Any], k: int = 20, exclude_seen: bool = False) -> Recommendation:
        return self.recommend_batch([history], k=k, exclude_seen=exclude_seen)[0]

    def recommend_batch(
        self, histories: Sequence[Sequence[Any]], k: int = 20, exclude_seen: bool = False
    ) -> list[Recommendation]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.n_items)
        encoded = [self._encode(h) for h in histories]
        width = self.max_len
        hist = np.zeros((len(encoded), width), dtype=np.int64)
        for i, (known, _) in enumerate(encoded):
            if known:
                row = known[-width:]
                hist[i, width - len(row) :] = row
        h = torch.from_numpy(fit_width(hist, width)).to(self.device)
        with self._lock, torch.no_grad():
            scores = self.model.score(h).float()
            if exclude_seen:
                scores = exclude_history(scores, h)
            top_s, top_i = topk_from_scores(scores, k)
        top_s, top_i = top_s.cpu().numpy(), top_i.cpu().numpy()
        out = []
        for i, (known, unknown) in enumerate(encoded):
            keep = np.isfinite(top_s[i])
            out.append(
                Recommendation(
                    items=[_py(v) for v in self._ids[top_i[i][keep]]],
                    scores=[float(s) for s in top_s[i][keep]],
                    unknown=unknown,
                    truncated=len(known) > width,
                )
            )
        return out
