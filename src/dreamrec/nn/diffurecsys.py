"""The approximator of the DiffuRecSys code (Zolghadr et al., 2024; github.com/shararezr/DiffuRecSys
at ``746866d``, ``diffurec.py``), as it runs, which differs from the paper's Eq. 16:

* every block receives the *original* input (``Transformer_rep.forward``, ``diffurec.py:348-351``:
  ``hidden = transformer.forward(x, ...)`` in a loop), so only the last block's output is read and
  the other blocks are dead parameters; :class:`DiffuRecSysApproximator` builds them all but runs
  the last one only (the same output);
* a block (``TransformerBlock``, ``diffurec.py:322-336``), with ``g = lambda ⊙ (x_t + d_t)`` ``[B, L, d]``:
  ``h = x + Drop(CA(Q = g, K = V = LN1(x)))``, ``h <- h + Drop(MHA(LN1(h)))`` (the same LayerNorm
  ``LN1`` twice), ``h <- h + Drop(FFN(LN2(h)))``; no dropout on the block's output;
* the cross-attention ``CA`` (``CrossAttention``, ``diffurec.py:252-288``) is a linear attention with
  per-head ``Q = softmax(W_q g)`` over the head's features, ``K = softmax(W_k LN1(x))`` over the
  *heads* (their ``dim=1`` of ``[B, H, L, d_h]``), ``C = K^T V`` ``[d_h, d_h]`` per head and
  ``out = W_o Drop(Q C)`` where the rows of padded positions are set to -1e9 before the dropout;
* the self-attention masks padded queries only (:class:`QueryMaskedSelfAttention`), LayerNorm
  ``eps = 1e-12``, tanh-GELU and Xavier-normal initialisation as DiffuRec's
  (:mod:`dreamrec.nn.official_layers`); ``x0_hat = LN(Drop(h))`` at the last position.
"""
from __future__ import annotations

import torch
from torch import nn

from dreamrec.nn.approximators import sample_lambda, timestep_embedding
from dreamrec.nn.dropout import Dropout
from dreamrec.nn.encoders import FeedForward
from dreamrec.nn.official_layers import MASK_FILL, QueryMaskedSelfAttention, official_init, query_mask, tanh_gelu

LAYER_NORM_EPS = 1e-12


class LinearCrossAttention(nn.Module):
    """The DiffuRecSys code's ``CrossAttention`` (see the module docstring): ``[B, L, d]`` queries
    ``g``, memory ``m`` and ``valid`` ``[B, L]`` -> ``[B, L, d]``."""

    def __init__(self, hidden: int, n_heads: int, dropout: float):
        super().__init__()
        if hidden % n_heads != 0:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.head_dim = n_heads, hidden // n_heads
        self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)
        nn.init.xavier_normal_(self.out.weight)
        self.dropout = Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, L, d_h]

    def forward(self, g: torch.Tensor, m: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, L, D = g.shape
        q = torch.softmax(self._heads(self.q(g)), dim=-1)  # over the head's features
        k = torch.softmax(self._heads(self.k(m)), dim=1)  # over the heads (the code's dim=1)
        context = k.transpose(-2, -1) @ self._heads(self.v(m))  # K^T V, [B, H, d_h, d_h]
        h = (q @ context).masked_fill(~valid[:, None, :, None], MASK_FILL)
        return self.out(self.dropout(h).transpose(1, 2).reshape(B, L, D))


class DiffuRecSysBlock(nn.Module):
    """One block of the DiffuRecSys code (module docstring); ``forward_last`` returns the last position only."""

    def __init__(self, hidden: int, n_heads: int, dropout: float):
        super().__init__()
        self.cross = LinearCrossAttention(hidden, n_heads, dropout)
        self.attn = QueryMaskedSelfAttention(hidden, n_heads, dropout)
        self.ffn = tanh_gelu(FeedForward(hidden, 4 * hidden, dropout, "gelu"))
        official_init(self.ffn, self.attn.out)
        self.norm1 = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)  # used by the first two sublayers
        self.norm2 = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def _attend(self, x: torch.Tensor, g: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return x + self.dropout1(self.cross(g, self.norm1(x), valid))

    def forward(self, x: torch.Tensor, g: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self._attend(x, g, valid)
        h = h + self.dropout1(self.attn(self.norm1(h), query_mask(valid)))
        return h + self.dropout2(self.ffn(self.norm2(h)))

    def forward_last(self, x: torch.Tensor, g: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``forward(x, g, valid)[:, -1]`` [B, d]: every position gives keys, only the last is queried."""
        h = self._attend(x, g, valid)
        last = h[:, -1] + self.dropout1(self.attn.forward_last(self.norm1(h), query_mask(valid))[:, 0])
        return last + self.dropout2(self.ffn(self.norm2(last)))


class DiffuRecSysApproximator(nn.Module):
    """``f_theta(e, valid, x_t, t) -> x0_hat`` of the DiffuRecSys code (module docstring)."""

    def __init__(
        self, hidden: int, *, n_blocks: int = 4, n_heads: int = 4, dropout: float = 0.1, delta: float = 0.001,
        num_train_timesteps: int = 32, rescale_timesteps: bool = True,
    ):
        super().__init__()
        self.hidden = hidden
        self.delta = delta
        self.t_scale = 1000.0 / num_train_timesteps if rescale_timesteps else 1.0
        self.time_mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.SiLU(), nn.Linear(4 * hidden, hidden))
        # all blocks are built (as the code), only the last one's output is ever read
        self.blocks = nn.ModuleList(DiffuRecSysBlock(hidden, n_heads, dropout) for _ in range(n_blocks))
        self.out_dropout = Dropout(dropout)
        self.out_norm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)

    def step_embedding(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.time_mlp[0].weight.dtype
        return self.time_mlp(timestep_embedding(t * self.t_scale, self.hidden, dtype=dtype))

    def forward(self, e: torch.Tensor, valid: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h_t = x_t + self.step_embedding(t)  # x_t + d_t
        g = sample_lambda(e.shape, self.delta, device=e.device, dtype=e.dtype) * h_t[:, None, :]
        last = self.blocks[-1].forward_last(e, g, valid)  # the earlier blocks' outputs are discarded by the code
        return self.out_norm(self.out_dropout(last))
