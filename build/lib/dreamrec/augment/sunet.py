"""The Sequential U-Net (SU-Net) of DiffuASR (Liu et al., CIKM 2023, Sec. 3.3): the noise predictor
``eps_theta(x_t, t, c)`` over the ``M`` generated item embeddings.

Each item embedding ``e in R^d`` is reshaped to a ``sqrt(d) x sqrt(d)`` grid and the ``M`` items are
stacked as the channels of one image, ``x_t in R^{M x sqrt(d) x sqrt(d)}``: the first convolution mixes
the items (so the network sees the sequence as a whole), the later ones work on feature maps as an
image U-Net does. The network is a small U-Net (one residual block per level, stride-2 convolutions
down, nearest-neighbour up with a skip connection per level); the diffusion step ``t`` (sinusoid + MLP,
:class:`dreamrec.nn.denoisers.TimeEmbedding`) and the guidance ``c`` (the mean embedding of the rest of
the sequence, through a two-layer MLP) are summed into one vector that every residual block adds to
its feature maps, as the authors' code adds the guide vector to the time embedding.

The output has the input's shape: ``[B, M, d]`` in, ``[B, M, d]`` out (the grid is internal).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dreamrec.nn.denoisers import TimeEmbedding


def grid_side(d: int) -> int:
    """``sqrt(d)``; ``d`` must be a perfect square (4, 9, 16, 64, ...)."""
    s = math.isqrt(d)
    if d < 1 or s * s != d:
        raise ValueError(f"the embedding size d={d} must be a perfect square (the SU-Net reshapes it to sqrt(d) x sqrt(d))")
    return s


def to_grid(x: torch.Tensor) -> torch.Tensor:
    """``[B, M, d] -> [B, M, sqrt(d), sqrt(d)]`` (row-major: entry ``k`` goes to ``(k // s, k % s)``)."""
    s = grid_side(x.shape[-1])
    return x.reshape(*x.shape[:-1], s, s)


def from_grid(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_grid`: ``[B, M, s, s] -> [B, M, s * s]``."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def _groups(ch: int) -> int:
    """Groups of a GroupNorm over ``ch`` channels: the largest of 8, 4, 2 dividing it with at least two
    channels per group (a one-channel group on a 1 x 1 map would normalise everything to zero), else 1."""
    return next((g for g in (8, 4, 2) if ch % g == 0 and ch // g >= 2), 1)


class ResBlock(nn.Module):
    """``x + conv(drop(act(norm(conv(act(norm(x))) + W e))))`` with a 1x1 shortcut when widths differ."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(e))[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SUNet(nn.Module):
    """``eps_theta(x_t, t, c)``: ``x_t`` ``[B, M, d]``, ``t`` ``[B]`` or a shared ``[1]``, ``c`` ``[B, d]``.

    ``channels`` are the widths of the U-Net levels (one resolution each, halved between levels:
    ``sqrt(d) = 8`` with three levels runs at 8, 4 and 2).
    """

    def __init__(self, *, M: int, d: int, channels: tuple[int, ...] = (32, 64), dropout: float = 0.1):
        super().__init__()
        if not channels:
            raise ValueError("the SU-Net needs at least one level (channels)")
        self.M, self.d, self.side = M, d, grid_side(d)
        emb_dim = 4 * channels[0]
        self.time = TimeEmbedding(emb_dim)
        self.guide = nn.Sequential(nn.Linear(d, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(M + 1, channels[0], 3, padding=1)  # the M items and the guidance
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = channels[0]
        for i, ch in enumerate(channels):
            self.down.append(ResBlock(prev, ch, emb_dim, dropout))
            if i < len(channels) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
            prev = ch
        self.mid = ResBlock(prev, prev, emb_dim, dropout)
        self.up = nn.ModuleList()
        for ch in reversed(channels):
            self.up.append(ResBlock(prev + ch, ch, emb_dim, dropout))
            prev = ch
        self.norm_out = nn.GroupNorm(_groups(prev), prev)
        self.conv_out = nn.Conv2d(prev, M, 3, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        e = self.time(t) + self.guide(c)  # [1 or B, emb] + [B, emb]
        h = self.conv_in(torch.cat([to_grid(x_t), to_grid(c[:, None, :]).expand(x_t.shape[0], -1, -1, -1)], dim=1))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, e)
        for block in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), e)
        return from_grid(self.conv_out(F.silu(self.norm_out(h))))
