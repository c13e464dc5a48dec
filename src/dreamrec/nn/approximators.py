"""DiffuRec's approximator ``f_theta`` and DiffuRecSys's cross-attention variant.

DiffuRec (Li et al., TOIS 2023; restated by DiffuRecSys, Sec. 5.1) reconstructs the target item
``x_0`` from the noised target ``x_t`` and the history ``e_1..e_n``:

* step embedding ``d_t``: sinusoidal features of the step (rescaled to ``t * 1000 / T`` as the
  authors' ``rescale_timesteps``) through ``Linear(d, 4d) - SiLU - Linear(4d, d)``;
* uncertainty ``lambda_i ~ N(delta, delta)`` (mean and standard deviation ``delta``), one draw per
  coordinate of every position, at training and at inference alike;
* **baseline** (Eq. 15): ``z_i = e_i + lambda_i ⊙ (x_t + d_t)``, then ``n_blocks`` pre-norm
  Transformer blocks ``h <- h + Drop(MHA(LN(h)))``, ``h <- h + Drop(FFN(LN(h)))``;
* **cross-attention** (DiffuRecSys Eq. 16): the history is not summed with the step; each block
  first lets the queries ``lambda_i ⊙ (x_t + d_t)`` attend over the history states
  ``h <- h + Drop(CrossAttn(Q = lambda ⊙ (x_t + d_t), K = V = LN(h)))``, then self-attention and FFN;
* ``x0_hat = LN(Drop(h))_n``, the state at the last (most recent) position (Eq. 14).

Only that last state is read, so the last block queries only the last position
(:meth:`ApproximatorBlock.forward_last`), and with ``trim_padding`` (by default on the CPU only) the
batch runs in buckets of similar history length without their all-padding columns
(:func:`dreamrec.nn.encoders.by_length`). Both are exact.

Attention is bidirectional over the real items (the target is not in the sequence, so nothing
leaks); by default padding is never a key, and the diagonal is always allowed so an empty history (all
padding) gives finite states that depend only on ``x_t`` and ``t``.

By default this deviates from the authors' code, on purpose: padding keys are masked (their mask
only acts on padded queries), the blocks end without a dropout, LayerNorm has torch's ``eps``, GELU is
exact and the weights have torch's initialisation; with ``cross_attention`` the blocks are chained
(their DiffuRecSys loop feeds ``x`` to every block, so only the last block counts) and the
cross-attention is the standard softmax attention of Eq. 16 (their code uses a linear "efficient
attention"; :mod:`dreamrec.nn.diffurecsys` reproduces it). The authors' choices are options
(``official_padding``, ``block_dropout``, ``layer_norm_eps``, ``gelu``, ``init``; see
:mod:`dreamrec.nn.official_layers`): with all of them set the approximator computes
``WHUIR/DiffuRec src/diffurec.py`` ``Diffu_xstart`` (lines 243-322). Trimming padding columns is
exact only when padding is never a key, so it is refused with ``official_padding``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dreamrec import keyed_noise
from dreamrec.nn.dropout import Dropout
from dreamrec.nn.encoders import FeedForward, MultiHeadSelfAttention, TrimPadding, by_length, trims_on
from dreamrec.nn.official_layers import (
    GeluKind,
    InitKind,
    QueryMaskedSelfAttention,
    official_init,
    query_mask,
    tanh_gelu,
)


def timestep_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Sinusoidal features ``[cos(t w_k), sin(t w_k)]`` with ``w_k = max_period^{-k / (dim/2)}``
    (``[N] -> [N, dim]``; a zero column is appended for odd ``dim``). ``t`` may be fractional.

    The result has ``dtype`` (pass the consuming weights' dtype); it is computed in at least
    float32, so half-precision outputs do not lose the phase of large ``t``."""
    half = dim // 2
    work = torch.promote_types(dtype, torch.float32)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=work, device=t.device) / half)
    args = t.to(work)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(dtype)


