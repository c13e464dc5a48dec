"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the history, tied item table.

The score of item ``i`` after prefix ``s_{1..t}`` is ``r_{i,t} = F_t . M_i`` (SASRec Eq. 6 with a
shared embedding ``N = M``), where ``F_t`` is the Transformer's output at position ``t``.

Training (``batch_mode = "seq2seq"``) puts a label at every position of a window:

* ``loss = "bce"`` (default): the paper's binary cross-entropy (SASRec Eq. 7),
  ``-[log sigma(r_{o_t,t}) + mean_j log(1 - sigma(r_{j,t}))]`` with ``n_negatives`` items drawn
  uniformly from the other real items per labelled position (1:1, as in the paper and DreamRec's baselines);
* ``loss = "ce"``: full-softmax cross-entropy ``-log softmax_i(F_t . M)`` over all real items,
  averaged over labelled positions: not the paper's loss, the now-common variant (e.g. Klenitskiy &
  Vasilev, 2023) and a stronger baseline (``configs/sasrec/<dataset>-ce*.yaml``).

``tie_items = False`` scores with a second table ``N`` (SASRec Eq. 6 as written, ``r_{i,t} = F_t . N_i``)
instead of the input table ``M``; the paper's model ties them (``N = M``).
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dreamrec.data.batching import Batch, labelled_positions
from dreamrec.models.base import ModelConfig, SequentialRecommender
from dreamrec.nn.losses import sample_negatives, softmax_cross_entropy
from dreamrec.nn.encoders import TRIM_PADDING_HELP, TransformerEncoder, TrimPadding, item_table


class SASRecConfig(ModelConfig):
    hidden: int = Field(64, ge=1)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    attn_dropout: float | None = Field(None, ge=0, lt=1, description="default: dropout")
    inner_size: int | None = Field(None, ge=1, description="feed-forward width; default 4 * hidden")
    activation: Literal["gelu", "relu"] = "gelu"
    loss: Literal["ce", "bce"] = Field("bce", description="bce: the paper's Eq. 7; ce: full-softmax (a variant)")
    n_negatives: int = Field(1, ge=1, description="negatives per positive for loss=bce")
    init_std: float = Field(0.02, gt=0)
    trim_padding: TrimPadding = Field("auto", description=TRIM_PADDING_HELP)
    tie_items: bool = Field(True, description="False: the scores use a second item table, not the input table")


def sasrec_encoder(
    n_items: int, max_len: int, config: SASRecConfig, item_embedding: nn.Embedding | None = None
) -> TransformerEncoder:
    """The causal Transformer of a SASRec-family model, built from its config."""
    return TransformerEncoder(
        n_items,
        max_len,
        hidden=config.hidden,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        dropout=config.dropout,
        attn_dropout=config.attn_dropout,
        inner_size=config.inner_size,
        activation=config.activation,
        init_std=config.init_std,
        item_embedding=item_embedding,
        trim_padding=config.trim_padding,
    )


class SASRec(SequentialRecommender):
    name: ClassVar[str] = "sasrec"
    Config: ClassVar[type[ModelConfig]] = SASRecConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "seq2seq"
    config: SASRecConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or SASRecConfig()
        assert isinstance(config, SASRecConfig)
        super().__init__(n_items, max_len, config)
        self.encoder = sasrec_encoder(n_items, max_len, config)
        if not config.tie_items:  # N: the output table, initialised as the encoder's tables
            self.out_embedding = item_table(n_items, config.hidden, config.init_std)

    @property
    def item_embedding(self) -> nn.Embedding:
        """The table of the output scores: the encoder's input table (tied, the default) or ``N``."""
        return self.encoder.item_embedding if self.config.tie_items else self.out_embedding

    def loss(self, batch: Batch) -> torch.Tensor:
        hidden = self.encoder(batch.history)  # [B, L, d]
        mask, labels = labelled_positions(batch)
        h = hidden[mask]  # [N, d]
        table = self.item_embedding.weight
        if self.config.loss == "ce":
            return softmax_cross_entropy(h, table, labels)  # the padding row is never a class
        neg = sample_negatives(labels, self.n_items, self.config.n_negatives)
        pos_logit = (h * table[labels]).sum(-1)  # [N]
        neg_logit = (h[:, None, :] * table[neg]).sum(-1)  # [N, k]
        pos_loss = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit), reduction="none")
        neg_loss = F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none")
        return (pos_loss + neg_loss.mean(1)).mean()

    def query(self, history: torch.Tensor) -> torch.Tensor:
        return self.encoder.last_hidden(history)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight
