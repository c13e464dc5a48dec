"""``diqdiff-authors``: DiQDiff (Mao et al., WWW 2025) as its authors' code runs it.

The paper's equations, as the survey notes give them, put DiQDiff on DreamRec (x0 regression, Eq. 13); that reading
is :mod:`dreamrec.models.diqdiff`. The authors' repository (github.com/maowenyu-11/DiQDiff at ``8cff39c``,
``src/codiffu.py`` and ``src/trainer.py``) instead builds it on DiffuRec's code, and its published numbers come from
that model, which this class reproduces on top of :class:`~dreamrec.models.diffurec.DiffuRec` (whose faithful
options give the WHUIR approximator, padding and layers):

* history ``e_i = LN(Drop(E[s_i]))`` over the full window (``max_len`` columns, padding included), as DiffuRec;
* semantic vector quantization, one batch at a time (``codiffu.py:intent_cluster``): the flattened history
  ``X = vec(e) [B, L d]`` gives logits ``o = f_phi(X)`` (one linear layer), a hard Gumbel softmax with temperature
  ``code_temperature`` picks a code ``m_b`` per row, and code ``m`` is the mean of the batch rows that picked it (a
  code no row picked: one row of the batch at random). There is no codebook kept between batches, at evaluation too,
  so a row's scores depend on the other rows of its batch. The pick enters only through ``argmax``, so ``f_phi``
  never receives a gradient: it keeps its random initialisation, as in their code;
* approximator input ``z_i = lambda_h e_i + lambda_q c_{m_b, i} + 0.001 (x_t + d_t)`` (DiffuRec's
  ``lambda ~ N(0.001, 0.001)`` is a constant here: ``delta_std 0``), the last position's state after dropout and a
  LayerNorm is ``x0_hat``;
* loss ``L = CE(softmax(x0_hat E^T), target) + lambda_c L_c`` with the contrastive discrepancy term
  ``L_c = mean_b [log sum_b' exp(cos(x0_hat_b, x0_hat_b') / tau_c) - 1 / tau_c]`` over the batch (Eq. 14 with a
  temperature ``tau_c = 0.07``: the InfoNCE of their ``contra_loss`` with each row its own positive);
* reverse process: DiffuRec's, from one clustering of the batch.

Differences from their code: their reverse step scales its noise by ``exp(0.5 * beta~_t)`` (the posterior variance
where its log belongs); here the posterior variance ``beta~_t`` (``reverse_variance: posterior``). ``x_t`` enters the
approximator at weight 0.001, so this changes little. A batch with fewer rows than codes (theirs would fail) draws
no rows for some initial codes; every code is overwritten anyway.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dreamrec.models.base import ModelConfig
from dreamrec.models.diffurec import DiffuRec, DiffuRecConfig
from dreamrec.nn.official_layers import GeluKind, InitKind


class DiQDiffAuthorsConfig(DiffuRecConfig):
    """DiffuRec's fields with the authors' DiQDiff defaults (their ``main.py`` and README for Beauty)."""

    official_padding: bool = True
    block_dropout: bool = True
    layer_norm_eps: float = 1e-12
    gelu: GeluKind = "tanh"
    init: InitKind = "xavier"
    trim_padding: bool | Literal["auto"] = False
    delta_std: float | None = 0.0
    n_codes: int = Field(32, ge=1, description="M, codes per batch (--num_cluster; README Beauty 32)")
    code_temperature: float = Field(0.1, gt=0, description="tau of the hard Gumbel softmax picking a code")
    lambda_q: float = Field(0.4, ge=0, description="weight of the code (--lambda_intent; README Beauty 0.4)")
    lambda_h: float = Field(0.6, ge=0, description="weight of the history (--lambda_history; README Beauty 0.6)")
    lambda_c: float = Field(1.0, ge=0, description="weight of L_c (--lambda_contra; README Beauty 1)")
    contrast_temperature: float = Field(0.07, gt=0, description="tau_c of L_c's cosine similarities")


def quantize(X: torch.Tensor, selector: nn.Module, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes [M, ...], picks [B])`` for one batch ``X [B, ...]``: each row picks ``argmax`` of a hard Gumbel softmax
    over ``selector(vec(X))`` (``[B, M]`` logits); code ``m`` is the mean of the rows that picked it, or, if none did, a
    row of the batch drawn at random. Differentiable in ``X`` (through the means), not in ``selector``. The random
    draws come in their code's order (a permutation of the rows, whose initial codes every code then overwrites; the
    Gumbel noise; one row per empty code, in code order)."""
    B = X.shape[0]
    flat = X.reshape(B, -1)
    torch.randperm(B, device=X.device)  # their initial codes: drawn so that the later draws follow their stream
    logits = selector(flat)
    M = logits.shape[1]
    picks = F.gumbel_softmax(logits, tau=temperature, hard=True).argmax(1)
    onehot = F.one_hot(picks, M).to(X.dtype)  # [B, M]
    counts = onehot.sum(0)  # [M]
    codes = (onehot.T @ flat) / counts.clamp(min=1)[:, None]
    empty = (counts == 0).nonzero().squeeze(1)
    if len(empty):
        fill = torch.randint(B, (len(empty),), device=X.device)
        codes = codes.index_put((empty,), flat[fill])
    return codes.view(M, *X.shape[1:]), picks


