"""Sequence encoders shared by the sequential recommenders.

Both encoders read right-aligned, zero-padded histories ``[B, L]`` (0 = padding, the most recent
item in the last column; a row may be all padding = an empty history) and return one hidden
state per position ``[B, L, d]`` whose padded positions hold a learned ``empty_state``. ``last_hidden``
gives the state at the last column, the summary of the whole history (``empty_state`` for an empty one).

* :class:`TransformerEncoder` is the SASRec encoder (Kang & McAuley, 2018, Sec. III-B/C):
  ``E = Emb(s) + P`` (Eq. 1 of SASRec), then ``n_layers`` blocks of causal self-attention
  ``Attn(Q, K, V) = softmax(Q K^T / sqrt(d)) V`` (Eq. 2) and a point-wise feed-forward network
  (Eq. 4), each wrapped as ``LayerNorm(x + Dropout(sublayer(x)))``. DreamRec (Yang et al., 2023,
  Sec. 4.2) encodes the history with the same Transformer to obtain its guidance vector ``c``.
* :class:`GRUEncoder` is the GRU4Rec encoder (Hidasi et al., 2016): a (stacked) GRU over the
  item embeddings, projected back to the embedding size so that scores are inner products with
  the item table.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dreamrec.nn.dropout import Dropout


def item_table(n_items: int, dim: int, std: float) -> nn.Embedding:
    """An item table ``[n_items + 1, dim]``: rows 1..n_items ~ N(0, std^2), row 0 (padding) zero and
    without gradient (``padding_idx=0``)."""
    table = nn.Embedding(n_items + 1, dim, padding_idx=0)
    with torch.no_grad():
        nn.init.normal_(table.weight, std=std)
        table.weight[0].zero_()
    return table


def valid_mask(history: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool, True at real items (non-padding)."""
    return history > 0


_CAUSAL: dict[tuple[int, str], torch.Tensor] = {}


