"""The whole reverse process in one step, for a denoiser that is affine in ``x_t``.

Every sampler update of :class:`~dreamrec.diffusion.scheduler.DiffusionScheduler` (DDPM over all ``T`` steps or
respaced, DDIM with any ``eta``; x0-prediction) is affine in the current sample and the network's estimate:

    y_{i+1} = a_i y_i + b_i x0_hat_i + sigma_i z_i,        z_i ~ N(0, I),

where ``y_0 = x_T ~ N(0, I)`` and ``y_i`` is the sample at the ``i``-th grid point (``i = 0..S-1``, the
scheduler's ``timesteps`` in order; ``y_S`` is the generated ``x_0``) and ``a_i, b_i, sigma_i`` come from
:meth:`DiffusionScheduler.step_coefficients`. When the estimate itself is affine in ``y_i``,

    x0_hat_i = A y_i + u + k_i,

with a matrix ``A`` [d, d], a per-row constant ``u`` (the condition's share) and a per-step constant ``k_i``
(the time embedding's share) -- DreamRec's ``mlp1`` denoiser ``W [x_t; c; tau(t)] + b`` is exactly that, also
under classifier-free guidance, which only changes ``u`` -- the chain is a linear-Gaussian system:
``y_{i+1} = M_i y_i + b_i (u + k_i) + sigma_i z_i`` with ``M_i = a_i I + b_i A``. Unrolled, its output is Gaussian:

    y_S = G u + g + L eps,      eps ~ N(0, I),
    G = sum_i b_i R_i,   g = sum_i b_i R_i k_i,   L L^T = R_{-1} R_{-1}^T + sum_i sigma_i^2 R_i R_i^T,

where ``R_i = M_{S-1} ... M_{i+1}`` (``R_{S-1} = I``) and ``R_{-1} = M_{S-1} ... M_0``. So an exact draw of the
``S``-step chain's output costs two ``d x d`` products per row instead of ``S`` network calls and ``S`` noise
draws: the same distribution, other noise realisations. :func:`affine_chain` computes ``(G, g, L)`` in float64
once per set of weights (``S`` products of ``d x d`` matrices).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AffineChain:
    """The output law ``y_S = G u + g + L eps`` of an affine reverse process (see the module docstring)."""

    G: torch.Tensor  # [d, d]
    g: torch.Tensor  # [d]
    L: torch.Tensor  # [d, d]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "AffineChain":
        return AffineChain(self.G.to(device, dtype), self.g.to(device, dtype), self.L.to(device, dtype))

    def sample(self, u: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``y_S`` [B, d] for per-row constants ``u`` [B, d] and standard normal ``eps`` [B, d]."""
        return torch.addmm(self.g, u, self.G.T) + eps @ self.L.T

    def mean(self, u: torch.Tensor) -> torch.Tensor:
        """``E[y_S] = G u + g`` [B, d]."""
        return torch.addmm(self.g, u, self.G.T)


def affine_chain(
    A: torch.Tensor, k: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sigma: torch.Tensor
) -> AffineChain:
    """``(G, g, L)`` of the chain ``y_{i+1} = (a_i I + b_i A) y_i + b_i (u + k_i) + sigma_i z_i`` from
    ``y_0 ~ N(0, I)``: ``A`` [d, d], ``k`` [S, d], ``a``, ``b``, ``sigma`` [S] (grid order, first step first).
    Computed in float64; ``L`` is the symmetric square root of the covariance (eigenvalues clamped at 0)."""
    S, d = k.shape
    if A.shape != (d, d) or not (a.shape == b.shape == sigma.shape == (S,)):
        raise ValueError(f"affine_chain: A {tuple(A.shape)}, k {tuple(k.shape)}, a/b/sigma "
                         f"{tuple(a.shape)}/{tuple(b.shape)}/{tuple(sigma.shape)} do not fit")
    f64 = dict(dtype=torch.float64, device=A.device)
    A, k = A.to(**f64), k.to(**f64)
    a, b, sigma = a.to(**f64), b.to(**f64), sigma.to(**f64)
    eye = torch.eye(d, **f64)
    R = eye.clone()  # R_i = M_{S-1} ... M_{i+1}, from i = S - 1 down
    G = torch.zeros(d, d, **f64)
    g = torch.zeros(d, **f64)
    cov = torch.zeros(d, d, **f64)
    for i in range(S - 1, -1, -1):
        G += b[i] * R
        g += b[i] * (R @ k[i])
        if sigma[i] > 0:
            cov += sigma[i] ** 2 * (R @ R.T)
        R = R @ (a[i] * eye + b[i] * A)
    cov += R @ R.T  # the starting noise y_0 = x_T ~ N(0, I)
    cov = (cov + cov.T) / 2
    lam, V = torch.linalg.eigh(cov)
    L = V * lam.clamp(min=0).sqrt()
    return AffineChain(G, g, L)
