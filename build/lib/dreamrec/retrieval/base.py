"""The one retrieval interface: an index over an item table answers inner-product top-k queries."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class ItemIndex(Protocol):
    """Inner-product search over an item table of ``len(index)`` rows.

    ``search(queries [B, d], k)`` returns ``(scores [B, k'], columns [B, k'])`` with
    ``k' = min(k, len(index))``, best first; column ``j`` is row ``j`` of the table the index
    was built from (for a model's table without its padding row: internal item ``j + 1``).
    """

    def __len__(self) -> int: ...

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def nbytes(self) -> int:
        """Memory held by the index's data, in bytes."""
        ...


def build_index(items: torch.Tensor, kind: str = "exact", **options: object) -> ItemIndex:
    """An index over ``items`` [n, d]: ``"exact"`` (default; matmul + top-k) or ``"faiss"``.

    ``options`` go to the index class (``chunk_size`` for exact; ``spec``, ``nprobe``,
    ``ef_search``, ``train_size``, ``seed`` for FAISS).
    """
    if kind == "exact":
        from dreamrec.retrieval.exact import ExactIndex

        return ExactIndex(items, **options)  # type: ignore[arg-type]
    if kind == "faiss":
        from dreamrec.retrieval.faiss_index import FaissIndex

        return FaissIndex(items, **options)  # type: ignore[arg-type]
    raise ValueError(f"unknown index kind {kind!r}; use 'exact' or 'faiss'")