def _causal_with_diagonal(L: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower-triangular ``[L, L]`` mask, identity ``[L, L]``), built once per (L, device)."""
    key = (L, str(device))
    if key not in _CAUSAL:
        _CAUSAL[key] = torch.stack([torch.ones(L, L, dtype=torch.bool, device=device).tril(),
                                    torch.eye(L, dtype=torch.bool, device=device)])
    both = _CAUSAL[key]
    return both[0], both[1]


def attention_mask(history: torch.Tensor) -> torch.Tensor:
    """``[B, 1, L, L]`` bool mask (True = may attend) for causal attention over a padded history.

    Query ``i`` may attend to key ``j`` when ``j <= i`` (causality) and ``j`` is a real item. The
    diagonal is always allowed, so a padded query (in particular every query of an all-padding
    row) still has one key and the softmax never sees a fully masked row (which would give NaN).
    """
    causal, eye = _causal_with_diagonal(history.shape[1], history.device)
    keys = valid_mask(history)[:, None, None, :]  # [B, 1, 1, L]
    return (causal & keys) | eye


def length_buckets(valid: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """Split right-aligned rows by history length: ``[(w, rows)]`` where every row of ``rows`` has
    padding only before its last ``w`` columns, ``w`` a power of two (or the full width ``L``).

    A padding position is never a key, so dropping the all-padding columns of a bucket changes no
    output at a real position: on short-history data (Beauty: 8 items on average in a window of 50)
    most of the attention and feed-forward work goes. An empty history keeps one column (the last,
    which attends only to itself)."""
    B, L = valid.shape
    first = torch.where(valid.any(1), valid.int().argmax(1), L - 1)
    width = (L - first).clamp(min=1)
    bucket = (2 ** torch.ceil(torch.log2(width.double()))).long().clamp(max=L)
    return [(int(w), (bucket == w).nonzero().squeeze(1)) for w in torch.unique(bucket).tolist()]


TrimPadding = bool | Literal["auto"]
# the help text of the ``trim_padding`` field of the configs whose model uses :class:`TransformerEncoder`
TRIM_PADDING_HELP = (
    "run the Transformer in length buckets without all-padding columns (no output at a real position changes): "
    "fewer FLOPs on short histories but more operator calls, so 'auto' trims on the CPU, batches of at least "
    "8192 history cells (batch x width), and not on a GPU"
)


# "auto" trims a batch of at least this many history cells (batch x width): below it the extra
# operator calls of the buckets cost more than the padding they save. Measured on one CPU thread:
# DreamRec's paper setting on Zhihu (256 x 10) trains 2.2x slower trimmed, the one-block DreamRec of
# the planted-pattern test (256 x 20) 1.4x slower; SASRec on Beauty (256 x 50) 1.7x faster, SASRec-CE
# on Zhihu with batch 2048 (2048 x 10) 1.8x faster.
AUTO_TRIM_MIN_CELLS = 8192


def trims_on(trim_padding: TrimPadding, device: torch.device, cells: int | None = None) -> bool:
    """Whether to run length buckets (:func:`length_buckets`) on ``device``; ``"auto"``: on the CPU
    only, and, where the batch size is given (``cells`` = batch x width), for batches of at least
    :data:`AUTO_TRIM_MIN_CELLS` cells.

    Bucketing saves the FLOPs of the padding columns but multiplies the operator calls (one set per
    bucket); on the CPU the saved FLOPs win on large batches of short histories, on a GPU running
    these small models the launches dominate."""
    if trim_padding == "auto":
        return device.type == "cpu" and (cells is None or cells >= AUTO_TRIM_MIN_CELLS)
    return bool(trim_padding)


def by_length(
    valid: torch.Tensor,
    fn: Callable[[int, torch.Tensor], torch.Tensor],
    left_fill: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fn(w, rows)`` for each length bucket of ``valid`` ``[B, L]`` (:func:`length_buckets`), reassembled
    in the input order. ``fn`` computes the bucket's ``rows`` on their last ``w`` columns and returns one
    row per sequence (``[b, ...]``) or, with ``left_fill`` (``[d]``), one state per position (``[b, w, d]``),
    whose dropped columns are then filled with ``left_fill``. In eval mode the result equals the full-width
    computation up to float rounding; in training, dropout masks are drawn bucket by bucket (same
    distribution, other draws)."""
    L = valid.shape[1]
    parts, rows = [], []
    for w, idx in length_buckets(valid):
        out = fn(w, idx)
        if left_fill is not None and w < L:
            out = torch.cat([left_fill.to(out.dtype).expand(len(idx), L - w, -1), out], dim=1)
        parts.append(out)
        rows.append(idx)
    if len(parts) == 1:  # one bucket holds every row, in order
        return parts[0]
    return torch.cat(parts).index_select(0, torch.argsort(torch.cat(rows)))


class MultiHeadSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (SASRec Eq. 2, with ``h`` heads)."""

    def __init__(self, hidden: int, n_heads: int, attn_dropout: float):
        super().__init__()
        if hidden % n_heads != 0:
            raise ValueError(f"hidden ({hidden}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = hidden // n_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.attn_dropout = attn_dropout
        self.attn_drop = Dropout(attn_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.out(self._attend(q, k, v, mask).transpose(1, 2).reshape(B, L, D))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``softmax(Q K^T / sqrt(d)) V`` per head, with attention dropout while training."""
        if self.training and self.attn_dropout > 0:
            # explicit softmax(QK^T / sqrt(d)) V so the attention dropout uses the fast mask
            logits = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
            return self.attn_drop(torch.softmax(self._fill(logits, mask), dim=-1)) @ v
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _fill(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The logits with the disallowed entries (``mask`` False) set to -inf."""
        return logits.masked_fill(~mask, float("-inf"))

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The output at the last position only, ``[B, 1, D]``: the same as ``forward(x, mask)[:, -1:]``
        (``mask`` is the full ``[B, 1, L, L]`` mask) without computing the other queries.

        With one query per sequence the keys and values need not be formed: per head ``h``,
        ``q_h . (W_k,h x_j + b_k,h) = (W_k,h^T q_h) . x_j + q_h . b_k,h`` and
        ``sum_j a_j (W_v,h x_j + b_v,h) = W_v,h (sum_j a_j x_j) + (sum_j a_j) b_v,h``, so the cost is
        ``O(B L D)`` instead of the ``O(B L D^2)`` of projecting every position (exact algebra; the
        attention dropout acts on the same ``[B, H, L]`` weights in the same order).
        """
        B, L, D = x.shape
        H, hd = self.n_heads, self.head_dim
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, -1], w[:D], b[:D]).view(B, H, hd)
        w_k, b_k = w[D : 2 * D].view(H, hd, D), b[D : 2 * D].view(H, hd)
        w_v, b_v = w[2 * D :].view(H, hd, D), b[2 * D :].view(H, hd)
        q_x = torch.einsum("bhe,hed->bhd", q, w_k)  # W_k,h^T q_h in input space, [B, H, D]
        logits = (q_x @ x.transpose(1, 2) + (q * b_k).sum(-1, keepdim=True)) * hd**-0.5  # [B, H, L]
        a = torch.softmax(self._fill(logits, mask[:, :, -1, :]), dim=-1)
        if self.training and self.attn_dropout > 0:
            a = self.attn_drop(a)
        z = a @ x  # sum_j a_j x_j per head, [B, H, D]
        y = torch.einsum("bhd,hed->bhe", z, w_v) + a.sum(-1, keepdim=True) * b_v  # [B, H, hd]
        return self.out(y.reshape(B, 1, D))


class FeedForward(nn.Module):
    """Point-wise two-layer network ``W2 act(W1 x + b1) + b2`` (SASRec Eq. 4; GELU by default)."""

    def __init__(self, hidden: int, inner_size: int, dropout: float, activation: Literal["gelu", "relu"] = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner_size)
        self.fc2 = nn.Linear(inner_size, hidden)
        self.dropout = Dropout(dropout)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Self-attention then feed-forward, each as ``LayerNorm(x + Dropout(sublayer(x)))``."""

    def __init__(
        self,
        hidden: int,
        n_heads: int,
        inner_size: int,
        dropout: float,
        attn_dropout: float,
        activation: Literal["gelu", "relu"] = "gelu",
    ):
        super().__init__()
        self.attn = MultiHeadSelfAttention(hidden, n_heads, attn_dropout)
        self.norm1 = nn.LayerNorm(hidden)
        self.ffn = FeedForward(hidden, inner_size, dropout, activation)
        self.norm2 = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attn(x, mask)))
        return self.norm2(x + self.dropout(self.ffn(x)))

    def forward_last(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``forward(x, mask)[:, -1:]`` computed for the last position only (``[B, 1, D]``)."""
        y = self.norm1(x[:, -1:] + self.dropout(self.attn.forward_last(x, mask)))
        return self.norm2(y + self.dropout(self.ffn(y)))


