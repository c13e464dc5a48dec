"""Denoising networks ``f(x_t, c, t)`` and diffusion time embeddings.

DreamRec (Yang et al., 2023, Sec. 4.2.2 and Figure 2) predicts the clean target embedding with an
MLP over the concatenation ``[x_t, c, tau(t)]`` of the noisy item ``x_t``, the guidance ``c`` and an
embedding ``tau(t)`` of the diffusion step:

* ``mlp1``: one linear layer ``W [x_t; c; tau(t)] + b`` (``3d -> d``);
* ``mlp2``: ``W_2 GELU(W_1 [x_t; c; tau(t)] + b_1) + b_2`` (``3d -> 2d -> d``; the hidden width ``2d`` is
  the authors', ``mlp_width`` changes it).

With ``self_condition`` (Chen et al., 2023, "Analog Bits", Sec. 3.2) the input also carries the
network's own previous estimate of ``x_0``: ``[x_t; c; tau(t); x0_sc]`` (``4d`` wide), zeros when there
is none; :class:`SelfConditioned` feeds it at sampling time.

The condition may be wider than ``d`` (``condition_width``): dreamrec-ablation's ``denoiser_history`` passes
``[c; h_bar]``, the guidance and the mean of the history's item embeddings (``2d``). The first layer then
reads ``[x_t; c; h_bar; tau(t)]``; only the first ``d`` entries, ``c``, take part in the residual below.

With ``residual`` the network predicts a correction to the guidance, ``f = c + MLP([x_t; c; tau(t)])``,
its output layer initialised at zero, so that training starts from ``f = c`` (the guidance itself as
the x0 estimate, which is what a SASRec-style model scores with) instead of a random projection.
``dropout`` (``mlp2`` only) drops units of the hidden layer ``GELU(W_1 [...] + b_1)`` in training.

``tau(t)`` is the sinusoidal embedding of Vaswani et al. (2017) / DDPM followed by a small MLP
(``d -> 2d -> d`` with GELU), as in the authors' code.

For speed the first layer is applied as three matrix products on the slices of one ``3d``-wide
weight (identical to a linear layer on the concatenation, without materialising it), and
``t`` may be a single step ``[1]`` shared by every row: the time MLP then runs once, not per row.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DenoiserType = Literal["mlp1", "mlp2"]


class SinusoidalTimeEmbedding(nn.Module):
    """``[sin(t w_0), ..., sin(t w_{k-1}), cos(t w_0), ..., cos(t w_{k-1})]`` with
    ``w_i = 10000^{-i / (k - 1)}``, ``k = dim // 2`` (zero-padded to ``dim`` when odd)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        half = max(dim // 2, 1)
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``[N]`` steps -> ``[N, dim]``."""
        angles = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
        if emb.shape[-1] < self.dim:
            emb = F.pad(emb, (0, self.dim - emb.shape[-1]))
        return emb[:, : self.dim]


class TimeEmbedding(nn.Module):
    """``tau(t) = W_2 GELU(W_1 sinusoid(t) + b_1) + b_2`` (``d -> 2d -> d``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.sinusoid = SinusoidalTimeEmbedding(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t))


