"""``Recommender``: a trained run directory -> top-k items for raw histories (original ids).

Input handling, the same for the Python API, the CLI and the HTTP app:

* histories are lists of ORIGINAL item ids, oldest first; a string ``"42"`` matches the integer
  catalog id ``42`` and vice versa;
* unknown ids are ignored and listed in ``Recommendation.unknown`` (``strict=True`` raises
  :class:`UnknownItemsError` instead);
* an empty history (or one with only unknown ids), without an intent, is answered by the model
  where it learned an answer (it saw empty histories in training: the DreamRec protocol's first
  rows; and ``popularity``), otherwise by the training popularity ranking
  (``Recommendation.fallback == "popularity"``, scores = training counts): see ``run.json``'s
  ``empty_history`` and :func:`dreamrec.train.run.empty_history_answer`;
* a history longer than the model's window keeps its most recent ``max_len`` items
  (``Recommendation.truncated`` is set);
* ``k`` must be >= 1; a ``k`` above the catalog size returns the whole catalog;
* ``intent`` (a text) is only accepted by models with ``supports_intent = True``; other models
  raise :class:`IntentNotSupportedError` for a non-empty intent.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dreamrec.data.dataset import coerce_id, python_scalar
from dreamrec.eval.evaluate import exclude_history, seeded_rng
from dreamrec.keyed_noise import keyed_rows, row_keys
from dreamrec.retrieval.base import ItemIndex, build_index
from dreamrec.retrieval.exact import topk_from_scores
from dreamrec.serve.coalesce import Coalescer
from dreamrec.train.run import load_run


class RequestError(ValueError):
    """A request the recommender cannot answer as given (the HTTP app answers 422)."""


class UnknownItemsError(RequestError):
    """``strict=True`` and the history holds ids that are not in the catalog."""

    def __init__(self, unknown: list[Any]):
        self.unknown = unknown
        shown = ", ".join(repr(x) for x in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        super().__init__(f"{len(unknown)} unknown item id(s) in the history: {shown}")


class IntentNotSupportedError(RequestError):
    """An intent text was given to a model that cannot be steered by one."""


@dataclass
class Recommendation:
    """Top items (original ids, best first) with their scores for one history."""

    items: list[Any]
    scores: list[float]
    unknown: list[Any] = field(default_factory=list)  # history ids not in the catalog (ignored)
    truncated: bool = False  # history longer than the model's window: only the most recent items used
    fallback: str | None = None  # "popularity": no known item and no learned empty-history answer

    def to_dict(self) -> dict[str, Any]:
        return {"items": self.items, "scores": self.scores, "unknown": self.unknown, "truncated": self.truncated,
                "fallback": self.fallback}


class Recommender:
    """Recommend from a trained run (see the module docstring for how input is handled).

    Query-based models are ranked through a retrieval index built once from the item table
    (``index="exact"`` by default, ``"faiss"`` for very large catalogs; ``index_options`` go to
    :func:`dreamrec.retrieval.build_index`). Torch's generator is reseeded with ``seed`` (default:
    the run's training seed) inside a forked RNG state before each call (the caller's state is
    left as it was), so sampled (diffusion) queries give the same answer to the same request.

    One instance can be shared between threads: concurrent calls are coalesced (:mod:`dreamrec.serve.coalesce`)
    into one model call of at most ``max_batch_rows`` histories when they ask for the same ``k``,
    history exclusion and intent use; noise keyed per row keeps every answer what it would be alone.
    ``coalesce=False`` runs each call on its own, one at a time.
    """

    def __init__(
        self,
        run_dir: str | Path,
        device: str = "cpu",
        *,
        index: str = "exact",
        index_options: dict[str, Any] | None = None,
        seed: int | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        sampler_options: dict[str, Any] | None = None,
        new_item_offset: float | None = None,
        new_items: Sequence[Any] | None = None,
        coalesce: bool = True,
        max_batch_rows: int = 256,
    ):
        self.run = load_run(run_dir, device, sampler=sampler, steps=steps, sampler_options=sampler_options)
        self.device = device
        self.model = self.run.model
        self.model_name = self.run.config.model
        self.max_len = int(self.run.info["max_len"])
        self.seed = self.run.config.train.seed if seed is None else seed
        self.supports_intent = bool(getattr(self.model, "supports_intent", False))
        ids = self.run.item_ids.tolist()
        self._index = {k: i + 1 for i, k in enumerate(ids)}
        self._ids = np.asarray([python_scalar(v) for v in ids], dtype=object)
        self._lock = threading.Lock()
        self._coalescer: Coalescer[_RankJob, tuple[np.ndarray, np.ndarray]] | None = None
        if coalesce:
            self._coalescer = Coalescer(self._rank_many, key=_RankJob.shape, size=lambda j: len(j.h),
                                        max_size=max_batch_rows)
        # training counts for the popularity answer to an empty history (runs from before they were kept: none)
        counts = self.run.items.get("train_count")
        self._popularity = None
        if self.run.info.get("empty_history") == "popularity" and counts is not None:
            self._popularity = counts.to_numpy(dtype=np.float64)
        if new_item_offset is not None:  # ranks through score(): no retrieval index
            self.model = self._new_item_scoring(new_item_offset, new_items)
        elif new_items is not None:
            raise ValueError("new_items is only used with new_item_offset")
        self.retrieval: ItemIndex | None = None
        if self.model.ranks_by_query():
            with torch.no_grad():
                table = self.model.item_embeddings()[1:].detach().float().contiguous()
            self.retrieval = build_index(table, index, **(index_options or {}))

    def _new_item_scoring(self, beta: float, new_items: Sequence[Any] | None) -> torch.nn.Module:
        """The model under the new-item policy (:mod:`dreamrec.models.new_items`). The new items are
        ``new_items`` (original ids), or by default the catalog items absent from the run's training data."""
        from dreamrec.models.new_items import NewItemScoring, run_new_item_mask

        if self.supports_intent:
            raise ValueError(f"new_item_offset is not available for the intent-aware model {self.model_name!r}")
        if new_items is not None:
            unknown = [v for v in new_items if self.lookup(v) is None]
            if unknown:
                raise ValueError(f"new_items not in the catalog: {unknown[:10]}")
            mask = np.zeros(self.n_items + 1, dtype=bool)
            mask[[self.lookup(v) for v in new_items]] = True
        else:
            mask = run_new_item_mask(self.run)
        wrapped = NewItemScoring(self.model, mask, beta)  # validates beta and the mask
        return self.model if wrapped.beta is None else wrapped  # beta -inf: the policy off, the model itself

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu", **kwargs: Any) -> "Recommender":
        """Load the run directory written by ``dreamrec train`` (YAML, JSON, Parquet, safetensors)."""
        return cls(run_dir, device, **kwargs)

    @property
    def n_items(self) -> int:
        return len(self._ids)

    def lookup(self, item_id: Any) -> int | None:
        """Internal id (1..n) of an original id, or None if it is not in the catalog."""
        key = coerce_id(item_id, self._index)
        return None if key is None else self._index[key]

    def item(self, item_id: Any) -> dict[str, Any] | None:
        """The catalog row of an item (its id and metadata), or None if unknown."""
        internal = self.lookup(item_id)
        if internal is None:
            return None
        row = self.run.items.iloc[internal - 1].to_dict()
        return {str(k): _json_value(v) for k, v in row.items()}

    def _encode(self, history: Sequence[Any]) -> tuple[list[int], list[Any]]:
        known, unknown = [], []
        for x in history:
            internal = self.lookup(x)
            (unknown.append(x) if internal is None else known.append(internal))
        return known, unknown

    def recommend(
        self,
        history: Sequence[Any],
        k: int = 20,
        intent: str | None = None,
        exclude_seen: bool = False,
        strict: bool = False,
    ) -> Recommendation:
        """Top-``k`` items for one history (original ids in and out)."""
        return self.recommend_batch([history], k=k, intents=[intent], exclude_seen=exclude_seen, strict=strict)[0]

    def recommend_batch(
        self,
        histories: Sequence[Sequence[Any]],
        k: int = 20,
        intents: Sequence[str | None] | None = None,
        exclude_seen: bool = False,
        strict: bool = False,
    ) -> list[Recommendation]:
        """Top-``k`` items for each history; ``intents`` (optional) has one entry per history."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise RequestError(f"k must be an integer >= 1, got {k!r}")
        if not histories:
            return []
        intent_list = self._check_intents(intents, len(histories))
        k = min(int(k), self.n_items)
        encoded = [self._encode(h) for h in histories]
        if strict:
            unknown = [x for _, u in encoded for x in u]
            if unknown:
                raise UnknownItemsError(unknown)
        no_context = [not known and (intent_list is None or intent_list[i] is None)
                      for i, (known, _) in enumerate(encoded)]
        if self._popularity is not None and any(no_context):
            return self._with_popularity_fallback(histories, encoded, no_context, k, intent_list, exclude_seen)
        width = self.max_len
        hist = np.zeros((len(encoded), width), dtype=np.int64)
        for i, (known, _) in enumerate(encoded):
            if known:
                row = known[-width:]
                hist[i, width - len(row) :] = row
        h = torch.from_numpy(hist).to(self.device)
        seen = [sorted(set(known)) for known, _ in encoded] if exclude_seen else None
        job = _RankJob(h, k, intent_list, seen)
        top_s, top_i = self._coalescer(job) if self._coalescer is not None else self._rank_many([job])[0]
        out = []
        for i, (known, unknown) in enumerate(encoded):
            keep = np.isfinite(top_s[i])
            out.append(
                Recommendation(
                    items=[python_scalar(v) for v in self._ids[top_i[i][keep] - 1]],
                    scores=[float(s) for s in top_s[i][keep]],
                    unknown=unknown,
                    truncated=len(known) > width,
                )
            )
        return out

    def _with_popularity_fallback(
        self, histories: Sequence[Sequence[Any]], encoded: list[tuple[list[int], list[Any]]], no_context: list[bool],
        k: int, intents: list[str | None] | None, exclude_seen: bool,
    ) -> list[Recommendation]:
        """Rows without context get the popularity ranking (ties by catalog order); the others the model."""
        assert self._popularity is not None
        rest = [i for i, empty in enumerate(no_context) if not empty]
        ranked = self.recommend_batch(
            [histories[i] for i in rest], k=k, intents=None if intents is None else [intents[i] for i in rest],
            exclude_seen=exclude_seen,
        ) if rest else []
        order = np.argsort(-self._popularity, kind="stable")[:k]
        top = [python_scalar(v) for v in self._ids[order]]
        out: list[Recommendation] = []
        it = iter(ranked)
        for i, empty in enumerate(no_context):
            if empty:
                out.append(Recommendation(items=list(top), scores=[float(s) for s in self._popularity[order]],
                                          unknown=encoded[i][1], fallback="popularity"))
            else:
                out.append(next(it))
        return out

    def _check_intents(self, intents: Sequence[str | None] | None, n: int) -> list[str | None] | None:
        if intents is None:
            return None
        if len(intents) != n:
            raise RequestError(f"got {len(intents)} intents for {n} histories")
        cleaned = [None if t is None or not str(t).strip() else str(t) for t in intents]
        if all(t is None for t in cleaned):
            return None
        if not self.supports_intent:
            raise IntentNotSupportedError(
                f"model {self.model_name!r} does not take an intent; leave 'intent' empty or serve an intent-aware model"
            )
        return cleaned

    def _rank_many(self, jobs: list["_RankJob"]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Rank the rows of several jobs of one shape in one model call, then split the answer."""
        if len(jobs) == 1:
            j = jobs[0]
            return [self._rank(j.h, j.k, j.intents, j.seen)]
        h = torch.cat([j.h for j in jobs])
        intents = None if jobs[0].intents is None else [t for j in jobs for t in j.intents]
        seen = None if jobs[0].seen is None else [row for j in jobs for row in j.seen]
        top_s, top_i = self._rank(h, jobs[0].k, intents, seen)
        out, start = [], 0
        for j in jobs:
            n = len(j.h)
            out.append((top_s[start:start + n], top_i[start:start + n]))
            start += n
        return out

    def _rank(
        self, h: torch.Tensor, k: int, intents: list[str | None] | None, seen: list[list[int]] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores [B, k], internal ids [B, k]); items in ``seen`` (each row's whole known history,
        not only the model's window) come back with score -inf."""
        extra = {} if intents is None else {"intent": intents}
        # keyed noise: a sampled (diffusion) answer is a function of the row (seed, history, intent) alone,
        # whatever the batch; the caller's RNG state is left untouched
        keys = row_keys(self.seed, h, intents)
        with self._lock, torch.no_grad(), seeded_rng(self.seed, self.device), keyed_rows(keys):
            if self.retrieval is None:
                scores = self.model.score(h, **extra).float()
                if seen is not None:
                    scores = exclude_history(scores, torch.from_numpy(_pad_rows(seen)).to(scores.device))
                top_s, top_c = topk_from_scores(scores, k)
            else:
                q = self.model.query(h, **extra).float()
                wanted = min(k + (max(map(len, seen)) if seen is not None else 0), self.n_items)
                top_s, top_c = self.retrieval.search(q, wanted)
        top_s, ids = top_s.cpu().numpy().copy(), top_c.cpu().numpy() + 1
        if self.retrieval is not None:
            if seen is not None:
                for i in range(len(ids)):
                    top_s[i][np.isin(ids[i], seen[i])] = -np.inf
                order = np.argsort(-top_s, axis=1, kind="stable")
                top_s, ids = np.take_along_axis(top_s, order, 1), np.take_along_axis(ids, order, 1)
            top_s, ids = top_s[:, :k], ids[:, :k]
        return top_s, ids


@dataclass
class _RankJob:
    """One call's rows for :meth:`Recommender._rank`."""

    h: torch.Tensor
    k: int
    intents: list[str | None] | None
    seen: list[list[int]] | None

    def shape(self) -> tuple[int, bool, bool]:
        """Jobs of one shape can share a model call with an answer identical to their own."""
        return (self.k, self.intents is None, self.seen is None)


def _pad_rows(rows: list[list[int]]) -> np.ndarray:
    """Ragged lists of internal ids -> a zero-padded int64 matrix (0 = padding)."""
    out = np.zeros((len(rows), max(1, max(map(len, rows), default=0))), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _json_value(v: Any) -> Any:
    """A metadata cell as a JSON-safe value (NaN/NA -> None, NumPy scalars -> Python)."""
    v = python_scalar(v)
    if isinstance(v, np.ndarray):
        return [_json_value(x) for x in v.tolist()]
    if isinstance(v, float) and not np.isfinite(v):
        return None
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return None
        if isinstance(v, pd.Timestamp):
            return v.isoformat()
    except ImportError:  # pragma: no cover
        pass
    return v