def discrepancy_loss(x0_hat: torch.Tensor, temperature: float) -> torch.Tensor:
    """``L_c``: mean over rows of ``log sum_b' exp(cos(x_b, x_b') / tau) - 1 / tau`` (each row its own positive).
    The paper's Eq. 14 as :func:`dreamrec.models.diqdiff.contrastive_discrepancy` reads it has no temperature and
    leaves each row out of its own sum; their code keeps it in and divides by ``tau``. The cosines are one product of
    the rows normalised as ``F.cosine_similarity`` does (each norm floored at 1e-8), not a broadcast ``[B, B, d]``
    tensor, which took 85 % of a Zhihu training step on the CPU at B = 1024 (12.7 s a step against 1.3-1.8 s)."""
    u = F.normalize(x0_hat, dim=-1, eps=1e-8)
    sim = (u @ u.T) / temperature
    return F.cross_entropy(sim, torch.arange(len(x0_hat), device=x0_hat.device))


class DiQDiffAuthors(DiffuRec):
    name: ClassVar[str] = "diqdiff-authors"
    Config: ClassVar[type[ModelConfig]] = DiQDiffAuthorsConfig
    config: DiQDiffAuthorsConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or DiQDiffAuthorsConfig()
        assert isinstance(config, DiQDiffAuthorsConfig)
        super().__init__(n_items, max_len, config)
        self.code_selector = nn.Linear(max_len * config.hidden, config.n_codes)  # f_phi (never trained: see above)

    def history_representation(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``lambda_h e + lambda_q c_m`` [B, L, d] over the full window, and the validity [B, L]."""
        L = history.shape[1]
        if L < self.max_len:  # the code selector reads the whole window: pad on the left, as the data is
            history = F.pad(history, (self.max_len - L, 0))
        e, valid = super().history_representation(history)
        cfg = self.config
        codes, picks = quantize(e, self.code_selector, cfg.code_temperature)
        return cfg.lambda_h * e + cfg.lambda_q * codes[picks], valid

    def extra_loss(self, x0_hat: torch.Tensor) -> torch.Tensor | None:
        """``lambda_c L_c``, added to DiffuRec's cross-entropy (their ``model_train``: ``loss_diffu_value +
        lambda_contra * loss_contra``)."""
        if self.config.lambda_c == 0:
            return None
        return self.config.lambda_c * discrepancy_loss(x0_hat, self.config.contrast_temperature)