def sample_lambda(shape: torch.Size | tuple[int, ...], delta: float, *, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32, std: float | None = None) -> torch.Tensor:
    """``lambda ~ N(delta, std^2)``, ``std`` = ``delta`` by default: mean ``delta`` and standard deviation ``delta``
    (DiffuRec Eq. 15; DiffuRecSys Sec. 6.2: "mean of 0.001 and a standard deviation of 0.001"); ``std = 0`` gives
    ``lambda = delta`` everywhere, with no draw. Global generator, or per-row keyed noise inside
    :func:`dreamrec.keyed_noise.keyed_rows`."""
    std = delta if std is None else std
    if std == 0:
        return torch.full(shape, delta, device=device, dtype=dtype)
    return delta + std * keyed_noise.randn(shape, device=device, dtype=dtype)


def bidirectional_mask(valid: torch.Tensor) -> torch.Tensor:
    """``[B, 1, L, L]`` (True = may attend): every query sees the real items, and itself."""
    L = valid.shape[1]
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)
    return valid[:, None, None, :] | eye


class MultiHeadCrossAttention(nn.Module):
    """``softmax(Q K^T / sqrt(d_h)) V`` with queries from one sequence and keys/values from another
    (both ``[B, L, d]``, aligned so that the ``bidirectional_mask`` applies)."""

    def __init__(self, hidden: int, n_heads: int, attn_dropout: float):
        super().__init__()
        if hidden % n_heads != 0:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = hidden // n_heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.attn_drop = Dropout(attn_dropout)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = query.shape
        q = self.q(query).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(memory).view(B, memory.shape[1], 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        weights = self.attn_drop(torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1))
        return self.out((weights @ v).transpose(1, 2).reshape(B, L, D))