class MLPDenoiser(nn.Module):
    """DreamRec's x0-predictor ``f(x_t, c, t) = MLP([x_t; c; tau(t)])`` (see module docstring).

    ``forward(x_t [B, d], t [B] or [1], c [B, condition_width]) -> [B, d]``; a ``[1]`` step is broadcast to all rows.
    """

    def __init__(self, hidden: int, kind: DenoiserType = "mlp1", self_condition: bool = False, residual: bool = False,
                 dropout: float = 0.0, condition_width: int | None = None, mlp_width: int | None = None):
        super().__init__()
        if kind not in ("mlp1", "mlp2"):
            raise ValueError(f"unknown denoiser {kind!r}; expected mlp1 or mlp2")
        if dropout and kind != "mlp2":
            raise ValueError(f"denoiser dropout {dropout} needs the mlp2 denoiser (mlp1 has no hidden layer)")
        self.dropout = nn.Dropout(dropout)
        self.hidden = hidden
        self.condition_width = hidden if condition_width is None else condition_width
        if self.condition_width < hidden:
            raise ValueError(f"condition_width ({self.condition_width}) must be at least hidden ({hidden}): "
                             "the condition starts with the guidance c")
        self.kind = kind
        self.self_condition = self_condition
        self.time_embedding = TimeEmbedding(hidden)
        if mlp_width is not None and kind != "mlp2":
            raise ValueError(f"mlp_width {mlp_width} needs the mlp2 denoiser (mlp1 has no hidden layer)")
        width = hidden if kind == "mlp1" else (2 * hidden if mlp_width is None else mlp_width)
        extra = self.condition_width - hidden
        self.fc_in = nn.Linear((4 if self_condition else 3) * hidden + extra, width)  # [x_t; cond; tau(t) (; x0_sc)]
        self.fc_out = nn.Linear(width, hidden) if kind == "mlp2" else None
        self.residual = residual
        if residual:  # start at f = c: the correction's output layer is zero
            last = self.fc_out if self.fc_out is not None else self.fc_in
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    @property
    def affine_in_condition(self) -> bool:
        """Whether ``f`` is ``W_c c`` plus terms without ``c`` (``mlp1``, no residual, no self-conditioning):
        then the classifier-free guided ``(1 + w) f(x, c) - w f(x, ∅)`` equals ``f`` with the condition's
        projection ``(1 + w) W_c c - w W_c ∅`` (``c_proj``), one call on ``B`` rows instead of ``2B``."""
        return self.fc_out is None and not self.residual and not self.self_condition

    def affine_parts(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A [d, d], k [S, d])`` with ``f(x_t, c, t_i) = A x_t + W_c c + k_i`` for the steps ``t`` [S]
        (``A = W_x``, ``k_i = W_t tau(t_i) + b``); only when :attr:`affine_in_condition` (``mlp1``)."""
        if not self.affine_in_condition:
            raise ValueError("affine_parts needs an mlp1 denoiser without residual or self-conditioning")
        d, e = self.hidden, self.hidden + self.condition_width
        W, b = self.fc_in.weight, self.fc_in.bias
        return W[:, :d], F.linear(self.time_embedding(t.reshape(-1)), W[:, e : e + d], b)

    def project_condition(self, c: torch.Tensor) -> torch.Tensor:
        """``W_c c``, the condition's part of the first layer: a sampler computes it once per call
        and passes it to every step as ``c_proj`` (the condition does not change between steps)."""
        d = self.hidden
        return F.linear(c, self.fc_in.weight[:, d : d + self.condition_width])

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        c: torch.Tensor,
        c_proj: torch.Tensor | None = None,
        x0_sc: torch.Tensor | None = None,
        correction_scale: float = 1.0,
    ) -> torch.Tensor:
        """``c_proj`` = :meth:`project_condition` of ``c`` when precomputed (the output is identical);
        ``x0_sc`` [B, d] the self-conditioning estimate (None = zeros; only with ``self_condition``);
        ``correction_scale`` s (``residual`` only): return ``c + s MLP(...)``."""
        d, e = self.hidden, self.hidden + self.condition_width  # x_t = W[:, :d], cond = W[:, d:e]
        W, b = self.fc_in.weight, self.fc_in.bias
        tau = self.time_embedding(t.reshape(-1))  # [B, d] or [1, d]
        if c_proj is None:
            c_proj = self.project_condition(c)
        # W [x_t; c; tau] + b == W_x x_t + W_c c + (W_t tau + b)
        h = F.linear(x_t, W[:, :d]) + c_proj + F.linear(tau, W[:, e : e + d], b)
        if x0_sc is not None:
            if not self.self_condition:
                raise ValueError("x0_sc given to a denoiser built without self_condition")
            h = h + F.linear(x0_sc, W[:, e + d :])  # a zero x0_sc adds nothing: None is the zeros
        out = h if self.fc_out is None else self.fc_out(self.dropout(F.gelu(h)))
        if not self.residual:
            if correction_scale != 1.0:
                raise ValueError(f"correction_scale {correction_scale} needs a residual denoiser")
            return out
        return c[..., :d] + correction_scale * out  # s = 1: c + out exactly


class SelfConditioned:
    """A self-conditioning denoiser for the samplers: each call feeds the previous call's output as
    ``x0_sc`` (Chen et al., 2023). The first call has no previous estimate, so it makes one with
    ``x0_sc = 0`` and then refines it (two network calls), as the training's self-conditioned
    branch does; a one-step sampler thus gets ``f(x_T, c, T, f(x_T, c, T, 0))``.

    Rows are those of the calls (``2B`` under classifier-free guidance): each row is conditioned on
    its own branch's previous output.
    """

    def __init__(self, denoiser: MLPDenoiser, **fixed: torch.Tensor | float):
        self.denoiser = denoiser
        self.fixed = fixed
        self.previous: torch.Tensor | None = None

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.previous is None:
            self.previous = self.denoiser(x_t, t, c, **self.fixed)
        self.previous = self.denoiser(x_t, t, c, x0_sc=self.previous, **self.fixed)
        return self.previous
