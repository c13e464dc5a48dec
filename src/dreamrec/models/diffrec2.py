"""Du et al. (arXiv 2304.04541, 2023), "Sequential Recommendation with Diffusion Models" (the survey's
"DiffRec2", Sec. 3.1): only the next item's embedding is diffused, and a Transformer over the whole
sequence denoises it.

* embedding (Eq. 6): ``E`` maps each item to ``R^d``; the next item ``v_T`` becomes
  ``h_T^0 ~ q_phi(h^0 | v_T) = N(E(v_T), sigma_0^2 I)`` (``embedding_std`` = ``sigma_0``; 0 = ``E(v_T)``);
* forward process (Eq. 7): ``h_T^n = sqrt(abar_n) h_T^0 + sqrt(1 - abar_n) eps``; the history stays clean;
* denoiser: ``H^n = [h_1^0 + y_1 + z_n, ..., h_{T-1}^0 + y_{T-1} + z_n, h_T^n + y_T + z_n]``, with ``y`` the
  learned positions and ``z_n`` the step embedding, and ``f_theta(h_T^n, n) = TransformerEncoder(H^n)[-1]``;
* rounding (Eq. 8): ``p_phi(v | h^0) = softmax(W h^0 + b)``, a linear layer of its own;
* objective: ``L = E ||h_T^0 - f_theta(h_T^n, n)||^2 + E[-log p_phi(v_T | h_T^0)]`` (the MSE sums over
  the ``d`` entries; the ``n = 1`` term's target ``E(v_T)`` equals ``h_T^0`` when ``sigma_0 = 0``);
* inference (Algorithm 2): the sequence ``[v_2, ..., v_T, unk]`` with a learned ``unk`` embedding,
  ``h^N ~ q(h^N | E(unk))``, the reverse process with ``f_theta``, then ``p_phi(v | f_theta(h^1, 1))``.
  The paper's efficient inference (one denoising step from several noise draws, averaged) is
  ``sampler: onestep`` with ``n_seeds > 1``; DDIM also applies.

The scores ``W h^0 + b`` are written as one inner product, ``[h^0; 1] . [W_v; b_v]``, so retrieval
indexes rank exactly as :meth:`score`. Where this implementation chooses (the paper is silent):

* the encoder is the project's causal SASRec-style Transformer (the last position, the only one read,
  attends to every position either way; the notes do not say whether earlier positions see the slot);
* ``slot_norm`` (default on): the diffused vector is ``E(v_T)`` rescaled to length ``sqrt(d)``, the unit
  noise's length (``unk`` too). The paper does not give the table's scale; at the encoder's N(0, 0.02^2)
  initialisation the slot's signal-to-noise ratio ``abar_n ||h^0||^2 / ((1 - abar_n) d)`` is below 1 at every
  one of 100 cosine steps (0.64 at n = 1, above 0.1 on the first 3 only), so the denoiser mostly sees noise
  (planted data, ``benchmarks/survey_checks_ddrm_du.py``);
  rescaled, it is ``abar_n / (1 - abar_n)``, above 1 on half the steps;
* ``rec_on`` (default ``both``): the objective's Rec Loss ``-log p_phi(v_T | h_T^0)`` is on the clean
  ``h_T^0``, whose gradient never reaches the denoiser (it learns by MSE alone, DreamRec's regime), while
  Algorithm 2 (line 9) rounds ``f_theta``'s prediction. ``both`` keeps the objective's term and adds the same
  cross-entropy on the prediction; ``embedding`` is the objective as written, ``prediction`` the second term
  alone;
* ``target_grad: false`` (a labelled variant, not the paper) stops the MSE's gradient at its target ``h_T^0``; the
  item table then learns from the rounding loss and the history alone. With the objective as written the MSE
  pulls every row of the table, which is also the target, towards one direction: on Zhihu four of the five survey
  runs end with a mean pairwise cosine of 0.81-0.96 between items (0 at the start) and a validation MSE of 4-13 out
  of ``||h_T^0||^2 = 64`` even at ``n = N`` (``benchmarks/du_diagnose.py``). It keeps the table apart but did not
  raise validation there;
* ``step_everywhere: false`` (not the paper) adds ``z_n`` at the noisy slot only. With the paper's ``z_n`` at
  every position each history token is shifted by a different vector per row, and on the planted pattern
  (before ``slot_norm`` and ``rec_on: both``) the model stayed at popularity's level within 8 epochs.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from dreamrec import keyed_noise
from dreamrec.data.batching import Batch
from dreamrec.diffusion import DiffusionScheduler, sample
from dreamrec.diffusion.scheduler import Sampler
from dreamrec.diffusion.schedules import BetaSchedule
from dreamrec.models.base import ModelConfig, SequentialRecommender, check_sampler_steps, switch_sampler
from dreamrec.nn.denoisers import TimeEmbedding
from dreamrec.nn.encoders import TRIM_PADDING_HELP, TransformerEncoder, TrimPadding


class DiffRec2Config(ModelConfig):
    hidden: int = Field(64, ge=1, description="embedding size d")
    n_layers: int = Field(2, ge=1, description="Transformer blocks of the denoiser")
    n_heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    inner_size: int | None = Field(None, ge=1, description="feed-forward width (default 4 d)")
    activation: Literal["gelu", "relu"] = "gelu"
    trim_padding: TrimPadding = Field("auto", description=TRIM_PADDING_HELP)
    embedding_std: float = Field(0.0, ge=0, description="sigma_0 of q_phi(h^0 | v) = N(E(v), sigma_0^2 I)")
    timesteps: int = Field(100, ge=1, description="N, the number of diffusion steps")
    beta_schedule: BetaSchedule = "cosine"
    beta_start: float = Field(1e-4, gt=0, lt=1, description="linear schedule")
    beta_end: float = Field(0.02, gt=0, lt=1, description="linear schedule")
    step_everywhere: bool = Field(True, description="add z_n at every position (the paper) or only at the noisy slot")
    mse_weight: float = Field(1.0, ge=0, description="weight of the MSE term")
    rec_on: Literal["embedding", "prediction", "both"] = Field(
        "both", description="the rounding loss: embedding: -log p(v_T | h_T^0) (the objective as written); "
        "prediction: on f_theta's output (what Algorithm 2 rounds); both: the sum"
    )
    target_grad: bool = Field(
        True, description="the MSE's gradient reaches the item table through its target h_T^0 (the objective as "
        "written); false: a stop-gradient on that target, a labelled variant (on Zhihu the joint MSE turns every "
        "item's row the same way)"
    )
    slot_norm: bool = Field(
        True, description="diffuse E(v_T) rescaled to length sqrt(d), the unit noise's (false: E(v_T) as it is, "
        "N(0, 0.02^2) at the start, where the slot is noise after the first few steps)"
    )
    sampler: Sampler = "ddpm"
    sampler_steps: int | None = Field(None, ge=1, description="S for ddim/ddpm; None = all N steps")
    ddim_eta: float = Field(0.0, ge=0, le=1)
    n_seeds: int = Field(1, ge=1, description="noise draws per history whose denoised h^0 are averaged")

    @model_validator(mode="after")
    def _check(self) -> "DiffRec2Config":
        check_sampler_steps(self.sampler_steps, self.timesteps)
        if self.mse_weight == 0 and self.rec_on == "embedding":
            raise ValueError("mse_weight 0 with rec_on 'embedding' leaves the denoiser without a loss")
        return self


class DiffRec2(SequentialRecommender):
    name: ClassVar[str] = "diffrec2"
    Config: ClassVar[type[ModelConfig]] = DiffRec2Config
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"
    config: DiffRec2Config

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or DiffRec2Config()
        assert isinstance(config, DiffRec2Config)
        super().__init__(n_items, max_len, config)
        d = config.hidden
        # the history and the slot of the next item: max_len + 1 positions y_1..y_T
        self.encoder = TransformerEncoder(
            n_items, max_len + 1, hidden=d, n_layers=config.n_layers, n_heads=config.n_heads,
            dropout=config.dropout, inner_size=config.inner_size, activation=config.activation,
            trim_padding=config.trim_padding,
        )
        self.step_embedding = TimeEmbedding(d)  # z_n
        for layer in self.step_embedding.mlp:  # the encoder's N(0, 0.02^2) init: z_n must not swamp the items
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.unk = nn.Parameter(torch.randn(d) * 0.02)
        self.rounding = nn.Linear(d, n_items)  # p_phi(v | h) = softmax(W h + b)
        nn.init.normal_(self.rounding.weight, std=0.02)
        nn.init.zeros_(self.rounding.bias)
        self.scheduler = DiffusionScheduler(
            num_train_timesteps=config.timesteps, beta_schedule=config.beta_schedule, prediction_type="x0",
            beta_start=config.beta_start, beta_end=config.beta_end,
        )
        self.scheduler.set_timesteps(config.sampler_steps, sampler=config.sampler, eta=config.ddim_eta)

    @property
    def item_embedding(self) -> nn.Embedding:
        """``E``, the table of the history's items and of the diffusion targets."""
        return self.encoder.item_embedding

    def slot_vector(self, items: torch.Tensor) -> torch.Tensor:
        """The mean of ``q_phi(h^0 | v)`` [..., d]: ``E(v)``, rescaled to length ``sqrt(d)`` with ``slot_norm``."""
        e = self.item_embedding(items)
        if not self.config.slot_norm:
            return e
        return e * (e.shape[-1] ** 0.5 / e.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def denoise(self, history: torch.Tensor, h_n: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """``f_theta(h_T^n, n)`` [B, d]: the encoder's last output over ``H^n`` (history ``[B, L]``, the noisy
        slot ``h_n`` [B, d], steps ``n`` [B] or a shared [1])."""
        history = history[:, -self.max_len :]
        z = self.step_embedding(n.reshape(-1))[:, None]  # [B or 1, 1, d]
        if self.config.step_everywhere:  # H^n: z_n at every position (the paper)
            vectors = torch.cat([self.item_embedding(history), h_n[:, None]], dim=1) + z
        else:
            vectors = torch.cat([self.item_embedding(history), (h_n[:, None] + z).expand(-1, 1, -1)], dim=1)
        slot = torch.ones_like(history[:, :1])  # any real id: its vector is h_n, the mask sees a real position
        return self.encoder.last_hidden(torch.cat([history, slot], dim=1), vectors)

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        e_v = self.slot_vector(batch.target)
        h0 = e_v + cfg.embedding_std * torch.randn_like(e_v) if cfg.embedding_std > 0 else e_v
        n = self.scheduler.sample_timesteps(h0.shape[0], device=h0.device)
        f = self.denoise(batch.history, self.scheduler.add_noise(h0, torch.randn_like(h0), n), n)
        rec = 0.0
        if cfg.rec_on in ("embedding", "both"):  # the objective's Rec Loss, -log p(v_T | h_T^0)
            rec = F.cross_entropy(self.rounding(h0), batch.target - 1)
        if cfg.rec_on in ("prediction", "both"):  # on what Algorithm 2 rounds: f_theta's prediction
            rec = rec + F.cross_entropy(self.rounding(f), batch.target - 1)
        if cfg.mse_weight == 0:
            return rec
        target = h0 if cfg.target_grad else h0.detach()
        return cfg.mse_weight * (target - f).square().sum(-1).mean() + rec

    @torch.no_grad()
    def generate(self, history: torch.Tensor, n_seeds: int | None = None) -> torch.Tensor:
        """The denoised ``h^0`` [B, d] of the ``unk`` slot, averaged over ``n_seeds`` noise draws."""
        k = self.config.n_seeds if n_seeds is None else n_seeds
        B = history.shape[0]
        rows = history.repeat(k, 1) if k > 1 else history
        N = self.scheduler.num_train_timesteps
        unk = self.unk * (self.unk.shape[0] ** 0.5 / self.unk.norm()) if self.config.slot_norm else self.unk
        unk = unk.expand(rows.shape[0], -1)
        last = torch.full((rows.shape[0],), N - 1, dtype=torch.long, device=rows.device)
        h_N = self.scheduler.add_noise(unk, keyed_noise.randn_like(unk), last)  # q(h^N | E(unk))
        h0 = sample(lambda x, n: self.denoise(rows, x, n), self.scheduler, tuple(h_N.shape), x_T=h_N)
        return h0.view(k, B, -1).mean(0)

    def query(self, history: torch.Tensor) -> torch.Tensor:
        """``[h^0; 1]`` [B, d + 1]: with :meth:`item_embeddings` its inner products are ``W h^0 + b``."""
        h0 = self.generate(history)
        return torch.cat([h0, torch.ones_like(h0[:, :1])], dim=1)

    def item_embeddings(self) -> torch.Tensor:
        """``[0; W_v, b_v]`` [n_items + 1, d + 1]: row ``v`` is item ``v``'s rounding weights and bias."""
        Wb = torch.cat([self.rounding.weight, self.rounding.bias[:, None]], dim=1)
        return torch.cat([torch.zeros_like(Wb[:1]), Wb], dim=0)

    def set_sampler(self, sampler: Sampler | None = None, steps: int | None = None, *, eta: float | None = None,
                    n_seeds: int | None = None) -> None:
        """Change how :meth:`generate` samples (no retraining); see :func:`~dreamrec.models.base.switch_sampler`."""
        switch_sampler(self, sampler, steps, ddim_eta=eta, n_seeds=n_seeds)
