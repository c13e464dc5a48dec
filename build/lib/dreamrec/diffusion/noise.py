"""Noise for the forward process: standard Gaussian and offset noise (DiffuRecSys, Sec. 5.2).

DiffuRecSys (Eq. 17) draws the forward-process noise with a random mean shift instead of from
``N(0, I)``:

    eps = eps_0 + s * delta,    eps_0 ~ N(0, I),

where ``s`` (``offset_scale``) sets the size of the shift, and ``delta`` is either

* ``"row"`` (the offset-noise technique the paper names, Guttenberg 2023): one ``N(0, 1)`` scalar
  per sample, shared by all ``d`` coordinates, so the noise of a sample has a random mean; or
* ``"element"``: an independent ``N(0, 1)`` per coordinate, as the DiffuRecSys authors' code
  does (``randn + 0.1 * randn``), which only inflates the variance to ``1 + s^2``.

The noised target is then ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Eq. 18-20, the
reparameterised ``q(x_t | x_0)``); the offset is used in training only, sampling keeps ``N(0, I)``.
"""
from __future__ import annotations

from typing import Literal

import torch

OffsetMode = Literal["row", "element"]


def offset_noise(
    like: torch.Tensor,
    offset_scale: float,
    mode: OffsetMode = "row",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``eps = eps_0 + offset_scale * delta`` shaped like ``like`` ``[B, ..., d]`` (Eq. 17).

    ``offset_scale = 0`` gives plain ``N(0, I)`` noise (and draws nothing more). With
    ``mode = "row"`` ``delta`` is ``[B, 1, ..., 1]`` (one shift per sample); with ``"element"`` it
    has the full shape. Draws ``eps_0`` first, then ``delta``, from ``generator`` (default: global).
    """
    eps0 = torch.randn(like.shape, device=like.device, dtype=like.dtype, generator=generator)
    if offset_scale == 0:
        return eps0
    if mode == "row":
        shape = (like.shape[0],) + (1,) * (like.ndim - 1)
    elif mode == "element":
        shape = tuple(like.shape)
    else:
        raise ValueError(f"unknown offset mode {mode!r}; expected row or element")
    delta = torch.randn(shape, device=like.device, dtype=like.dtype, generator=generator)
    return eps0 + offset_scale * delta
