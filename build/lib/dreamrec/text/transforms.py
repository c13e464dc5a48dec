"""Linear transforms ``A`` of the TEM space (iDreamRec Sec. 3.2, "linear transformation").

TEM embeddings are unit vectors crowded in a narrow cone, a poor match for the ``N(0, I)`` prior of
the diffusion. iDreamRec maps every item embedding (and every intention embedding, with the SAME
map) through a linear ``A`` before diffusion:

* scaling ``A(e) = a e`` preserves the order of dot products (``A(e)·A(e') = a^2 e·e'``, ``a > 0``);
  by default ``a = sqrt(D / mean_i ||e_i||^2)`` so that entries have unit second moment;
* whitening ``A(e) = (e - mu) O Lambda^{-1/2} O^T`` with ``mu`` the mean item embedding and
  ``O Lambda O^T`` the eigendecomposition of the item covariance: the transformed items have zero
  mean and identity covariance (ZCA whitening; ``eps`` regularises tiny eigenvalues).

Both are ``A(e) = (e - mu) W`` and are stored as the buffers ``mu [D]`` and ``W [D, D]`` of
:class:`LinearTransform`, so they persist in a run's ``model.safetensors``.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

TransformKind = Literal["whitening", "scaling", "none"]


def fit_scaling(E: torch.Tensor, a: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu = 0, W = a I)`` for ``A(e) = a e``; ``a`` defaults to ``sqrt(D / mean ||e_i||^2)``."""
    E = E.double()
    D = E.shape[1]
    if a is None:
        ms = float(E.square().sum(1).mean())
        a = (D / ms) ** 0.5 if ms > 0 else 1.0
    if a <= 0:
        raise ValueError(f"scaling factor a must be > 0, got {a}")
    return torch.zeros(D, dtype=torch.float64), a * torch.eye(D, dtype=torch.float64)


def fit_whitening(E: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, W = O Lambda^{-1/2} O^T)`` for ``A(e) = (e - mu) W`` (ZCA whitening of the rows of ``E``).

    ``Sigma = (E - mu)^T (E - mu) / N = O Lambda O^T``; eigenvalues get ``eps * mean(Lambda)`` added
    (so a rank-deficient covariance, e.g. fewer items than dimensions, stays finite).
    """
    E = E.double()
    mu = E.mean(0)
    X = E - mu
    sigma = X.T @ X / max(E.shape[0], 1)
    lam, O = torch.linalg.eigh(sigma)
    lam = lam.clamp(min=0) + eps * float(lam.clamp(min=0).mean().clamp(min=1e-12))
    W = (O * lam.rsqrt()[None, :]) @ O.T
    return mu, W


class LinearTransform(nn.Module):
    """``A(e) = (e - mu) W`` with persistent buffers ``mu [D]`` and ``W [D, D]`` (identity until fitted)."""

    def __init__(self, dim: int, kind: TransformKind = "whitening"):
        super().__init__()
        self.kind: TransformKind = kind
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("W", torch.eye(dim))

    def fit(self, E: torch.Tensor, *, scale: float | None = None, eps: float = 1e-6) -> "LinearTransform":
        """Fit ``A`` to the item embeddings ``E [N, D]`` (``kind`` decides scaling/whitening/identity)."""
        if self.kind == "whitening":
            mu, W = fit_whitening(E, eps)
        elif self.kind == "scaling":
            mu, W = fit_scaling(E, scale)
        else:
            mu, W = torch.zeros(E.shape[1], dtype=torch.float64), torch.eye(E.shape[1], dtype=torch.float64)
        with torch.no_grad():
            self.mu.copy_(mu.to(self.mu))
            self.W.copy_(W.to(self.W))
        return self

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """``A(e)`` for ``e [..., D]``."""
        return (e - self.mu.to(e.dtype)) @ self.W.to(e.dtype)
