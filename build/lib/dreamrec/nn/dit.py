"""A small Diffusion Transformer with in-context conditioning (DiT, Peebles & Xie 2023, Sec. 3.2
"in-context conditioning"), the denoiser ``f(x_t, h, iota, t)`` of iDreamRec (Sec. 3.3).

The conditions are appended to the input as tokens and one Transformer reads them all:

    [ A(e_1) + p_1, ..., A(e_L) + p_L,  ∅_h,  iota or ∅_iota,  tau(t),  x_t ]

* history items ``A(e_1..e_L)`` (transformed TEM embeddings, right-aligned, 0 = padding) projected
  to the model width plus a learned position embedding indexed from the right; padding is masked;
* ``∅_h``, a learned token, visible only when no history token is (an empty history, or the
  history dropped for classifier-free guidance);
* the intention ``A(TEM(intention))`` projected, or the learned ``∅_iota`` when there is none;
* the diffusion time ``tau(t)`` (sinusoidal embedding + MLP, :class:`~dreamrec.nn.denoisers.TimeEmbedding`);
* the noisy target ``x_t`` projected; the output of the LAST token (``x_t``'s) read out through a
  LayerNorm and a linear layer is the ``x_0`` estimate.

Each token also gets a learned type embedding (history / ∅_h / intention / time / x_t). Blocks are
pre-LayerNorm: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``, bidirectional attention over the
visible tokens. The condition tokens do not depend on ``x_t`` or ``t``: :meth:`InContextDiT.context`
computes them once per generation (:class:`DiTContext`) and every sampling step reuses them. Only the
``x_t`` token is read out, so the last block computes the query, projection and MLP of that token alone
(:meth:`DiTBlock.forward_last`; the other tokens still give their keys and values).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dreamrec.nn.denoisers import TimeEmbedding
from dreamrec.nn.dropout import Dropout

# token types
_HIST, _NULL_H, _INTENT, _TIME, _X = range(5)


@dataclass
class DiTContext:
    """The condition tokens ``[B, L + 2, d]`` (history, ∅_h, intention) and their key mask ``[B, L + 2]``."""

    tokens: torch.Tensor
    key_mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @staticmethod
    def cat(parts: list["DiTContext"]) -> "DiTContext":
        """Stack contexts along the batch (for one network call on several guidance branches)."""
        return DiTContext(torch.cat([p.tokens for p in parts]), torch.cat([p.key_mask for p in parts]))


class DiTBlock(nn.Module):
    """Pre-LN Transformer block: ``x + Drop(MHA(LN(x)))``, ``x + Drop(MLP(LN(x)))`` (GELU MLP)."""

    def __init__(self, hidden: int, n_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        if hidden % n_heads != 0:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, N, d]``, ``mask [B, 1, 1, N]`` (True = key visible)."""
        B, N, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, N, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, N, d)))
        return x + self.drop(self.mlp(self.norm2(x)))

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``forward(x, mask)[:, -1]`` [B, d] without the other tokens' outputs: every token's keys
        and values, but only the last token's query, projection and MLP (the readout needs no more)."""
        B, N, d = x.shape
        H = self.n_heads
        W, b = self.qkv.weight, self.qkv.bias
        h = self.norm1(x)
        k, v = F.linear(h, W[d:], b[d:]).view(B, N, 2, H, d // H).permute(2, 0, 3, 1, 4)
        q = F.linear(h[:, -1:], W[:d], b[:d]).view(B, 1, H, d // H).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, 1, d / H]
        last = x[:, -1] + self.drop(self.proj(y.reshape(B, d)))
        return last + self.drop(self.mlp(self.norm2(last)))


class InContextDiT(nn.Module):
    """``f(x_t, h, iota, t) -> x0_hat [B, D]`` (see the module docstring).

    ``dim``: the embedding size ``D`` of items, intentions and ``x_t``; ``hidden``: the Transformer
    width ``d``; ``max_len``: the longest history (position table size).
    """

    def __init__(
        self,
        dim: int,
        max_len: int,
        *,
        hidden: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.dim, self.hidden, self.max_len = dim, hidden, max_len
        self.item_in = nn.Linear(dim, hidden)
        self.intent_in = nn.Linear(dim, hidden)
        self.x_in = nn.Linear(dim, hidden)
        self.position = nn.Embedding(max_len, hidden)
        self.token_type = nn.Embedding(5, hidden)
        self.null_history = nn.Parameter(torch.randn(hidden) * 0.02)  # ∅_h
        self.null_intent = nn.Parameter(torch.randn(hidden) * 0.02)  # ∅_iota
        self.time = TimeEmbedding(hidden)
        self.input_drop = Dropout(dropout)
        self.blocks = nn.ModuleList(DiTBlock(hidden, n_heads, mlp_ratio, dropout) for _ in range(n_layers))
        self.norm_out = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.normal_(self.position.weight, std=0.02)
        nn.init.normal_(self.token_type.weight, std=0.02)

    def context(
        self,
        history_emb: torch.Tensor,
        history_mask: torch.Tensor,
        intent_emb: torch.Tensor | None = None,
        intent_mask: torch.Tensor | None = None,
    ) -> DiTContext:
        """Condition tokens from ``history_emb [B, L, D]`` (``history_mask [B, L]`` True at real,
        kept items; all False = empty or dropped history -> ``∅_h``) and ``intent_emb [B, D]``
        (``intent_mask [B]`` True where the row has an intention; otherwise ``∅_iota``)."""
        B, L, _ = history_emb.shape
        if L > self.max_len:
            history_emb, history_mask, L = history_emb[:, -self.max_len :], history_mask[:, -self.max_len :], self.max_len
        dev = history_emb.device
        types = self.token_type.weight
        pos = self.position.weight[self.max_len - L :]  # indexed from the right: last column = max_len - 1
        h = self.item_in(history_emb) + pos[None] + types[_HIST]
        no_hist = ~history_mask.any(1)
        null_h = (self.null_history + types[_NULL_H]).expand(B, 1, -1)
        if intent_emb is None:
            intent_mask = torch.zeros(B, dtype=torch.bool, device=dev)
            iota = self.null_intent.expand(B, -1)
        else:
            assert intent_mask is not None
            iota = torch.where(intent_mask[:, None], self.intent_in(intent_emb), self.null_intent.expand(B, -1))
        iota = (iota + types[_INTENT])[:, None]
        tokens = torch.cat([h, null_h, iota], 1)
        key_mask = torch.cat([history_mask, no_hist[:, None], torch.ones(B, 1, dtype=torch.bool, device=dev)], 1)
        return DiTContext(tokens, key_mask)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, ctx: DiTContext) -> torch.Tensor:
        """``x0_hat [B, D]`` from ``x_t [B, D]``, steps ``t`` (``[B]`` or a shared ``[1]``) and the context."""
        B = x_t.shape[0]
        types = self.token_type.weight
        tau = self.time(t.reshape(-1)) + types[_TIME]  # [B or 1, d]
        tau = tau.expand(B, -1)[:, None]
        x = (self.x_in(x_t) + types[_X])[:, None]
        seq = self.input_drop(torch.cat([ctx.tokens, tau, x], 1))
        ones = torch.ones(B, 2, dtype=torch.bool, device=x_t.device)
        mask = torch.cat([ctx.key_mask, ones], 1)[:, None, None, :]
        for block in self.blocks[:-1]:
            seq = block(seq, mask)
        return self.out(self.norm_out(self.blocks[-1].forward_last(seq, mask)))
