"""Noise (variance) schedules ``beta_1..beta_T`` of the forward process.

The forward process of DDPM (Ho et al., 2020; DreamRec Eq. 1) is
``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)``, so that with ``alpha_t = 1 - beta_t``
and ``alphas_cumprod_t = prod_{s<=t} alpha_s`` one has
``q(x_t | x_0) = N(sqrt(alphas_cumprod_t) x_0, (1 - alphas_cumprod_t) I)``.

Every function returns a float64 tensor of ``T`` betas; entry ``i`` (0-based) is the paper's
``beta_{i+1}``. Schedules:

* ``linear``: ``beta`` evenly spaced in ``[beta_start, beta_end]`` (Ho et al., 2020);
* ``cosine``: ``alphas_cumprod(s) = cos^2((s + 0.008)/(1.008) * pi/2)`` (Nichol & Dhariwal, 2021);
* ``sqrt``: ``alphas_cumprod(s) = 1 - sqrt(s + 1e-4)`` (Li et al., 2022, Diffusion-LM);
* ``exp``: the discretised variance-preserving SDE used by DreamRec's code (Song et al., 2021):
  ``beta(s) = beta_min + s (beta_max - beta_min)`` on ``s in [0, 1]`` and
  ``alpha_i = exp(-int_{(i-1)/T}^{i/T} beta(s) ds)``, i.e.
  ``beta_i = 1 - exp(-beta_min / T - (beta_max - beta_min) (2i - 1) / (2 T^2))``, hence
  ``alphas_cumprod_T = exp(-(beta_min + beta_max) / 2)`` exactly. (The authors evaluate the
  ``2i - 1`` term on ``linspace(1, 2T + 1, T)``, a slightly stretched grid; we use the exact integral.)
* ``trunc_lin``: DiffuRec's truncated linear schedule (Li et al., 2023; DiffuRecSys Sec. 6.2):
  the linear schedule of Ho et al. rescaled to ``T`` steps and shifted up by ``0.01`` so that even
  the first step injects noise, ``beta`` evenly spaced in
  ``[1000/T * 1e-4 + 0.01, 1000/T * 0.02 + 0.01]`` (the end falls back to ``1000/T * 1e-3 + 0.01``
  when it would exceed 1, i.e. for very small ``T``).
* :func:`linear_variance_betas` (not a named schedule, it has its own parameters): DiffRec's schedule
  (Wang et al., SIGIR 2023), linear in the noise variance rather than in ``beta``:
  ``1 - bar alpha_t = s (alpha_min + (t - 1) / (T - 1) (alpha_max - alpha_min))``, kept small so that
  ``x_T`` still carries the user's interactions.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch

BetaSchedule = Literal["linear", "cosine", "sqrt", "exp", "trunc_lin"]


def linear_beta_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """``beta_t`` evenly spaced from ``beta_start`` to ``beta_end`` (DDPM, Ho et al. 2020, Sec. 4)."""
    if T == 1:
        return torch.tensor([beta_end], dtype=torch.float64)
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def betas_for_alphas_cumprod(
    T: int, alphas_cumprod: Callable[[torch.Tensor], torch.Tensor], max_beta: float = 0.999
) -> torch.Tensor:
    """Betas of a continuous ``alphas_cumprod(s)``, ``s in [0, 1]``:
    ``beta_i = min(1 - alphas_cumprod(i/T) / alphas_cumprod((i-1)/T), max_beta)``."""
    s = torch.arange(T + 1, dtype=torch.float64) / T
    a = alphas_cumprod(s)
    return (1.0 - a[1:] / a[:-1]).clamp(min=0.0, max=max_beta)


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, Eq. 17): ``f(u) = cos^2((u + s)/(1 + s) * pi/2)``."""

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return betas_for_alphas_cumprod(T, lambda u: f(u) / f(torch.zeros(1, dtype=torch.float64)), max_beta)


def sqrt_beta_schedule(T: int, s: float = 1e-4, max_beta: float = 0.999) -> torch.Tensor:
    """Diffusion-LM's sqrt schedule (Li et al. 2022): ``alphas_cumprod(u) = 1 - sqrt(u + s)``."""
    return betas_for_alphas_cumprod(T, lambda u: 1.0 - torch.sqrt(u + s), max_beta)


def exp_beta_schedule(T: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """DreamRec's "exp" schedule: the exact discretisation of the VP-SDE (see module docstring).

    ``beta_i = 1 - exp(-beta_min / T - (beta_max - beta_min) (2i - 1) / (2 T^2))``, ``i = 1..T``.
    """
    i = torch.arange(1, T + 1, dtype=torch.float64)
    return 1.0 - torch.exp(-beta_min / T - (beta_max - beta_min) * (2 * i - 1) / (2 * T * T))


def trunc_linear_beta_schedule(T: int) -> torch.Tensor:
    """DiffuRec's ``trunc_lin`` schedule: with ``scale = 1000 / T``, ``beta`` evenly spaced from
    ``scale * 1e-4 + 0.01`` to ``scale * 0.02 + 0.01`` (or to ``scale * 1e-3 + 0.01`` when that end
    would exceed 1). ``T = 32`` (the papers' default) gives ``beta`` from 0.013125 to 0.635."""
    scale = 1000.0 / T
    beta_start = scale * 1e-4 + 0.01
    beta_end = scale * 0.02 + 0.01
    if beta_end > 1:
        beta_end = scale * 1e-3 + 0.01
    if T == 1:
        return torch.tensor([beta_start], dtype=torch.float64)
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def linear_variance_betas(T: int, noise_scale: float, noise_min: float, noise_max: float, max_beta: float = 0.999) -> torch.Tensor:
    """DiffRec's noise schedule: the variance ``1 - bar alpha_t = s (alpha_min + (t-1)/(T-1) (alpha_max - alpha_min))``
    for ``t = 1..T`` (``s = noise_scale``, ``alpha_min/max = noise_min/max``), turned into betas by
    ``beta_1 = 1 - bar alpha_1`` and ``beta_t = 1 - bar alpha_t / bar alpha_{t-1}`` (capped at ``max_beta``).
    ``T = 1`` gives the single variance ``s alpha_min``."""
    if T < 1:
        raise ValueError(f"need at least one diffusion step, got T={T}")
    if not 0 < noise_scale <= 1:
        raise ValueError(f"noise_scale must be in (0, 1], got {noise_scale}")
    if not 0 < noise_min < 1 or not 0 < noise_max < 1:
        raise ValueError(f"noise_min and noise_max must be in (0, 1), got {noise_min} and {noise_max}")
    if T > 1 and not noise_min < noise_max:
        raise ValueError(f"noise_min ({noise_min}) must be below noise_max ({noise_max}) so that the noise grows with t")
    variance = noise_scale * torch.linspace(noise_min, noise_max, T, dtype=torch.float64)
    abar = 1.0 - variance
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return (1.0 - abar / abar_prev).clamp(max=max_beta)


def make_beta_schedule(
    name: BetaSchedule,
    T: int,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_min: float = 0.1,
    beta_max: float = 10.0,
) -> torch.Tensor:
    """The ``T`` betas (float64) of schedule ``name``; unused parameters are ignored."""
    if T < 1:
        raise ValueError(f"need at least one diffusion step, got T={T}")
    if name == "linear":
        betas = linear_beta_schedule(T, beta_start, beta_end)
    elif name == "cosine":
        betas = cosine_beta_schedule(T)
    elif name == "sqrt":
        betas = sqrt_beta_schedule(T)
    elif name == "exp":
        betas = exp_beta_schedule(T, beta_min, beta_max)
    elif name == "trunc_lin":
        betas = trunc_linear_beta_schedule(T)
    else:
        raise ValueError(f"unknown beta schedule {name!r}; expected linear, cosine, sqrt, exp or trunc_lin")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"{name} schedule with T={T} gives betas outside (0, 1)")
    return betas
