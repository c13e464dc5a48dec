"""DiQDiff (WWW 2025, arXiv 2501.17670; survey notes, Sec. 3.5): DreamRec with quantized guidance and
distinguished generation.

DiQDiff keeps DreamRec's generator (:class:`~dreamrec.models.dreamrec.DreamRec`: Transformer guidance,
x0-predicting denoiser, classifier-free guidance, retrieval by inner product) and changes two things.

* **Semantic vector quantization (SVQ)** enriches the guidance. A codebook ``C = {c_m}_{m=1..M}``
  holds sequence-shaped codes ``c_m in R^{L x D}``. The code-selection model ``f_phi`` maps the history
  ``s = [x_1, ..., x_{L-1}]`` (its item embeddings) to logits ``o = f_phi(s) in R^M``; the code is
  picked by the Gumbel softmax ``g_m = exp((o_m + n_m) / tau) / sum_m' exp((o_m' + n_m') / tau)``
  (Eq. 8-9; straight-through: the forward pass uses the one-hot of the largest ``g_m``, the gradient
  that of the soft ``g``), and the encoder reads ``s~ = lambda_h s + lambda_q s_q`` instead of ``s``
  (the notes give ``s + lambda_q s_q``; the authors' README also sets the history's weight
  ``lambda_h``, "lambda_history"). Training replaces each code chosen in the batch by the mean of the
  sequences that chose it, ``c'_m = (1/|S_m|) sum_{s in S_m} s`` (Eq. 10, no gradient).
* **Contrastive discrepancy maximization (CDM)** keeps different histories from generating the same
  item: ``L_c = E[log sum_{x' in B, x' != x} exp(sim(x0_hat, x0_hat'))]`` with ``sim`` the cosine
  (Eq. 14, over the batch's x0 predictions), and the loss is ``L = L_r + lambda_c L_c`` (``L_r`` is
  DreamRec's x0 loss, Eq. 13).

Inference (Algorithm 2) quantizes the history with the trained ``f_phi`` and codebook and runs
DreamRec's reverse process from ``s~``. Where this implementation chooses:

* ``f_phi`` is one linear layer on the mean of the history's item embeddings (the notes: an MLP from
  ``R^D`` to ``R^M``); at inference the code is the argmax of ``o`` (no Gumbel noise), so scores are
  deterministic;
* the codebook is updated in training only: the survey asks whether Algorithm 2's line 3 updates it
  at inference too; doing so would make one test row's scores depend on the others in its batch;
* codes start at ``N(0, item_init_std^2)``, like the item table; histories are right-aligned, so a
  code's last column meets the most recent item;
* every DreamRec option applies.

``diqdiff`` builds on :class:`~dreamrec.models.dreamrec.DreamRec`, the paper's method, as DiQDiff does
(Eq. 13 is DreamRec's x0 loss; Algorithm 2 its reverse process). ``diqdiff-ablation`` adds the research options
of ``dreamrec-ablation`` (defaults: ``diqdiff``). ``reshead-ce-diqdiff`` adds SVQ and CDM to
the non-diffusion ``reshead-ce`` recipe instead (:class:`~dreamrec.models.dreamrec_variants.ResHeadCE`):
a research variant, not DiQDiff's method; there ``L_r`` is reshead-ce's cross-entropy and CDM acts on
its one-step queries.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from dreamrec.models.base import ModelConfig
from dreamrec.models.dreamrec import DreamRec, DreamRecConfig, history_mean
from dreamrec.models.dreamrec_variants import DreamRecAblation, DreamRecAblationConfig, ResHeadCE, ResHeadCEConfig


class DiQDiffConfig(DreamRecConfig):
    n_codes: int = Field(32, ge=1, description="M, the number of codes in the SVQ codebook")
    code_temperature: float = Field(1.0, gt=0, description="tau of the Gumbel softmax that picks a code")
    lambda_q: float = Field(0.4, ge=0, description="weight of the quantized code s_q in the guidance input")
    lambda_h: float = Field(1.0, ge=0, description="weight of the history s itself in the guidance input")
    lambda_c: float = Field(0.1, ge=0, description="weight of the contrastive discrepancy loss L_c (Eq. 14)")

    @model_validator(mode="after")
    def _sees_history(self) -> "DiQDiffConfig":
        if getattr(self, "train_batches", "pairs") != "pairs":
            raise ValueError("DiQDiff picks one code per history: train_batches must be 'pairs'")
        if self.lambda_q == 0 and self.lambda_h == 0:
            raise ValueError("lambda_q and lambda_h are both 0: the guidance would not see the history")
        return self


def contrastive_discrepancy(x0_hat: torch.Tensor) -> torch.Tensor:
    """Eq. 14: the mean over rows of ``log sum_{j != i} exp(cos(x0_hat_i, x0_hat_j))`` (needs 2+ rows)."""
    u = F.normalize(x0_hat, dim=-1, eps=1e-8)
    sim = u @ u.T
    eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    return torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1).mean()


class DiQDiff(DreamRec):
    name: ClassVar[str] = "diqdiff"
    Config: ClassVar[type[ModelConfig]] = DiQDiffConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"
    config: DiQDiffConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or self.Config()
        assert isinstance(config, DiQDiffConfig)
        super().__init__(n_items, max_len, config)
        d = config.hidden
        self.code_selector = nn.Linear(d, config.n_codes)  # f_phi
        self.register_buffer("codebook", torch.randn(config.n_codes, max_len, d) * config.item_init_std)

    def code_weights(self, history: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` one-hot code choice per history: Gumbel softmax (straight-through) in training,
        the argmax of ``o = f_phi(s)`` in evaluation."""
        o = self.code_selector(history_mean(history, s)[:, -1])
        if self.training:
            return F.gumbel_softmax(o, tau=self.config.code_temperature, hard=True)
        return F.one_hot(o.argmax(-1), self.config.n_codes).to(s.dtype)

    def enhanced_input(self, history: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``s~ = lambda_h s + lambda_q s_q`` [B, L, d] at the real positions (zeros at padding), with
        ``s_q`` the chosen codes' last ``L`` columns; in training, the codebook update of Eq. 10."""
        L = history.shape[1]
        g = self.code_weights(history, s)
        codes = self.codebook[:, -L:].to(s.dtype).clone()  # the update below must not touch the graph's copy
        s_q = torch.einsum("bm,mld->bld", g, codes)
        if self.training:
            self._update_codebook(g.detach().argmax(1), s.detach())
        valid = (history > 0).unsqueeze(-1).to(s.dtype)
        return (self.config.lambda_h * s + self.config.lambda_q * s_q) * valid

    @torch.no_grad()
    def _update_codebook(self, chosen: torch.Tensor, s: torch.Tensor) -> None:
        """Eq. 10: each code chosen by some history becomes the mean of those histories' ``s``."""
        M, L = self.config.n_codes, s.shape[1]
        counts = torch.bincount(chosen, minlength=M)
        sums = torch.zeros(M, L, s.shape[-1], dtype=s.dtype, device=s.device).index_add_(0, chosen, s)
        hit = counts > 0
        self.codebook[hit, -L:] = (sums[hit] / counts[hit, None, None]).to(self.codebook.dtype)

    def guidance(self, history: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """DreamRec's ``T-enc`` over the enhanced input ``s~`` instead of the history's embeddings ``s``."""
        history = history[:, -self.max_len :]
        if item_vectors is None:
            item_vectors = self.encoder.item_embedding(history)
        item_vectors = item_vectors[:, -history.shape[1] :]
        return self.encoder.last_hidden(history, self.enhanced_input(history, item_vectors))

    def extra_loss(self, x0_hat: torch.Tensor) -> torch.Tensor | None:
        """``lambda_c L_c`` (Eq. 14) over the batch's x0 predictions."""
        if self.config.lambda_c == 0 or x0_hat.shape[0] < 2:
            return None
        return self.config.lambda_c * contrastive_discrepancy(x0_hat)


class DiQDiffAblationConfig(DreamRecAblationConfig, DiQDiffConfig):
    """DiQDiff's options plus those of ``dreamrec-ablation`` (defaults: DiQDiff's method)."""


class DiQDiffAblation(DiQDiff, DreamRecAblation):
    """SVQ and CDM on ``dreamrec-ablation``: with its defaults ``diqdiff`` exactly; every ablation option
    removes or replaces a part of the method (see :mod:`dreamrec.models.dreamrec_variants`)."""

    name: ClassVar[str] = "diqdiff-ablation"
    Config: ClassVar[type[ModelConfig]] = DiQDiffAblationConfig
    config: DiQDiffAblationConfig  # type: ignore[assignment]


class ResHeadCEDiQDiffConfig(ResHeadCEConfig, DiQDiffConfig):  # reshead-ce first: its defaults win
    """reshead-ce's options and defaults plus DiQDiff's (``n_codes``, ``lambda_q``, ...)."""


class ResHeadCEDiQDiff(DiQDiff, ResHeadCE):
    """DiQDiff's SVQ guidance input and CDM term on the ``reshead-ce`` recipe (a research variant: no
    diffusion, see :class:`~dreamrec.models.dreamrec_variants.ResHeadCE`)."""

    name: ClassVar[str] = "reshead-ce-diqdiff"
    Config: ClassVar[type[ModelConfig]] = ResHeadCEDiQDiffConfig
    config: ResHeadCEDiQDiffConfig  # type: ignore[assignment]
