"""DDRM (Zhao, Wang, Xu, Sun, Feng & Chua, SIGIR 2024, arXiv 2401.06982; survey notes, Sec. 2.2):
a denoising diffusion model over a recommender's user and item embeddings, adapted to next-item prediction.

* forward process (Eq. 6-7): ``e_t^u = sqrt(abar_t) e_0^u + sqrt(1 - abar_t) eps`` and the same for the
  item, ``e_t^i``, at one step ``t ~ U{1..T}`` per interaction, with a small noise
  (:func:`~dreamrec.diffusion.schedules.linear_variance_betas`, the authors' ``linear-var`` schedule):
  the embeddings are robustified, not generated from scratch;
* reconstruction guided by collaborative information: ``e~_0^u = f_theta(e_t^u, c_u, t)`` with
  ``c_u = e_0^i`` (the interacted item) and ``e~_0^i = f_psi(e_t^i, c_i, t)`` with ``c_i = e_0^u``; both are
  the project's :class:`~dreamrec.nn.denoisers.MLPDenoiser`, ``MLP([e_t; c; tau(t)])`` (the authors use an
  MLP over the same concatenation, with tanh/sigmoid units and a 10-wide step embedding);
* loss (Eq. 22): ``L_final = L_bpr + lambda L_re`` per interaction ``(u, i, j)``, with
  ``L_bpr = -log sigma(e~_0^u . e~_0^i - e~_0^u . e_0^j)`` (the negative ``j`` is raw, not denoised, as in the
  authors' code; ``negative = "denoised"`` passes it through ``f_psi`` too) and
  ``L_re = (||e_0^u - e~_0^u||^2 + ||e_0^i - e~_0^i||^2) / (2 d)`` (squared errors averaged over the ``d``
  dimensions, as the authors' code). ``reweight`` multiplies each interaction's ``L_final`` by a
  stop-gradient weight of its score ``s(u, i) = e~_0^u . e~_0^i``, so that likely-noisy interactions (low
  scores) count less: ``softmax`` (the notes: ``B softmax_B(s)``, mean weight 1) or ``sigmoid``
  (the authors' code: ``sigma(s)^beta``);
* inference (Algorithm 2): the start point is the mean ``e_bar^i`` of the history's item embeddings
  (Eq. 23, padding ignored) noised to step ``T`` by Eq. 7 (torch's global RNG, which the evaluator
  seeds); then for ``t = T..1``: ``e^_0^i = f_psi(e^_t^i, e_0^u, t)`` and ``e^_{t-1}^i`` = the posterior mean
  (Eq. 13, no noise term). Rounding (Eq. 24) ranks the items by the inner product ``s(e, e_i)`` of the
  generated ideal item ``e`` with their embeddings (the authors' ``rounding_inner``; their code does
  not mix the user embedding in), so the query is ``e`` and retrieval indexes apply.

Adaptation to sequences (the paper diffuses pre-trained MF / LightGCN / SGL embeddings of users and
items): a training row (history, next item) is the interaction ``(u, i)``; the "user embedding"
``e_0^u`` is a SASRec-style causal Transformer's state at the last position of the history
(:class:`~dreamrec.nn.encoders.TransformerEncoder`), and the item table (shared by the encoder's input,
``e_0^i`` and the retrieval keys) is learned jointly with the encoder, ``f_theta`` and ``f_psi`` from
random initialisation, rather than pre-trained and frozen: there is no user id table for a sequential
model, and a joint model needs no second training stage. What the pre-training gave the paper, a
backbone that ranks by itself, is kept by adding the backbone's own BPR loss on the raw embeddings,
``backbone_weight * -log sigma(e_0^u . e_0^i - e_0^u . e_0^j)`` (not reweighted). Without it
(``backbone_weight = 0``) the encoder barely learns: ``f_theta`` sees the positive item in its guidance
``c_u = e_0^i`` and satisfies ``L_bpr`` from it (planted-pattern HR@20 0.39, popularity's level, against
0.87 with it). The negative ``j`` is drawn uniformly from the other items for every row (the batches carry
none).

Where the paper is silent, f_psi's input at inference. Algorithm 1 trains ``f_psi`` on the noised target
``e_t^i`` (Eq. 7), whose noise has std at most ``sqrt(0.1 * 0.01) = 0.032`` with the default schedule, so
``f_psi`` learns to return its input; Algorithm 2 then feeds it the noised history mean (Eq. 23), which is
not the target, and the query would stay close to the history mean whatever the guidance ``e_0^u``. The paper
does not say how ``f_psi`` learns to go from that start point to the item; the simplest way that keeps
Algorithm 2 as written is to train it there too: ``start_weight`` adds, per interaction,
``-log sigma(e . e_0^i - e . e_0^j) + lambda ||e_0^i - e||^2 / d`` with
``e = f_psi(sqrt(abar_t) e_bar^i + sqrt(1 - abar_t) eps, e_0^u, t)`` at the same step ``t`` (the rounding
of Eq. 24 and the reconstruction of Eq. 22 on the input that inference gives ``f_psi``). ``start_weight
= 0`` (default) is Algorithm 1 alone. Measured on the planted data (``benchmarks/survey_checks_ddrm_du.py``),
the concern did not hold there: with Algorithm 1 alone the query had cos 0.90 to ``e_0^u`` and 0.51 to the
history mean (another row's ``e_0^u`` moved it to cos 0.23), HR@20 0.878; with ``start_weight = 1`` cos 0.76 and
0.36 (0.12), HR@20 0.878. The option stays for Zhihu, where it has not been measured. ``sampler`` may replace the full posterior-mean chain of Algorithm 2 (``ddpm``, the default, over
all ``T`` steps) by DDIM or one step.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from dreamrec import keyed_noise
from dreamrec.data.batching import Batch
from dreamrec.diffusion import DiffusionScheduler, sample
from dreamrec.diffusion.scheduler import Sampler
from dreamrec.diffusion.schedules import linear_variance_betas
from dreamrec.models.base import ModelConfig, SequentialRecommender, check_sampler_steps, switch_sampler
from dreamrec.models.dreamrec import history_mean
from dreamrec.nn.denoisers import DenoiserType, MLPDenoiser
from dreamrec.nn.encoders import TRIM_PADDING_HELP, TransformerEncoder, TrimPadding
from dreamrec.nn.losses import sample_negatives


class DDRMConfig(ModelConfig):
    # the backbone: SASRec's encoder gives e_0^u; its input table is the item table e_0^i
    hidden: int = Field(64, ge=1, description="embedding size d of users (encoder states), items and f_theta / f_psi")
    n_layers: int = Field(2, ge=1, description="Transformer blocks of the history encoder")
    n_heads: int = Field(2, ge=1, description="attention heads (must divide hidden)")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout of the history encoder")
    inner_size: int | None = Field(None, ge=1, description="feed-forward width; default 4 * hidden")
    init_std: float = Field(0.02, gt=0, description="the item table and the encoder's weights start at N(0, std^2)")
    trim_padding: TrimPadding = Field("auto", description=TRIM_PADDING_HELP)
    # diffusion: a few steps of small noise (the authors' linear-var schedule)
    timesteps: int = Field(10, ge=1, description="T, the number of diffusion steps")
    noise_scale: float = Field(0.1, gt=0, le=1, description="s: scales the whole variance schedule")
    noise_min: float = Field(0.001, gt=0, lt=1, description="the variance 1 - abar_1 at t = 1 before scaling")
    noise_max: float = Field(0.01, gt=0, lt=1, description="the variance 1 - abar_T at t = T before scaling")
    denoiser: DenoiserType = Field("mlp2", description="f_theta and f_psi: mlp1 (one linear layer) or mlp2 (one hidden layer)")
    denoiser_width: int | None = Field(None, ge=1, description="hidden width of the mlp2 denoisers (default 2 * hidden)")
    denoiser_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the mlp2 denoisers' hidden layer")
    # the loss (Eq. 22)
    lambda_re: float = Field(0.1, ge=0, description="lambda, the weight of the reconstruction loss L_re")
    negative: Literal["raw", "denoised"] = Field(
        "raw", description="the negative item in L_bpr: its raw embedding e_0^j (authors' code) or f_psi's reconstruction "
        "from its noised embedding (planted pattern: HR@20 0.24 against 0.87 raw)"
    )
    reweight: Literal["none", "softmax", "sigmoid"] = Field(
        "none", description="weight each interaction's loss by its score s(u, i): none, B softmax over the batch, "
        "or sigma(s)^reweight_beta (authors' code)"
    )
    reweight_beta: float = Field(1.0, gt=0, description="the exponent beta of reweight = sigmoid")
    backbone_weight: float = Field(
        1.0, ge=0, description="weight of the backbone's own BPR loss on the raw embeddings, the joint stand-in for "
        "the paper's pre-training (0: the DDRM loss alone, which leaves the encoder almost untrained)"
    )
    start_weight: float = Field(
        0.0, ge=0, description="weight of the start-point term: f_psi also learns from the noised history mean "
        "(Eq. 23), the input Algorithm 2 gives it, to reconstruct the target (0: Algorithm 1 alone, the paper)"
    )
    # inference (Algorithm 2): the reverse process from the noised history mean, posterior means only
    sampler: Sampler = Field("ddpm", description="ddpm: the posterior-mean chain of Algorithm 2; ddim; onestep")
    sampler_steps: int | None = Field(None, ge=1, description="S for ddim/ddpm; None = all T steps")
    ddim_eta: float = Field(0.0, ge=0, le=1, description="DDIM's eta (the reverse process never adds noise)")

    @model_validator(mode="after")
    def _check(self) -> DDRMConfig:
        if self.hidden % self.n_heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})")
        check_sampler_steps(self.sampler_steps, self.timesteps)
        linear_variance_betas(self.timesteps, self.noise_scale, self.noise_min, self.noise_max)  # raises on a bad schedule
        if self.denoiser == "mlp1" and (self.denoiser_width is not None or self.denoiser_dropout):
            raise ValueError("denoiser_width and denoiser_dropout need the mlp2 denoiser (mlp1 has no hidden layer)")
        return self


class DDRM(SequentialRecommender):
    name: ClassVar[str] = "ddrm"
    Config: ClassVar[type[ModelConfig]] = DDRMConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"
    config: DDRMConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or DDRMConfig()
        assert isinstance(config, DDRMConfig)
        super().__init__(n_items, max_len, config)
        d = config.hidden
        self.encoder = TransformerEncoder(
            n_items, max_len, hidden=d, n_layers=config.n_layers, n_heads=config.n_heads, dropout=config.dropout,
            inner_size=config.inner_size, init_std=config.init_std, trim_padding=config.trim_padding,
        )
        kind, drop, width = config.denoiser, config.denoiser_dropout, config.denoiser_width
        self.f_theta = MLPDenoiser(d, kind, dropout=drop, mlp_width=width)  # users: f_theta(e_t^u, c_u, t)
        self.f_psi = MLPDenoiser(d, kind, dropout=drop, mlp_width=width)  # items: f_psi(e_t^i, c_i, t)
        betas = linear_variance_betas(config.timesteps, config.noise_scale, config.noise_min, config.noise_max)
        self.scheduler = DiffusionScheduler(betas=betas, prediction_type="x0")
        self.scheduler.set_timesteps(config.sampler_steps, sampler=config.sampler, eta=config.ddim_eta)

    @property
    def item_embedding(self) -> torch.nn.Embedding:
        """The item table: the encoder's input, the ``e_0^i`` of the diffusion and the retrieval keys."""
        return self.encoder.item_embedding

    def user_embedding(self, history: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """``e_0^u`` [B, d]: the encoder's state at the most recent position (learned for an empty history)."""
        return self.encoder.last_hidden(history, item_vectors)

    # -- training (Algorithm 1) ---------------------------------------------------------------
    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        history = batch.history[:, -self.max_len :]
        target = batch.target
        B, L = history.shape
        j = sample_negatives(target, self.n_items, 1)[:, 0]  # one uniform negative per interaction
        rows = self.item_embedding(torch.cat([history.reshape(-1), target, j]))  # one lookup: one table gradient
        e0_i, e0_j = rows[B * L : B * L + B], rows[B * L + B :]
        e0_u = self.user_embedding(history, rows[: B * L].view(B, L, -1))
        t = self.scheduler.sample_timesteps(B, device=target.device)  # one step t per interaction (line 4)
        et_u = self.scheduler.add_noise(e0_u, torch.randn_like(e0_u), t)  # Eq. 6
        et_i = self.scheduler.add_noise(e0_i, torch.randn_like(e0_i), t)  # Eq. 7
        c_u, c_i = e0_i, e0_u  # the collaborative guidance
        e0_u_rec = self.f_theta(et_u, t, c_u)  # e~_0^u
        e0_i_rec = self.f_psi(et_i, t, c_i)  # e~_0^i
        if cfg.negative == "denoised":
            e0_j = self.f_psi(self.scheduler.add_noise(e0_j, torch.randn_like(e0_j), t), t, c_i)
        s_ui = (e0_u_rec * e0_i_rec).sum(-1)
        l_bpr = -F.logsigmoid(s_ui - (e0_u_rec * e0_j).sum(-1))
        l_re = ((e0_u - e0_u_rec).square().mean(-1) + (e0_i - e0_i_rec).square().mean(-1)) / 2
        l_final = l_bpr + cfg.lambda_re * l_re  # Eq. 22, per interaction
        if cfg.reweight == "softmax":
            l_final = l_final * (B * torch.softmax(s_ui.detach(), dim=0))
        elif cfg.reweight == "sigmoid":
            l_final = l_final * torch.sigmoid(s_ui.detach()).pow(cfg.reweight_beta)
        loss = l_final.mean()
        if cfg.start_weight > 0:  # f_psi from Algorithm 2's start point: the history mean noised by Eq. 7
            e_bar = self.start_point(history, rows[: B * L].view(B, L, -1))
            e = self.f_psi(self.scheduler.add_noise(e_bar, torch.randn_like(e_bar), t), t, c_i)
            l_start = -F.logsigmoid((e * e0_i).sum(-1) - (e * rows[B * L + B :]).sum(-1))  # rounding, Eq. 24
            loss = loss + cfg.start_weight * (l_start + cfg.lambda_re * (e0_i - e).square().mean(-1)).mean()
        if cfg.backbone_weight == 0:
            return loss
        l_backbone = -F.logsigmoid((e0_u * e0_i).sum(-1) - (e0_u * rows[B * L + B :]).sum(-1))
        return loss + cfg.backbone_weight * l_backbone.mean()

    # -- inference (Algorithm 2) --------------------------------------------------------------
    def start_point(self, history: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """``e_bar^i`` [B, d] (Eq. 23): the mean embedding of the history's items, padding ignored (zeros
        for an empty history)."""
        if item_vectors is None:
            item_vectors = self.item_embedding(history)
        return history_mean(history, item_vectors)[:, -1]

    @torch.no_grad()
    def generate(self, history: torch.Tensor) -> torch.Tensor:
        """The ideal item embedding ``e`` [B, d]: ``e_bar^i`` noised to step ``T`` (Eq. 7), then reversed
        with ``f_psi`` guided by ``e_0^u``, every update the posterior mean (no noise)."""
        history = history[:, -self.max_len :]
        vectors = self.item_embedding(history)
        c_i = self.user_embedding(history, vectors)
        e_bar_i = self.start_point(history, vectors)
        T = self.scheduler.num_train_timesteps
        e_bar_T = self.scheduler.add_noise(e_bar_i, keyed_noise.randn_like(e_bar_i), T - 1)
        c_proj = self.f_psi.project_condition(c_i)  # the same at every step

        def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.f_psi(x, t, c_i, c_proj=c_proj)

        return sample(model_fn, self.scheduler, tuple(e_bar_T.shape), x_T=e_bar_T, mean_only=True)

    def set_sampler(self, sampler: Sampler | None = None, steps: int | None = None, *, eta: float | None = None) -> None:
        """Change the reverse process without retraining (see :func:`~dreamrec.models.base.switch_sampler`)."""
        switch_sampler(self, sampler, steps, ddim_eta=eta)

    def query(self, history: torch.Tensor) -> torch.Tensor:
        """The generated ideal item ``e`` [B, d]; rounding (Eq. 24) is ``e . e_i`` for every item."""
        return self.generate(history)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight
