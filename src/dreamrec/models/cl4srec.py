"""CL4SRec (Xie et al., ICDE 2022): SASRec with a contrastive term over augmented sequences.

For every training sequence ``s_u`` (of ``n`` real items) two views are drawn, each with one
augmentation chosen uniformly from (Sec. IV-B):

* **crop** (Eq. 1): a random contiguous subsequence of length ``L_c = max(1, floor(eta n))``;
* **mask** (Eq. 2): ``floor(gamma n)`` random items replaced by a special ``[mask]`` item;
* **reorder** (Eq. 3): a random contiguous subsequence of length ``L_r = floor(beta n)`` shuffled.

Both views are encoded by the shared SASRec encoder, the representation of a view is the last
position's state, and the InfoNCE loss (Eq. 4) treats the other view of the same sequence as the
positive and the ``2N - 2`` other views of the batch as negatives:

    l(s~_{2u-1}, s~_{2u}) = -log exp(sim(a, b) / tau) / sum_{m != a} exp(sim(a, m) / tau),

with ``sim`` the inner product (or cosine) and the loss averaged over all ``2N`` anchors. The
total loss is ``L_main + lambda L_cl`` (Eq. 7) with SASRec's cross-entropy as ``L_main``.

Views live in the same right-aligned, zero-padded ``[B, L]`` layout as histories; the ``[mask]``
item is row ``n_items + 1`` of the input table and is never ranked.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from dreamrec.data.batching import Batch, labelled_positions
from dreamrec.models.base import ModelConfig, SequentialRecommender
from dreamrec.models.sasrec import SASRecConfig, sasrec_encoder
from dreamrec.nn.losses import softmax_cross_entropy


class CL4SRecConfig(SASRecConfig):
    loss: Literal["ce", "bce"] = Field("ce", description="CL4SRec's next-item loss is the full softmax (Eq. 7's L_main)")
    crop_eta: float = Field(0.6, gt=0, le=1, description="eta: share of the sequence kept by crop")
    mask_gamma: float = Field(0.3, ge=0, le=1, description="gamma: share of items masked")
    reorder_beta: float = Field(0.6, ge=0, le=1, description="beta: share of the sequence reordered")
    augmentations: tuple[Literal["crop", "mask", "reorder"], ...] = ("crop", "mask", "reorder")
    cl_weight: float = Field(0.1, ge=0, description="lambda of Eq. 7")
    tau: float = Field(1.0, gt=0, description="InfoNCE temperature")
    similarity: Literal["dot", "cos"] = "dot"

    @model_validator(mode="after")
    def _tied(self) -> "CL4SRecConfig":
        if not self.tie_items:
            raise ValueError("tie_items=false is not supported by cl4srec (its table also holds the mask token)")
        return self


def _lengths(history: torch.Tensor) -> torch.Tensor:
    return (history > 0).sum(1)


def crop(history: torch.Tensor, eta: float, start: torch.Tensor | None = None) -> torch.Tensor:
    """Keep ``L_c = max(1, floor(eta n))`` consecutive items starting at offset ``start`` (default
    uniform in ``[0, n - L_c]``) of each right-aligned row; the result is right-aligned again."""
    B, L = history.shape
    n = _lengths(history)
    c = torch.clamp(torch.floor(eta * n.double()).long(), min=1).minimum(n)
    if start is None:
        start = (torch.rand(B, device=history.device) * (n - c + 1)).long()
    first = L - n + start  # column of the first kept item
    j = torch.arange(L, device=history.device)[None]
    src = first[:, None] + j - (L - c)[:, None]
    keep = j >= (L - c)[:, None]
    return torch.where(keep, history.gather(1, src.clamp(0, L - 1)), torch.zeros_like(history))


def mask_items(history: torch.Tensor, gamma: float, mask_token: int, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Replace ``floor(gamma n)`` real items of each row by ``mask_token``: those with the smallest
    ``scores`` (default uniform random, i.e. a uniformly random subset)."""
    n = _lengths(history)
    k = torch.floor(gamma * n.double()).long()
    valid = history > 0
    if scores is None:
        scores = torch.rand(history.shape, device=history.device)
    scores = scores.masked_fill(~valid, float("inf"))
    rank = scores.argsort(1).argsort(1)  # 0 = smallest score
    chosen = valid & (rank < k[:, None])
    return torch.where(chosen, torch.full_like(history, mask_token), history)


