"""Classifier-free guidance over two conditions: the history ``h`` and the intention ``iota``
(iDreamRec Sec. 3.3, guidance strengths ``w`` for the history and ``rho`` for the intention).

Training drops each condition independently to its learned null token (``p_uncond`` each,
:func:`drop_mask`). Sampling combines three predictions of the same network,

    f~ = f(x_t, h, iota, t) + w [f(x_t, h, iota, t) - f(x_t, ∅, iota, t)] + rho [f(x_t, h, iota, t) - f(x_t, h, ∅, t)]
       = (1 + w + rho) f(h, iota) - w f(∅, iota) - rho f(h, ∅),

the two-condition extension of DreamRec's Eq. 15 ``(1 + w) f(h) - w f(∅)``: ``rho = 0`` gives back
DreamRec's guidance (with the intention kept in both terms), ``w = rho = 0`` the conditional model
``f(h, iota)`` exactly. For a row without an intention ``f(h, ∅) = f(h, iota)`` and the ``rho``
term vanishes. All needed predictions come from ONE batched network call per step: the branches'
conditions are stacked along the batch once (:func:`guidance_branches`), and ``x_t`` is repeated.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

Branch = Literal["cond", "no_history", "no_intent"]
# f(x_t, t, stacked condition) -> prediction; the condition object is whatever the network takes
Denoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def guidance_branches(w: float, rho: float) -> list[Branch]:
    """The predictions needed for strengths ``(w, rho)``, in stacking order: always ``cond`` =
    ``f(h, iota)``, then ``no_history`` = ``f(∅, iota)`` if ``w != 0``, ``no_intent`` = ``f(h, ∅)`` if ``rho != 0``."""
    out: list[Branch] = ["cond"]
    if w != 0:
        out.append("no_history")
    if rho != 0:
        out.append("no_intent")
    return out


def combine_two_conditions(
    f_cond: torch.Tensor,
    f_no_history: torch.Tensor | None,
    f_no_intent: torch.Tensor | None,
    w: float,
    rho: float,
) -> torch.Tensor:
    """``(1 + w + rho) f(h, iota) - w f(∅, iota) - rho f(h, ∅)`` (terms with a zero strength skipped)."""
    out = f_cond
    if w != 0:
        assert f_no_history is not None
        out = out + w * (f_cond - f_no_history)
    if rho != 0:
        assert f_no_intent is not None
        out = out + rho * (f_cond - f_no_intent)
    return out


def _repeat_t(t: torch.Tensor, k: int) -> torch.Tensor:
    """Steps for ``k`` stacked copies: a shared ``[1]`` (or scalar) step stays shared, ``[B]`` is tiled."""
    return t if t.ndim == 0 or t.shape[0] == 1 else t.repeat(k)


class TwoConditionGuidance:
    """``model_fn(x_t, t)`` for :func:`dreamrec.diffusion.scheduler.sample`: the guided prediction
    for fixed conditions, from ONE call of ``denoiser`` on ``k B`` rows per step.

    ``condition`` is the stacked condition of the ``k`` branches ``guidance_branches(w, rho)`` (in
    that order, ``B`` rows each), built once by the caller; ``calls`` counts network calls.
    """

    def __init__(self, denoiser: Denoiser, condition: Any, batch_size: int, w: float, rho: float):
        self.denoiser = denoiser
        self.condition = condition
        self.B = int(batch_size)
        self.w, self.rho = float(w), float(rho)
        self.branches: Sequence[Branch] = guidance_branches(self.w, self.rho)
        self.calls = 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = len(self.branches)
        x = x_t if k == 1 else x_t.repeat(k, *([1] * (x_t.ndim - 1)))
        out = self.denoiser(x, _repeat_t(t, k), self.condition)
        self.calls += 1
        parts = dict(zip(self.branches, out.split(self.B)))
        return combine_two_conditions(parts["cond"], parts.get("no_history"), parts.get("no_intent"), self.w, self.rho)


def drop_mask(batch_size: int, p_uncond: float, device: torch.device | str | None = None) -> torch.Tensor:
    """``[B]`` bool, True where a condition is dropped to its null token (probability ``p_uncond``,
    torch's global generator)."""
    if p_uncond <= 0:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    return torch.rand(batch_size, device=device) < p_uncond
