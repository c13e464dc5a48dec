"""L-DiffRec's item clusters and per-cluster VAEs (Wang et al., SIGIR 2023, Sec. 3.4 "L-DiffRec").

L-DiffRec (1) groups the items into ``C`` clusters by k-means over item representations, (2) compresses
the slice ``x_0^c`` of a user's interaction vector that falls in cluster ``c`` with its own variational
encoder ``q_phi_c(z_0^c | x_0^c) = N(mu_phi_c, diag(sigma^2_phi_c))``, (3) runs the diffusion on the
concatenation ``z_0 = [z_0^1, ..., z_0^C]`` and (4) decodes each ``z0_hat^c`` back to ``x0_hat^c`` with its
own decoder ``p_psi_c``. Here:

* **Item representations.** The paper clusters pre-trained LightGCN item embeddings; there is no
  LightGCN in this project, so :func:`item_clusters` uses the truncated SVD ``X ~ U S V^T`` of the binary
  (row x item) training matrix instead: item ``i`` -> ``S v_i`` (its column projected on the top left
  singular vectors; rank :data:`SVD_RANK`, at most an eighth of the items or C, as the trailing directions
  are mostly noise), L2-normalised so that the clusters follow co-occurrence, not popularity; then
  :func:`kmeans` (best of 10 k-means++ starts, seeded). Items that never occur in the training data
  join the smallest cluster, so that every item has a cluster and a score.
* **Shapes that do not depend on the data.** A cluster's encoder input (and decoder output) is as wide as
  the cluster, which is only known once the items are clustered. So the first encoder layer and the last
  decoder layer are *item-indexed*: one weight row per item (:class:`ItemsToClusters`,
  :class:`ClustersToItems`), and item ``i``'s row is used by cluster ``item_cluster[i]`` only; together
  the rows of cluster ``c`` are exactly a ``Linear(|c|, width)`` (or ``Linear(width, |c|)``). The layers
  between are one ``Linear`` per cluster stored as ``[C, in, out]`` (:class:`ClusterLinear`). Every
  parameter's shape is thus fixed by ``(n_items, C, widths)``; the assignment ``item_cluster`` is a
  persistent buffer, so a saved model reloads (``load_state_dict``) to the same clusters and scores.
* **Latent widths.** Every cluster gets the same latent width ``d`` (the authors' code splits one total
  width in proportion to the cluster sizes, which would tie the shapes to the data).
* **Losses** (Mult-VAE, Liang et al. 2018): :func:`multinomial_nll`, a softmax over *all* items (the
  decoders' outputs in item order, so that the scores of different clusters are comparable), and
  :func:`gaussian_kl` against ``N(0, I)``, summed over latent entries; both averaged over the batch.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import svds
from torch import nn

SVD_RANK = 64  # rank of the item representations clustered by k-means (at most 1/8 of the items)
KMEANS_ITERS = 100
KMEANS_RESTARTS = 10


# -- clustering ------------------------------------------------------------------------------
def kmeans(
    points: np.ndarray, k: int, *, seed: int = 0, iters: int = KMEANS_ITERS, restarts: int = KMEANS_RESTARTS
) -> np.ndarray:
    """k-means: labels ``[n]`` in ``0..k-1`` of the best (least within-cluster squared distance) of
    ``restarts`` runs of Lloyd's algorithm, each from a k-means++ start drawn with
    ``np.random.default_rng(seed)``. No cluster is left empty: an emptied cluster takes the point
    farthest from its centre among the clusters with more than one point."""
    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"cannot make {k} clusters of {n} points")
    points = np.asarray(points, dtype=np.float64)
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    for _ in range(restarts):
        labels = _lloyd(points, k, rng, iters)
        cost = sum(((points[labels == j] - points[labels == j].mean(0)) ** 2).sum() for j in range(k))
        if cost < best_cost - 1e-9:
            best, best_cost = labels, cost
    return best


def _lloyd(points: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> np.ndarray:
    n = len(points)
    centres = [points[rng.integers(n)]]
    d2 = ((points - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(points[rng.choice(n, p=p)])
        d2 = np.minimum(d2, ((points - centres[-1]) ** 2).sum(1))
    C = np.stack(centres)
    sq = (points**2).sum(1)
    labels = np.full(n, -1)
    for _ in range(iters):
        dist = sq[:, None] - 2 * points @ C.T + (C**2).sum(1)[None, :]
        new = dist.argmin(1)
        counts = np.bincount(new, minlength=k)
        for j in np.flatnonzero(counts == 0):
            own = dist[np.arange(n), new].copy()
            own[counts[new] <= 1] = -np.inf  # never empty another cluster
            far = int(own.argmax())
            counts[new[far]] -= 1
            new[far], counts[j] = j, 1
        if np.array_equal(new, labels):
            break
        labels = new
        C = np.stack([points[labels == j].mean(0) for j in range(k)])
    return labels


def item_clusters(X: sp.spmatrix, n_clusters: int, *, rank: int = SVD_RANK, seed: int = 0) -> np.ndarray:
    """Cluster of every item (column of the binary training matrix ``X`` [rows, n_items]), ``[n_items]``.

    Items with a training interaction are clustered by :func:`kmeans` over their L2-normalised SVD
    representations ``s * v_i`` (rank ``min(rank, max(C, n_seen // 8))``); the others join the smallest
    cluster (lowest id on a tie)."""
    X = sp.csc_matrix(X, dtype=np.float64)
    n_items = X.shape[1]
    seen = np.flatnonzero(X.getnnz(axis=0) > 0)
    if n_clusters == 1:
        return np.zeros(n_items, dtype=np.int64)
    if len(seen) < n_clusters:
        raise ValueError(f"latent_clusters={n_clusters} but only {len(seen)} items occur in the training data")
    Xs = X[:, seen]
    r = min(rank, max(n_clusters, len(seen) // 8), min(Xs.shape) - 1)  # the trailing directions: mostly noise
    if r >= 1:
        v0 = np.random.default_rng(seed).standard_normal(min(Xs.shape))  # ARPACK's start: deterministic
        _, s, vt = svds(Xs, k=r, v0=v0)
        emb = vt.T * s  # = X^T u: the columns projected on the top left singular vectors
    else:  # a matrix too small for a truncated SVD: the raw columns
        emb = Xs.T.toarray()
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    labels = np.empty(n_items, dtype=np.int64)
    labels[seen] = kmeans(emb, n_clusters, seed=seed)
    unseen = np.ones(n_items, dtype=bool)
    unseen[seen] = False
    labels[unseen] = int(np.bincount(labels[seen], minlength=n_clusters).argmin())
    return labels


def cluster_layout(item_cluster: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, list[int]]:
    """(``perm``, ``sizes``): the items sorted by cluster (stable) and the clusters' sizes."""
    perm = torch.argsort(item_cluster, stable=True)
    return perm, torch.bincount(item_cluster, minlength=n_clusters).tolist()


# -- layers ----------------------------------------------------------------------------------
class ItemsToClusters(nn.Module):
    """``[B, n_items] -> [B, C, width]``: cluster ``c``'s output is ``x^c W^c + b_c`` over its own items
    (``W^c`` = the rows of ``weight`` of the items in ``c``): a ``Linear(|c|, width)`` per cluster."""

    def __init__(self, n_items: int, n_clusters: int, width: int):
        super().__init__()
        std = math.sqrt(2.0 / (n_items / n_clusters + width))  # Xavier normal for the expected cluster size
        self.weight = nn.Parameter(torch.randn(n_items, width) * std)
        self.bias = nn.Parameter(torch.zeros(n_clusters, width))

    def forward(self, x: torch.Tensor, perm: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        xs, ws = x[:, perm].split(sizes, 1), self.weight[perm].split(sizes, 0)
        return torch.stack([xc @ wc for xc, wc in zip(xs, ws)], 1) + self.bias


class ClustersToItems(nn.Module):
    """``[B, C, width] -> [B, n_items]``: item ``i`` scores ``h^{c(i)} . w_i + b_i``, a ``Linear(width, |c|)``
    per cluster, with the outputs put back in item order."""

    def __init__(self, n_items: int, n_clusters: int, width: int):
        super().__init__()
        std = math.sqrt(2.0 / (width + n_items / n_clusters))
        self.weight = nn.Parameter(torch.randn(n_items, width) * std)
        self.bias = nn.Parameter(torch.zeros(n_items))

    def forward(self, h: torch.Tensor, perm: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ws = self.weight[perm].split(sizes, 0)
        out = torch.cat([h[:, c] @ wc.T for c, wc in enumerate(ws)], 1)  # items in cluster order
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(len(perm), device=perm.device)
        return out[:, inverse] + self.bias


class ClusterLinear(nn.Module):
    """``[B, C, a] -> [B, C, b]``: one ``Linear(a, b)`` per cluster (weights ``[C, a, b]``)."""

    def __init__(self, n_clusters: int, a: int, b: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_clusters, a, b) * math.sqrt(2.0 / (a + b)))
        self.bias = nn.Parameter(torch.zeros(n_clusters, b))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nca,cab->ncb", h, self.weight) + self.bias


class ClusteredVAE(nn.Module):
    """The ``C`` encoders ``q_phi_c`` and decoders ``p_psi_c`` of L-DiffRec (see the module docstring).

    Encoder of cluster ``c``: ``x_0^c`` (dropped out) ``-> dims[0] -> ... -> dims[-1] -> (mu, log sigma^2)``
    of width ``latent_dim`` each, ``tanh`` between layers; decoder: ``z^c -> dims[-1] -> ... -> dims[0] -> x^c``
    logits, ``tanh`` between layers. ``dims = []``: one linear layer each way. ``item_cluster`` [n_items]
    (column ``j`` = item ``j + 1``) starts round-robin and is set by :func:`item_clusters` before training.
    """

    def __init__(self, n_items: int, n_clusters: int, latent_dim: int, dims: Sequence[int] = (), dropout: float = 0.1):
        super().__init__()
        self.n_clusters, self.latent_dim = n_clusters, latent_dim
        enc = [*dims, 2 * latent_dim]
        dec = [latent_dim, *reversed(list(dims))]
        self.enc_in = ItemsToClusters(n_items, n_clusters, enc[0])
        self.enc_layers = nn.ModuleList(ClusterLinear(n_clusters, a, b) for a, b in pairwise(enc))
        self.dec_layers = nn.ModuleList(ClusterLinear(n_clusters, a, b) for a, b in pairwise(dec))
        self.dec_out = ClustersToItems(n_items, n_clusters, dec[-1])
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("item_cluster", torch.arange(n_items) % n_clusters)

    def encode(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_0`` [B, n_items] -> (``mu``, ``logvar``), each [B, C, latent_dim]."""
        perm, sizes = cluster_layout(self.item_cluster, self.n_clusters)
        h = self.enc_in(self.dropout(x0), perm, sizes)
        for layer in self.enc_layers:
            h = layer(torch.tanh(h))
        return h[..., : self.latent_dim], h[..., self.latent_dim :]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` [B, C, latent_dim] -> logits [B, n_items] in item order."""
        perm, sizes = cluster_layout(self.item_cluster, self.n_clusters)
        for layer in self.dec_layers:
            z = torch.tanh(layer(z))
        return self.dec_out(z, perm, sizes)


def multinomial_nll_rows(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mult-VAE's reconstruction loss ``-sum_i x_i log softmax(logits)_i`` of each row (no reduction)."""
    return -(F.log_softmax(logits, dim=-1) * x).sum(-1)


def multinomial_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:func:`multinomial_nll_rows` averaged over the batch."""
    return multinomial_nll_rows(logits, x).mean()


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I)) = -1/2 sum (1 + logvar - mu^2 - exp(logvar))``, summed over
    every latent entry of a row, averaged over the batch (dim 0)."""
    return (-0.5 * (1 + logvar - mu**2 - logvar.exp())).flatten(1).sum(1).mean()