class TransformerEncoder(nn.Module):
    """SASRec-style causal Transformer over right-aligned item histories.

    The learned positional embedding is indexed from the right: the last column always gets
    position ``max_len - 1`` whatever the input width, so "the most recent item" has one fixed
    position embedding. Inputs wider than ``max_len`` keep their most recent ``max_len`` columns.

    ``item_embedding`` may be passed in to share a table with the caller (SASRec ties its input
    and output embeddings); otherwise the encoder creates its own (``padding_idx=0``).
    """

    def __init__(
        self,
        n_items: int,
        max_len: int,
        hidden: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        dropout: float = 0.2,
        attn_dropout: float | None = None,
        inner_size: int | None = None,
        activation: Literal["gelu", "relu"] = "gelu",
        init_std: float = 0.02,
        item_embedding: nn.Embedding | None = None,
        trim_padding: TrimPadding = "auto",
    ):
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        self.hidden = hidden
        self.init_std = init_std
        self.trim_padding = trim_padding
        if item_embedding is None:
            item_embedding = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        elif item_embedding.embedding_dim != hidden:
            raise ValueError("shared item_embedding must have embedding_dim == hidden")
        self.item_embedding = item_embedding
        self.position_embedding = nn.Embedding(max_len, hidden)
        self.empty_state = nn.Parameter(torch.zeros(hidden))  # query of an empty history
        self.emb_norm = nn.LayerNorm(hidden)
        self.emb_dropout = Dropout(dropout)
        attn_dropout = dropout if attn_dropout is None else attn_dropout
        inner_size = 4 * hidden if inner_size is None else inner_size
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden, n_heads, inner_size, dropout, attn_dropout, activation) for _ in range(n_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for embeddings and linear weights, zero biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=self.init_std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def _embed(
        self, history: torch.Tensor, item_vectors: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs of the first block (SASRec Eq. 1), the ``[B, L, 1]`` validity and the attention mask.

        ``item_vectors`` (``[B, L, d]``, optional): ``item_embedding(history)`` already looked up by
        the caller (DreamRec looks up history and targets in one call: one table gradient, not two)."""
        history, item_vectors = self._clip(history, item_vectors)
        L = history.shape[1]
        valid = valid_mask(history)[..., None].to(self.item_embedding.weight.dtype)
        positions = torch.arange(self.max_len - L, self.max_len, device=history.device)
        if item_vectors is None:
            item_vectors = self.item_embedding(history)
        # SASRec Eq. (1): E = item embedding + learned positional embedding
        x = item_vectors + self.position_embedding(positions)[None]
        return self.emb_dropout(self.emb_norm(x), keep=valid), valid, attention_mask(history)

    def forward(self, history: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` history -> ``[B, L, hidden]`` states (``empty_state`` at padded positions).
        ``item_vectors``: see :meth:`_embed`. With ``trim_padding`` the batch runs in length buckets
        (:func:`by_length`), which changes no state at a real position."""
        history, item_vectors = self._clip(history, item_vectors)
        if trims_on(self.trim_padding, history.device, history.numel()):
            return by_length(history > 0, lambda w, rows: self._forward(*_bucket(history, item_vectors, w, rows)),
                             left_fill=self.empty_state)
        return self._forward(history, item_vectors)

    def last_hidden(self, history: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` -> ``[B, hidden]``: the state at the most recent position (learned if empty).
        ``item_vectors``: see :meth:`_embed`.

        Equal to ``forward(history)[:, -1]``, but the last block computes only that position, and
        without forming its keys and values (:meth:`MultiHeadSelfAttention.forward_last`): the other
        queries of the last block are never read, which makes a one-block encoder (DreamRec's)
        several times cheaper. With ``trim_padding`` the batch runs in length buckets."""
        history, item_vectors = self._clip(history, item_vectors)
        if trims_on(self.trim_padding, history.device, history.numel()):
            return by_length(history > 0, lambda w, rows: self._last_hidden(*_bucket(history, item_vectors, w, rows)))
        return self._last_hidden(history, item_vectors)

    def _clip(
        self, history: torch.Tensor, item_vectors: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Keep the most recent ``max_len`` columns."""
        if history.shape[1] > self.max_len:
            history = history[:, -self.max_len :]
            item_vectors = None if item_vectors is None else item_vectors[:, -self.max_len :]
        return history, item_vectors

    def _forward(self, history: torch.Tensor, item_vectors: torch.Tensor | None) -> torch.Tensor:
        x, valid, mask = self._embed(history, item_vectors)
        for block in self.blocks:
            x = block(x, mask) * valid
        return with_empty_state(x, valid, self.empty_state)

    def _last_hidden(self, history: torch.Tensor, item_vectors: torch.Tensor | None) -> torch.Tensor:
        x, valid, mask = self._embed(history, item_vectors)
        for block in self.blocks[:-1]:
            x = block(x, mask) * valid
        if len(self.blocks):
            x = self.blocks[-1].forward_last(x, mask) * valid[:, -1:]
        else:
            x = x[:, -1:]
        return with_empty_state(x, valid[:, -1:], self.empty_state)[:, 0]


def _bucket(
    history: torch.Tensor, item_vectors: torch.Tensor | None, w: int, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The last ``w`` columns of ``rows`` of the history (and of its item vectors, when given)."""
    return history[rows, -w:], None if item_vectors is None else item_vectors[rows, -w:]


def with_empty_state(x: torch.Tensor, valid: torch.Tensor, empty_state: torch.Tensor) -> torch.Tensor:
    """Put the learned ``empty_state`` at padded positions of ``x`` [B, L, d] (``valid`` [B, L, 1]).

    Real positions never attend to padding, so this only matters where a padded position is
    read: the last column of an empty history, whose query is then a learned vector (the model's
    answer for "no context") instead of zero, which would rank items by id.
    """
    return x * valid + empty_state * (1 - valid)


def _left_align_index(lengths: torch.Tensor, L: int) -> torch.Tensor:
    """Gather index moving the ``lengths[b]`` real items of a right-aligned row to its front."""
    shift = (L - lengths)[:, None]
    return (torch.arange(L, device=lengths.device)[None, :] + shift) % L


class GRUEncoder(nn.Module):
    """GRU4Rec encoder: embedding -> dropout -> stacked GRU -> dropout -> linear to ``embedding``.

    Padding never enters the recurrence: each row's real items are packed (the row is shifted to
    the left, run through ``pack_padded_sequence``, and shifted back), so a state depends only on
    the items before it, not on how many pads precede them. Padded positions output the learned
    ``empty_state``.
    """

    def __init__(
        self,
        n_items: int,
        embedding: int = 64,
        hidden: int = 128,
        n_layers: int = 1,
        dropout: float = 0.3,
        item_embedding: nn.Embedding | None = None,
        init_std: float = 0.02,
    ):
        super().__init__()
        self.n_items = n_items
        self.item_embedding = item_table(n_items, embedding, init_std) if item_embedding is None else item_embedding
        self.emb_dropout = Dropout(dropout)
        self.gru = nn.GRU(
            embedding, hidden, num_layers=n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0
        )
        self.out_dropout = Dropout(dropout)
        self.proj = nn.Linear(hidden, embedding)
        self.empty_state = nn.Parameter(torch.zeros(embedding))  # query of an empty history

    def _run(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(packed outputs, final states ``[n_layers, B, hidden]``, lengths ``[B]``)."""
        L = history.shape[1]
        lengths = valid_mask(history).sum(1)
        # left-align, pack (an empty row runs on one pad token; its output is zeroed by callers)
        left = history.gather(1, _left_align_index(lengths, L))
        x = self.emb_dropout(self.item_embedding(left))
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        out, h_n = self.gru(packed)
        return out, h_n, lengths

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` history -> ``[B, L, embedding]`` (``empty_state`` at padded positions)."""
        B, L = history.shape
        packed, _, lengths = self._run(history)
        out, _ = nn.utils.rnn.pad_packed_sequence(packed, batch_first=True, total_length=L)
        # shift back to right alignment: position j reads left position j - (L - len)
        back = (torch.arange(L, device=history.device)[None, :] - (L - lengths)[:, None]) % L
        out = out.gather(1, back[..., None].expand(B, L, out.shape[-1]))
        y = self.proj(self.out_dropout(out))
        return with_empty_state(y, valid_mask(history)[..., None].to(y.dtype), self.empty_state)

    def last_hidden(self, history: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` -> ``[B, embedding]``: the state after the most recent item (``empty_state`` if empty).

        Reads the GRU's final state directly (no per-position projection).
        """
        _, h_n, lengths = self._run(history)
        y = self.proj(self.out_dropout(h_n[-1]))
        return with_empty_state(y, (lengths > 0)[:, None].to(y.dtype), self.empty_state)
