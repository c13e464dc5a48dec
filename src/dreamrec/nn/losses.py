"""Training losses shared by the models: full-softmax cross-entropy over the catalog and uniform negatives.

``softmax_cross_entropy`` is the loss of SASRec-CE and of every model with a "CE" term (GRU4Rec, Caser,
CL4SRec, DiffuRec's Eq. 24-25, DimeRec's full softmax); ``sample_negatives`` draws the uniform negatives of
SASRec's BCE (Eq. 7) and DDRM's BPR.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


@torch.compiler.disable  # drawn eagerly: torch.compile cannot trace randint over a dynamic shape
def sample_negatives(positives: torch.Tensor, n_items: int, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[N, k]`` items drawn uniformly from ``{1..n_items} \\ {positive}`` (with replacement)."""
    if n_items < 2:
        raise ValueError("negative sampling needs at least two items")
    r = torch.randint(1, n_items, (positives.shape[0], k), device=positives.device, generator=generator)
    return r + (r >= positives[:, None]).long()


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """Mean of ``logsumexp(h W^T) - h . W_y`` computed in row chunks (never holds [N, n] logits).

    Backward recomputes each chunk's logits and uses ``d/dlogits = softmax - onehot``; on CPU this
    is about twice as fast as ``F.cross_entropy(h @ W.T, y)`` for catalogs of a few thousand items
    and needs O(chunk * n) instead of O(N * n) memory.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, chunk: int) -> torch.Tensor:
        lse = torch.empty(h.shape[0], dtype=h.dtype, device=h.device)
        for s in range(0, h.shape[0], chunk):
            lse[s : s + chunk] = torch.logsumexp(h[s : s + chunk] @ weight.T, dim=1)
        target_logit = (h * weight[target]).sum(1)
        ctx.save_for_backward(h, weight, target, lse)
        ctx.chunk = chunk
        return (lse - target_logit).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        h, weight, target, lse = ctx.saved_tensors
        chunk, n = ctx.chunk, h.shape[0]
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros_like(weight)
        scale = grad / n
        for s in range(0, n, chunk):
            hc = h[s : s + chunk]
            p = (hc @ weight.T).sub_(lse[s : s + chunk, None]).exp_()  # softmax
            p[torch.arange(p.shape[0], device=p.device), target[s : s + chunk]] -= 1.0
            p.mul_(scale)
            grad_h[s : s + chunk] = p @ weight
            grad_w.addmm_(p.T, hc)
        return grad_h, grad_w, None, None


def softmax_cross_entropy(h: torch.Tensor, table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Full-softmax cross-entropy over real items: ``mean_t [-log softmax(h_t . E[1:])_{y_t - 1}]``.

    ``h`` [N, d] query states, ``table`` [n_items + 1, d] (row 0 = padding, excluded from the
    softmax), ``labels`` [N] internal ids in 1..n_items. Equal to
    ``F.cross_entropy(h @ table[1:].T, labels - 1)`` (chunked when the catalog is not tiny).
    """
    weight = table[1:]
    if h.shape[0] == 0:
        return h.sum() * 0.0
    if h.dtype != torch.float32 or h.shape[0] * weight.shape[0] <= 2**20:
        return F.cross_entropy(h @ weight.T, labels - 1)
    chunk = max(1, 2**20 // weight.shape[0])
    return _ChunkedSoftmaxCE.apply(h, weight, labels - 1, chunk)
