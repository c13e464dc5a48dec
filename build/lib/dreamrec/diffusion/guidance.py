"""Classifier-free guidance (Ho & Salimans, 2022), as used by DreamRec (Eq. 15, Algorithm 2 line 6).

Training drops the condition ``c`` to a learned null token ``∅`` with probability ``p_uncond``
(:func:`drop_condition`); sampling mixes the two predictions with guidance strength ``w``:

    f~(x_t, c, t) = (1 + w) f(x_t, c, t) - w f(x_t, ∅, t).

The conditional and unconditional predictions come from ONE batched network call on ``2B`` rows
(the rows of ``c`` stacked over ``B`` copies of ``∅``); ``w = 0`` skips the unconditional half and
returns the conditional model exactly.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

# f(x_t, t, condition) -> prediction; the condition is whatever the network takes (e.g. [B, d])
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _twice(t: torch.Tensor) -> torch.Tensor:
    """Steps for the stacked ``2B`` rows: a shared ``[1]`` step stays shared, ``[B]`` is repeated."""
    return t if t.ndim == 0 or t.shape[0] == 1 else torch.cat([t, t])


def drop_condition(c: torch.Tensor, null_c: torch.Tensor, p_uncond: float) -> torch.Tensor:
    """Replace each row of ``c`` [B, ...] by ``null_c`` [...] with probability ``p_uncond``
    (DreamRec Algorithm 1, line 4). Uses torch's global generator."""
    if p_uncond <= 0:
        return c
    drop = torch.rand(c.shape[0], device=c.device) < p_uncond
    return torch.where(drop.reshape(-1, *((1,) * (c.ndim - 1))), null_c.to(c.dtype), c)


def guided_prediction(
    denoiser: Denoiser,
    x_t: torch.Tensor,
    t: torch.Tensor,
    c: torch.Tensor,
    null_c: torch.Tensor,
    guidance_w: float,
) -> torch.Tensor:
    """``(1 + w) f(x_t, c, t) - w f(x_t, ∅, t)`` with one call of ``denoiser`` on ``2B`` rows.

    ``c`` is ``[B, ...]`` and ``null_c`` either one row ``[...]`` (broadcast) or ``[B, ...]``;
    ``t`` is ``[B]`` or a shared ``[1]`` step.
    """
    if guidance_w == 0:
        return denoiser(x_t, t, c)
    B = x_t.shape[0]
    null_rows = null_c.expand_as(c) if null_c.ndim < c.ndim else null_c
    out = denoiser(torch.cat([x_t, x_t]), _twice(t), torch.cat([c, null_rows]))
    cond, uncond = out[:B], out[B:]
    return (1 + guidance_w) * cond - guidance_w * uncond


class ClassifierFreeGuidance:
    """``model_fn(x_t, t)`` for :func:`dreamrec.diffusion.scheduler.sample`: the guided prediction
    of ``denoiser`` for fixed conditions ``c`` [B, ...].

    The ``2B`` stacked condition ``[c; ∅ ... ∅]`` is built once, not at every step.
    """

    def __init__(self, denoiser: Denoiser, c: torch.Tensor, null_c: torch.Tensor, guidance_w: float):
        self.denoiser = denoiser
        self.guidance_w = float(guidance_w)
        self.B = c.shape[0]
        if self.guidance_w == 0:
            self.condition = c
        else:
            null_rows = null_c.expand_as(c) if null_c.ndim < c.ndim else null_c
            self.condition = torch.cat([c, null_rows.to(c.dtype)])

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.guidance_w == 0:
            return self.denoiser(x_t, t, self.condition)
        out = self.denoiser(torch.cat([x_t, x_t]), _twice(t), self.condition)
        w = self.guidance_w
        return (1 + w) * out[: self.B] - w * out[self.B :]
