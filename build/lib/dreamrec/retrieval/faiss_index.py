"""Approximate inner-product search with FAISS (``pip install dreamrec[faiss]``) for large catalogs.

Same interface as :class:`~dreamrec.retrieval.exact.ExactIndex`; results are approximate, so
evaluation keeps using the exact index. The default structure is an inverted file
(``IVF{nlist},Flat``, inner-product metric) with ``nlist ~ 4 * sqrt(n)``: the catalog is split
into ``nlist`` k-means cells and a query scans only the ``nprobe`` cells whose centroids score
highest. HNSW (``spec="HNSW32"``) is the other common choice.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dreamrec.errors import MissingExtraError


def _faiss():  # imported lazily: faiss is an optional extra
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingExtraError("the FAISS index", "faiss-cpu", "faiss") from e
    return faiss


def default_nlist(n: int) -> int:
    """About ``4 * sqrt(n)`` cells, a power of two, at least 1 and at most ``n // 39``."""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(0, round(math.log2(target)))
    return int(max(1, min(nlist, n // 39 or 1)))


class FaissIndex:
    """A FAISS index over ``items`` [n, d] (float32), searched by inner product.

    ``spec`` is a FAISS ``index_factory`` string (default ``IVF{nlist},Flat``); ``nprobe``
    (IVF) and ``ef_search`` (HNSW) trade speed for recall; ``train_size`` items (a seeded random
    sample) train the coarse quantizer.
    """

    def __init__(
        self,
        items: torch.Tensor | np.ndarray,
        *,
        spec: str | None = None,
        nprobe: int = 32,
        ef_search: int = 128,
        train_size: int = 200_000,
        seed: int = 0,
    ):
        faiss = _faiss()
        x = np.ascontiguousarray(
            items.detach().cpu().numpy() if isinstance(items, torch.Tensor) else items, dtype=np.float32
        )
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"FaissIndex: expected a non-empty [n, d] item table, got shape {x.shape}")
        n, d = x.shape
        self.spec = spec or f"IVF{default_nlist(n)},Flat"
        self.dim = d
        self.index = faiss.index_factory(d, self.spec, faiss.METRIC_INNER_PRODUCT)
        if not self.index.is_trained:
            rng = np.random.default_rng(seed)
            sample = x if n <= train_size else x[np.sort(rng.choice(n, train_size, replace=False))]
            self.index.train(sample)
        self.index.add(x)
        self.set_search_params(nprobe=nprobe, ef_search=ef_search)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change ``nprobe`` (IVF cells scanned) and/or ``ef_search`` (HNSW beam) after building."""
        faiss = _faiss()
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None and nprobe is not None:
            ivf.nprobe = int(min(nprobe, ivf.nlist))
        hnsw = getattr(self.index, "hnsw", None)
        if hnsw is not None and ef_search is not None:
            hnsw.efSearch = int(ef_search)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def nbytes(self) -> int:
        """Bytes of the serialised index (vectors, ids, centroids or graph)."""
        return int(_faiss().serialize_index(self.index).nbytes)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B, k], columns [B, k]); a missing neighbour has score -inf and column 0."""
        k = min(k, len(self))
        q = np.ascontiguousarray(queries.detach().cpu().numpy(), dtype=np.float32)
        scores, cols = self.index.search(q, k)
        missing = cols < 0
        scores[missing], cols[missing] = -np.inf, 0
        return torch.from_numpy(scores), torch.from_numpy(cols.astype(np.int64))