class ApproximatorBlock(nn.Module):
    """Pre-norm Transformer block; with ``cross_attention`` it starts with Eq. 16's cross-attention.

    The authors' options: ``official_padding`` (attention masks padded queries only,
    :class:`~dreamrec.nn.official_layers.QueryMaskedSelfAttention`; pass :func:`query_mask`),
    ``block_dropout`` (the block's output goes through a last dropout, ``diffurec.py:255``),
    ``layer_norm_eps``, ``gelu = "tanh"`` and ``init = "xavier"``."""

    def __init__(
        self, hidden: int, n_heads: int, dropout: float, cross_attention: bool, *, official_padding: bool = False,
        block_dropout: bool = False, layer_norm_eps: float = 1e-5, gelu: GeluKind = "exact", init: InitKind = "torch",
    ):
        super().__init__()
        self.cross = MultiHeadCrossAttention(hidden, n_heads, dropout) if cross_attention else None
        self.norm_cross = nn.LayerNorm(hidden, eps=layer_norm_eps) if cross_attention else None
        attention = QueryMaskedSelfAttention if official_padding else MultiHeadSelfAttention
        self.attn = attention(hidden, n_heads, dropout)
        self.norm1 = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.ffn = FeedForward(hidden, 4 * hidden, dropout, "gelu")
        if gelu == "tanh":
            tanh_gelu(self.ffn)
        self.norm2 = nn.LayerNorm(hidden, eps=layer_norm_eps)
        self.dropout = Dropout(dropout)
        self.out_dropout = Dropout(dropout) if block_dropout else None
        if init == "xavier":
            official_init(self.ffn, self.attn.out)

    def _end(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.out_dropout is None else self.out_dropout(h)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        if self.cross is not None:
            assert query is not None and self.norm_cross is not None
            h = h + self.dropout(self.cross(query, self.norm_cross(h), mask))
        h = h + self.dropout(self.attn(self.norm1(h), mask))
        return self._end(h + self.dropout(self.ffn(self.norm2(h))))

    def forward_last(self, h: torch.Tensor, mask: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(h, mask, query)[:, -1]`` [B, d] for the last block, whose other positions are never read:
        every position still gives its keys and values, only the last one is queried and fed forward."""
        if self.cross is not None:
            assert query is not None and self.norm_cross is not None
            h = h + self.dropout(self.cross(query, self.norm_cross(h), mask))
        last = h[:, -1] + self.dropout(self.attn.forward_last(self.norm1(h), mask)[:, 0])
        return self._end(last + self.dropout(self.ffn(self.norm2(last))))


class DiffuRecApproximator(nn.Module):
    """``f_theta(x_t, t, e_{1:n}) -> x0_hat`` (DiffuRec Eq. 14-15; DiffuRecSys Eq. 16 when
    ``cross_attention``). See the module docstring for the computation."""

    def __init__(
        self,
        hidden: int,
        *,
        n_blocks: int = 4,
        n_heads: int = 4,
        dropout: float = 0.1,
        delta: float = 0.001,
        delta_std: float | None = None,
        num_train_timesteps: int = 32,
        rescale_timesteps: bool = True,
        cross_attention: bool = False,
        trim_padding: TrimPadding = "auto",
        official_padding: bool = False,
        block_dropout: bool = False,
        layer_norm_eps: float = 1e-5,
        gelu: GeluKind = "exact",
        init: InitKind = "torch",
    ):
        super().__init__()
        if official_padding and trim_padding is True:
            raise ValueError("trim_padding is not exact with official_padding (padding positions are keys, each "
                             "with its own lambda draw): set trim_padding to false or 'auto'")
        if official_padding and cross_attention:
            raise ValueError("official_padding with cross_attention is not supported: the authors' cross-attention "
                             "model is the separate 'diffurecsys' model")
        self.hidden = hidden
        self.trim_padding: TrimPadding = False if official_padding else trim_padding
        self.official_padding = official_padding
        self.delta = delta
        self.delta_std = delta_std
        self.cross_attention = cross_attention
        self.t_scale = 1000.0 / num_train_timesteps if rescale_timesteps else 1.0
        self.time_mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.SiLU(), nn.Linear(4 * hidden, hidden))
        self.blocks = nn.ModuleList(
            ApproximatorBlock(
                hidden, n_heads, dropout, cross_attention, official_padding=official_padding,
                block_dropout=block_dropout, layer_norm_eps=layer_norm_eps, gelu=gelu, init=init,
            )
            for _ in range(n_blocks)
        )
        self.out_dropout = Dropout(dropout)
        self.out_norm = nn.LayerNorm(hidden, eps=layer_norm_eps)

    def trims(self, device: torch.device) -> bool:
        """Whether :meth:`forward` runs length buckets on ``device``. ``"auto"``: on the CPU only. A Beauty
        training step trimmed issues about 4x the operator calls of the full-width step (17k against 4.3k
        with 7 buckets), which costs more than the padding FLOPs it saves where kernel launches dominate (a
        GPU running this small model); on the CPU the saved FLOPs win (2.20 s -> 0.58 s per step)."""
        return trims_on(self.trim_padding, device)

    def step_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """``d_t`` [N, d] for 0-based steps ``t`` [N]."""
        dtype = self.time_mlp[0].weight.dtype  # follow the weights (e.g. after ``.double()``)
        return self.time_mlp(timestep_embedding(t * self.t_scale, self.hidden, dtype=dtype))

    def forward(self, e: torch.Tensor, valid: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``e`` [B, L, d] history representations, ``valid`` [B, L] bool (real items), ``x_t`` [B, d],
        ``t`` [B] or a shared [1] -> ``x0_hat`` [B, d]."""
        h_t = x_t + self.step_embedding(t)  # x_t + d_t, [B, d]
        lam = sample_lambda(e.shape, self.delta, device=e.device, dtype=e.dtype, std=self.delta_std)  # [B, L, d]
        if not self.trims(e.device):
            return self._reconstruct(e, valid, lam, h_t)
        return by_length(  # the same computation on fewer padding columns
            valid, lambda w, rows: self._reconstruct(e[rows, -w:], valid[rows, -w:], lam[rows, -w:], h_t[rows])
        )

    def _reconstruct(self, e: torch.Tensor, valid: torch.Tensor, lam: torch.Tensor, h_t: torch.Tensor) -> torch.Tensor:
        """Eq. 14-16 on one batch: ``x0_hat`` [B, d] from ``e``, ``valid``, ``lambda`` [B, L, (d)] and ``x_t + d_t`` [B, d]."""
        guided = lam * h_t[:, None, :]  # lambda_i ⊙ (x_t + d_t)
        mask = query_mask(valid) if self.official_padding else bidirectional_mask(valid)
        if self.cross_attention:  # Eq. 16: history states, steered by cross-attention
            h, query = e, guided
        else:  # Eq. 15: z_i = e_i + lambda_i ⊙ (x_t + d_t)
            h, query = e + guided, None
        for block in self.blocks[:-1]:
            h = block(h, mask, query)
        last = self.blocks[-1].forward_last(h, mask, query)  # only the last position is read (Eq. 14)
        return self.out_norm(self.out_dropout(last))