def reorder(history: torch.Tensor, beta: float, start: torch.Tensor | None = None,
            keys: torch.Tensor | None = None) -> torch.Tensor:
    """Shuffle ``L_r = floor(beta n)`` consecutive items starting at offset ``start`` (default uniform
    in ``[0, n - L_r]``) of each row; the window is sorted by ``keys`` (default random = a uniform shuffle)."""
    B, L = history.shape
    n = _lengths(history)
    r = torch.floor(beta * n.double()).long()
    if start is None:
        start = (torch.rand(B, device=history.device) * (n - r + 1)).long()
    a = L - n + start  # first column of the window
    j = torch.arange(L, device=history.device)[None].expand(B, L)
    inside = (j >= a[:, None]) & (j < (a + r)[:, None])
    if keys is None:
        keys = torch.rand(B, L, device=history.device)
    # columns outside keep their index; inside ones get keys spread over (a - 0.5, a + r - 0.5)
    sort_key = torch.where(inside, a[:, None] - 0.5 + keys.clamp(1e-6, 1 - 1e-6) * r[:, None], j.double())
    return history.gather(1, sort_key.argsort(1))


def info_nce(z1: torch.Tensor, z2: torch.Tensor, tau: float = 1.0, similarity: str = "dot") -> torch.Tensor:
    """InfoNCE over ``2N`` views (CL4SRec Eq. 4): each view's positive is the other view of its
    sequence, the other ``2N - 2`` views are negatives; mean over the ``2N`` anchors."""
    N = z1.shape[0]
    z = torch.cat([z1, z2])
    if similarity == "cos":
        z = F.normalize(z, dim=1)
    sim = (z @ z.T) / tau
    sim = sim.masked_fill(torch.eye(2 * N, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.cat([torch.arange(N, 2 * N), torch.arange(N)]).to(z.device)
    return F.cross_entropy(sim, positive)


class CL4SRec(SequentialRecommender):
    name: ClassVar[str] = "cl4srec"
    Config: ClassVar[type[ModelConfig]] = CL4SRecConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "seq2seq"
    config: CL4SRecConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or CL4SRecConfig()
        assert isinstance(config, CL4SRecConfig)
        super().__init__(n_items, max_len, config)
        self.mask_token = n_items + 1
        # the table has one extra row for the [mask] token (input only, never ranked)
        self.encoder = sasrec_encoder(
            n_items, max_len, config, item_embedding=nn.Embedding(n_items + 2, config.hidden, padding_idx=0)
        )

    def augment(self, history: torch.Tensor) -> torch.Tensor:
        """One view per row, each with an augmentation drawn uniformly from ``config.augmentations``."""
        cfg = self.config
        views = {
            "crop": lambda h: crop(h, cfg.crop_eta),
            "mask": lambda h: mask_items(h, cfg.mask_gamma, self.mask_token),
            "reorder": lambda h: reorder(h, cfg.reorder_beta),
        }
        candidates = torch.stack([views[a](history) for a in cfg.augmentations])  # [A, B, L]
        pick = torch.randint(len(cfg.augmentations), (history.shape[0],), device=history.device)
        return candidates[pick, torch.arange(history.shape[0], device=history.device)]

    def loss(self, batch: Batch) -> torch.Tensor:
        """``L_main + lambda L_cl`` (Eq. 7)."""
        hidden = self.encoder(batch.history)
        mask, labels = labelled_positions(batch)
        main = softmax_cross_entropy(hidden[mask], self.item_embeddings(), labels)
        if self.config.cl_weight == 0:
            return main
        seqs = batch.history[_lengths(batch.history) > 0]
        if seqs.shape[0] < 2:
            return main
        z1 = self.encoder.last_hidden(self.augment(seqs))
        z2 = self.encoder.last_hidden(self.augment(seqs))
        return main + self.config.cl_weight * info_nce(z1, z2, self.config.tau, self.config.similarity)

    def query(self, history: torch.Tensor) -> torch.Tensor:
        if history.shape[1] > self.max_len:
            history = history[:, -self.max_len :]
        return self.encoder.last_hidden(history)

    def item_embeddings(self) -> torch.Tensor:
        """The real items' rows (the ``[mask]`` row is input-only)."""
        return self.encoder.item_embedding.weight[: self.n_items + 1]
