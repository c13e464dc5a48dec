"""DreamRec (Yang et al., NeurIPS 2023): sequential recommendation by guided diffusion.

Instead of classifying candidates, DreamRec generates the embedding of an "oracle" next item
and recommends the items closest to it (inner product over the whole catalog):

* guidance ``c_{n-1} = T-enc(e_{1:n-1})`` (Sec. 4.2.1, Eq. 10): item + learned position
  embeddings, dropout, ONE causal self-attention block, the state at the last (most recent)
  position. We reuse the project's :class:`~dreamrec.nn.encoders.TransformerEncoder` with
  ``n_layers = 1``, sharing the item table; as in the authors' code the feed-forward width is
  ``d`` and its activation ReLU by default, and the item and position tables start at
  ``N(0, item_init_std^2)`` (the encoder's own layers keep their ``N(0, 0.02^2)`` init).
* training (Algorithm 1): ``x_0 = e_n`` (the target's row of the item table, learned jointly and
  receiving gradients through the loss), ``c`` replaced by a learned dummy token ``∅`` with
  probability ``p_uncond``, ``t ~ Uniform{1..T}``, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``
  and the x0-loss ``|| x_0 - f(x_t, c, t) ||^2`` (Eq. 14) with NO negative sampling.
* generation (Algorithm 2): ``x_T ~ N(0, I)``, then the reverse process with the guided
  prediction ``(1 + w) f(x_t, c, t) - w f(x_t, ∅, t)`` (Eq. 15) from one batched call on ``2B``
  rows per step; the generated ``x_0`` is the query, and ``score = x_0 E[1:]^T``.

The sampler is pluggable (``ddpm`` = Algorithm 2 with all ``T`` steps, ``ddim`` with
``sampler_steps`` and ``ddim_eta``, ``onestep``); the default is DDIM with 10 steps (chosen on
Zhihu: the cheapest sampler within 2 % of the best validation HR@20; configs/dreamrec/zhihu.yaml
keeps the paper's DDPM); noise comes from torch's global generator, which
the evaluator seeds, so evaluation is deterministic.

A known failure mode of the joint MSE x0-loss is that the item table shrinks and collapses (a
table whose rows all meet at one point is a perfect, useless target: the loss falls to ~1e-3, as
with the authors' code): :meth:`DreamRec.on_epoch_end` logs the mean item-embedding norm and the
mean pairwise cosine of the items.

Options beyond the paper (defaults keep the paper's method; see experiments/dreamrec/NOTES.md):

* ``target_grad = False``: the x0 target is a stop-gradient copy of the item row. The table then
  learns only as the encoder's input (and stays the retrieval keys), so the x0 loss can no longer
  shrink it. On the default synthetic data this alone lifts test HR@20 from 0.05 to 0.30.
* ``train_timesteps = "last"``: train only at ``t = T``, the step the one-step sampler uses
  ("training for one-step generation"); with ``target_grad = False`` it reaches 0.82-0.89 of
  the Bayes bound on the default synthetic data and 0.95 on the easy planted set.
* ``x0_loss = "cosine"``: ``1 - cos(x0, f)`` instead of the MSE (ranking by inner product only
  needs the direction of the query).
* ``freeze_items``: keep the table at its random init (a control).
* ``n_layers``: encoder depth (the paper: 1).
* ``denoiser_residual``: ``f(x_t, c, t) = c + MLP([x_t; c; tau(t)])``, the MLP's output layer
  initialised at zero (training starts from ``f = c``).
* ``denoiser_dropout``: dropout on the ``mlp2`` denoiser's hidden layer (training only);
  ``denoiser_width``: that layer's width (default ``2d``).
* ``denoiser_history``: the denoiser's condition is ``[c; h_bar]``, the guidance and the mean
  ``h_bar = (1/n) sum_j e_j`` of the history's item embeddings, so the correction
  ``f = c + MLP([x_t; c; h_bar; tau(t)])`` sees the history's items directly, not only through the
  encoder state. The null condition ``∅`` is ``[∅_c; 0]``. Retrieval stays one inner product.
* ``tie_items = False``: the encoder reads its own input table; the diffusion targets ``x_0`` and
  the retrieval keys are a second table (the paper ties them: one table). The guidance is then
  built from vectors that are not the candidates' keys, so it need not resemble the history's items.
* ``correction_scale = s`` (inference only, residual denoiser): generation uses
  ``c + s (f(x_t, c, t) - c)`` at every step, extrapolating the learned correction away from the
  guidance much as classifier-free guidance extrapolates away from the unconditional prediction.
* ``train_batches = "seq2seq"``: train on SASRec's batches -- windows with a target at every
  position, each guided by the causal encoder's state at that position (the guidance of that
  prefix) -- instead of one (history, next item) sample per event. Every transition is still one
  sample per epoch, but a sequence's prefixes share one encoder pass (Beauty at width 50, one
  thread: 125-130 s per epoch against 210 s for pairs). On sample-row splits (Zhihu) the two are
  the same.
* ``self_condition``: the denoiser also takes its own previous x0 estimate (Chen et al., 2023);
  trained on half of the batches with the stop-gradient estimate of a first pass, fed back at
  every sampling step (a one-step sampler then makes two calls).
* ``x0_weight``: the weight of the x0 loss (0 with ``ce_weight > 0``: the cross-entropy alone).
* ``ce_weight > 0``: add ``ce_weight`` times a full-softmax cross-entropy of the prediction
  against the whole catalog, ``-log softmax(f(x_t, c, t) E[1:]^T / ce_temperature)[target]``.
  This gives up the paper's "no negative sampling" (every other item is a negative): it scores the
  x0 prediction exactly as retrieval will, and keeps the table from collapsing.
* ``draws = K > 1`` (with ``ce_weight > 0``): the generator defines a mixture over its noise,
  ``p(i | h) = E_{x_T}[softmax(f(x_T, c) E^T)_i]``, estimated with K draws; training maximises
  ``log (1/K) sum_k softmax(x0_hat^k E^T)[target]`` (the cross-entropy term becomes this mixture
  likelihood), and :meth:`score` ranks items by the same K-draw mixture. A single query vector
  ranks items by one inner product; a mixture of K queries can put several separate groups of
  items on top (the "softmax bottleneck" of Yang et al., 2018).
* ``fixed_draws`` (with ``draws = K > 1``): the K noise vectors are drawn once at initialisation and
  kept as a buffer (saved with the model), so training and scoring use the same ``x_T^1..x_T^K``:
  the prior over ``x_T`` is uniform on K points, and each point can learn its own query.
"""
from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from dreamrec import keyed_noise
from dreamrec.data.batching import Batch
from dreamrec.diffusion import ClassifierFreeGuidance, DiffusionScheduler, drop_condition, sample
from dreamrec.diffusion.scheduler import Sampler
from dreamrec.diffusion.schedules import BetaSchedule
from dreamrec.models.base import ModelConfig, SequentialRecommender, switch_sampler
from dreamrec.models.sasrec import labelled_positions
from dreamrec.nn.denoisers import DenoiserType, MLPDenoiser, SelfConditioned
from dreamrec.nn.encoders import TRIM_PADDING_HELP, TransformerEncoder, TrimPadding, item_table


DEFAULT_STEPS = 10  # the default number of DDIM steps


class DreamRecConfig(ModelConfig):
    # guidance encoder (T-enc): one Transformer block, as the paper
    hidden: int = Field(64, ge=1, description="embedding size d of items, guidance and denoiser")
    n_layers: int = Field(1, ge=1, description="Transformer blocks of the guidance encoder (paper: 1)")
    n_heads: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    inner_size: int | None = Field(None, ge=1, description="feed-forward width; default hidden (authors' code)")
    activation: Literal["gelu", "relu"] = "relu"
    item_init_std: float = Field(1.0, gt=0, description="item and position tables start at N(0, std^2)")
    trim_padding: TrimPadding = Field("auto", description=TRIM_PADDING_HELP)
    # diffusion
    timesteps: int = Field(500, ge=1, description="T, the number of diffusion steps")
    beta_schedule: BetaSchedule = "exp"
    beta_min: float = Field(0.1, gt=0, description="exp schedule")
    beta_max: float = Field(10.0, gt=0, description="exp schedule")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="linear schedule")
    beta_end: float = Field(0.02, gt=0, lt=1, description="linear schedule")
    denoiser: DenoiserType = "mlp1"
    denoiser_residual: bool = Field(
        False, description="f(x_t, c, t) = c + MLP([x_t; c; tau(t)]) with the MLP's output layer at zero: "
        "training starts from the guidance itself as the x0 estimate"
    )
    denoiser_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the mlp2 denoiser's hidden layer")
    denoiser_width: int | None = Field(None, ge=1, description="the mlp2 denoiser's hidden width (default 2 * hidden)")
    denoiser_history: bool = Field(
        False, description="the denoiser's condition is [c; h_bar], the guidance and the mean of the history's "
        "item embeddings as the encoder reads them (the null condition is [∅; 0])"
    )
    correction_scale: float = Field(
        1.0, ge=0, description="inference only, with denoiser_residual: every denoiser call during generation "
        "returns c + s (f(x_t, c, t) - c), the learned correction scaled by s (1 = as trained)"
    )
    # classifier-free guidance
    p_uncond: float = Field(0.1, ge=0, le=1, description="probability of training with the dummy token")
    guidance_w: float = Field(2.0, ge=0, description="guidance strength w of Eq. 15")
    # sampling: the default, DDIM with 10 steps, was chosen from the Zhihu sampler sweep
    # (benchmarks/results/dreamrec_sampling/: the cheapest sampler within 2 % of the best validation HR@20)
    sampler: Sampler = "ddim"
    sampler_steps: int | None = Field(
        DEFAULT_STEPS, ge=1, description=f"S for ddim/ddpm; None = all T steps (default {DEFAULT_STEPS}, or T if smaller)"
    )
    ddim_eta: float = Field(0.0, ge=0, le=1)
    # options beyond the paper (defaults = the paper's method)
    x0_loss: Literal["mse", "cosine"] = Field(
        "mse", description="mse: ||x0 - f||^2 (Eq. 14); cosine: 1 - cos(x0, f), blind to the table's scale"
    )
    target_grad: bool = Field(
        True, description="False: the x0 target is a stop-gradient copy of the item row (the table still "
        "learns through the encoder input); stops the x0 loss from collapsing the table"
    )
    ce_weight: float = Field(
        0.0, ge=0, description="weight of an extra full-softmax cross-entropy of f(x_t, c, t) against all items "
        "(0 = the paper: no negatives)"
    )
    ce_temperature: float = Field(1.0, gt=0, description="temperature of the ce_weight term's logits")
    x0_weight: float = Field(1.0, ge=0, description="weight of the x0 loss (the paper: 1; 0 with ce_weight > 0 "
                             "trains the denoiser by the cross-entropy alone)")
    freeze_items: bool = Field(False, description="keep the item table at its random init (a control)")
    tie_items: bool = Field(
        True, description="True: one item table is the encoder's input, the x0 targets and the retrieval keys (the "
        "paper); False: the encoder has its own input table (freeze_items then freezes the target table only)"
    )
    self_condition: bool = Field(
        False, description="self-conditioning (Chen et al., 2023): the denoiser also takes its own previous "
        "x0 estimate (trained on half of the batches), and sampling feeds it back at every step"
    )
    draws: int = Field(
        1, ge=1, description="K > 1 (with ce_weight > 0): K noise draws per history define a mixture of K "
        "softmaxes, trained by its likelihood and used to score items (1 = one query, the paper)"
    )
    fixed_draws: bool = Field(
        False, description="with draws K > 1: the K noise vectors x_T^k are drawn once at initialisation "
        "(a buffer saved with the model) and used in training and scoring, instead of fresh N(0, I) draws; "
        "the prior over x_T is then uniform on K points, so the K queries can specialise"
    )
    train_timesteps: Literal["uniform", "last"] = Field(
        "uniform", description="uniform: t ~ U{1..T} (Algorithm 1); last: always t = T, training for one-step generation"
    )
    train_batches: Literal["pairs", "seq2seq"] = Field(
        "pairs", description="pairs: one (history, next item) sample per event (Algorithm 1); seq2seq: windows "
        "with a target at every position, guided by the causal encoder's state there (SASRec's batches)"
    )


    @model_validator(mode="after")
    def _steps_fit_T(self) -> "DreamRecConfig":
        if self.sampler_steps is not None and self.sampler_steps > self.timesteps:
            if "sampler_steps" in self.model_fields_set:
                raise ValueError(f"sampler_steps ({self.sampler_steps}) exceeds timesteps ({self.timesteps})")
            self.sampler_steps = self.timesteps  # the default S on a short chain: every step
        if self.x0_weight == 0 and self.ce_weight == 0:
            raise ValueError("x0_weight and ce_weight are both 0: the model would have no loss")
        if self.correction_scale != 1.0 and not self.denoiser_residual:
            raise ValueError(f"correction_scale {self.correction_scale} needs denoiser_residual: it scales f - c")
        if self.denoiser_width is not None and self.denoiser != "mlp2":
            raise ValueError(f"denoiser_width needs denoiser mlp2 (got {self.denoiser}: no hidden layer)")
        if self.denoiser_dropout > 0 and self.denoiser != "mlp2":
            raise ValueError(f"denoiser_dropout needs denoiser mlp2 (got {self.denoiser}: no hidden layer)")
        if self.draws > 1 and self.ce_weight == 0:
            raise ValueError(f"draws={self.draws} needs ce_weight > 0: the K draws form a mixture of softmaxes")
        if self.fixed_draws and self.draws < 2:
            raise ValueError(f"fixed_draws needs draws > 1 (got draws={self.draws}): it fixes the K noise draws")
        return self


def x0_loss(x0_hat: torch.Tensor, x0: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """The x0 loss averaged over the batch: ``mse`` = mean of ``(x0_hat - x0)^2`` over all entries
    (Eq. 14 up to the constant ``1/d``); ``cosine`` = mean of ``1 - cos(x0_hat, x0)`` over rows."""
    if kind == "mse":
        return F.mse_loss(x0_hat, x0)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(x0_hat, x0, dim=-1, eps=1e-8)).mean()
    raise ValueError(f"unknown x0 loss {kind!r}; expected mse or cosine")


def history_mean(history: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``[B, L, d]``: at each position ``j``, the mean of the item vectors of the history's real items
    (``history > 0``) up to and including ``j`` (zeros before the first). Column ``-1`` is the whole
    history's mean ``h_bar``; the other columns are the prefixes' means (``seq2seq`` batches)."""
    real = (history > 0).unsqueeze(-1).to(vectors.dtype)
    sums = (vectors * real).cumsum(dim=1)
    return sums / real.cumsum(dim=1).clamp_min(1.0)


def mixture_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log (1/K) sum_k softmax(logits[k])`` [B, N] from ``logits`` [K, B, N]: the log-probabilities
    of an equal-weight mixture of K softmaxes."""
    K = logits.shape[0]
    return torch.logsumexp(F.log_softmax(logits.float(), dim=-1), dim=0) - math.log(K)


class DreamRec(SequentialRecommender):
    name: ClassVar[str] = "dreamrec"
    Config: ClassVar[type[ModelConfig]] = DreamRecConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"
    config: DreamRecConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or DreamRecConfig()
        assert isinstance(config, DreamRecConfig)
        super().__init__(n_items, max_len, config)
        self.batch_mode = config.train_batches  # which batches the trainer builds (see DreamRecConfig)
        d = config.hidden
        self.encoder = TransformerEncoder(
            n_items,
            max_len,
            hidden=d,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
            dropout=config.dropout,
            inner_size=config.inner_size or d,
            activation=config.activation,
            trim_padding=config.trim_padding,
        )
        with torch.no_grad():  # the authors' N(0, 1) item (and position) tables; row 0 = padding
            nn.init.normal_(self.encoder.item_embedding.weight, std=config.item_init_std)
            nn.init.normal_(self.encoder.position_embedding.weight, std=config.item_init_std)
            self.encoder.item_embedding.weight[0].zero_()
        self.null_condition = nn.Parameter(torch.randn(d))  # the dummy token ∅, N(0, 1) as the authors
        self.denoiser = MLPDenoiser(
            d, config.denoiser, self_condition=config.self_condition, residual=config.denoiser_residual,
            dropout=config.denoiser_dropout, condition_width=2 * d if config.denoiser_history else d,
            mlp_width=config.denoiser_width,
        )
        self.scheduler = DiffusionScheduler(
            num_train_timesteps=config.timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type="x0",
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            beta_min=config.beta_min,
            beta_max=config.beta_max,
        )
        self.scheduler.set_timesteps(config.sampler_steps, sampler=config.sampler, eta=config.ddim_eta)
        if not config.tie_items:  # the x0 targets and retrieval keys: a second table, initialised alike
            self.target_embedding = item_table(n_items, d, config.item_init_std)
        if config.freeze_items:
            self.item_embedding.weight.requires_grad_(False)
        if config.fixed_draws:  # x_T^1..x_T^K ~ N(0, I), drawn once (torch's global RNG: seed it to reproduce)
            self.register_buffer("fixed_noise", torch.randn(config.draws, d))

    def _fixed_noise_rows(self, draws: int, B: int, dtype: torch.dtype) -> torch.Tensor:
        """``[draws * B, d]``, draw-major: row ``k * B + b`` is the fixed ``x_T^k`` (``fixed_draws``)."""
        return self.fixed_noise[:draws].to(dtype).repeat_interleave(B, dim=0)

    def _draw_noise(self, B: int, like: torch.Tensor) -> torch.Tensor:
        """Noise shaped like ``like`` ([K * B, d], draw-major): the K fixed vectors with ``fixed_draws``,
        else fresh N(0, I)."""
        if self.config.fixed_draws:
            return self._fixed_noise_rows(self.config.draws, B, like.dtype)
        return keyed_noise.randn_like(like)

    @property
    def item_embedding(self) -> nn.Embedding:
        """The item table of the diffusion targets ``x_0`` and the retrieval keys; with ``tie_items``
        (the paper) also the encoder's input table."""
        return self.encoder.item_embedding if self.config.tie_items else self.target_embedding

    def guidance(self, history: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """``c_{n-1} = T-enc(e_{1:n-1})`` [B, d] (Eq. 10; a learned vector for an empty history).
        ``item_vectors``: the history's rows of the encoder's input table, if already looked up. Histories
        wider than ``max_len`` keep their most recent columns (the encoder cuts both)."""
        return self.encoder.last_hidden(history, item_vectors)

    def condition(self, history: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's condition for each history: the guidance ``c`` [B, d], or with
        ``denoiser_history`` ``[c; h_bar]`` [B, 2d] (:func:`history_mean`)."""
        history = history[:, -self.max_len :]
        if item_vectors is None and self.config.denoiser_history:
            item_vectors = self.encoder.item_embedding(history)
        c = self.guidance(history, item_vectors)
        if not self.config.denoiser_history:
            return c
        assert item_vectors is not None
        return torch.cat([c, history_mean(history, item_vectors)[:, -1]], dim=-1)

    def null(self) -> torch.Tensor:
        """The null condition ``∅`` of classifier-free guidance, as wide as :meth:`condition`."""
        if not self.config.denoiser_history:
            return self.null_condition
        return torch.cat([self.null_condition, torch.zeros_like(self.null_condition)])

    # -- training (Algorithm 1) ---------------------------------------------------------------
    def _guidance_and_targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c, x0, target)``, one row per training sample: ``[N, d]``, ``[N, d]``, ``[N]``.

        ``pairs`` batches (``labels is None``): ``c`` is the guidance of each history and ``target``
        its next item (N = B). ``seq2seq`` batches: every labelled position ``j`` of a window is a
        sample, with ``c`` the causal encoder's state at ``j`` -- the guidance of the prefix up to
        ``j`` -- and the item after it as target (N = the labelled positions, row-major)."""
        history = batch.history[:, -self.max_len :]
        B, L = history.shape
        labelled, target = None, batch.target
        if batch.labels is not None:  # the window's labelled positions, as SASRec's loss takes them
            labelled, target = labelled_positions(replace(batch, labels=batch.labels[:, -L:]))
        if self.config.tie_items:  # one lookup for the history and the targets e_n^0: one dense gradient
            rows = self.item_embedding(torch.cat([history.reshape(-1), target]))
            x0 = rows[B * L :]  # e_n^0, gradients flow into the table
            vectors = rows[: B * L].view(B, L, -1)
        else:
            x0, vectors = self.item_embedding(target), self.encoder.item_embedding(history)
        if labelled is None:
            return self.condition(history, vectors), x0, target
        c = self.encoder(history, vectors)[labelled]
        if self.config.denoiser_history:  # each labelled position's prefix mean
            c = torch.cat([c, history_mean(history, vectors)[labelled]], dim=-1)
        return c, x0, target

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        K = cfg.draws
        c, x0, target = self._guidance_and_targets(batch)
        B = target.shape[0]
        if not cfg.target_grad:
            x0 = x0.detach()
        c = drop_condition(c, self.null(), cfg.p_uncond)
        if K > 1:  # K noise draws per row, draw-major: row k * B + b is draw k of row b
            x0, c = x0.repeat(K, 1), c.repeat(K, 1)
        if cfg.train_timesteps == "last":
            t = torch.full((x0.shape[0],), self.scheduler.num_train_timesteps - 1, device=x0.device, dtype=torch.long)
        else:
            t = self.scheduler.sample_timesteps(x0.shape[0], device=x0.device)
        noise = self._draw_noise(B, x0)
        x_t = self.scheduler.add_noise(x0, noise, t)
        x0_sc = None
        if cfg.self_condition and torch.rand(()) < 0.5:  # half the batches: condition on our own estimate
            with torch.no_grad():
                x0_sc = self.denoiser(x_t, t, c)
        x0_hat = self.denoiser(x_t, t, c, x0_sc=x0_sc)
        loss = cfg.x0_weight * x0_loss(x0_hat, x0, cfg.x0_loss) if cfg.x0_weight > 0 else x0_hat.new_zeros(())
        if cfg.ce_weight > 0:
            logits = x0_hat @ self.item_embedding.weight[1:].T / cfg.ce_temperature  # real items only
            if K == 1:
                ce = F.cross_entropy(logits, target - 1)
            else:  # -log (1/K) sum_k softmax(logits_k)[target]
                log_p = mixture_log_probs(logits.view(K, B, -1))
                ce = -log_p.gather(1, (target - 1).unsqueeze(1)).mean()
            loss = loss + cfg.ce_weight * ce
        extra = self.extra_loss(x0_hat)
        return loss if extra is None else loss + extra

    def extra_loss(self, x0_hat: torch.Tensor) -> torch.Tensor | None:
        """A further term on the batch's x0 predictions ``x0_hat`` [N, d], added to the loss; None here
        (a hook for models built on DreamRec, e.g. DiQDiff's contrastive discrepancy term)."""
        return None

    def on_epoch_end(self, epoch: int) -> dict[str, float]:
        """Mean L2 norm of the real items' embeddings and their mean pairwise cosine (watch them
        for a collapsing table: norms shrinking, cosine going to 1)."""
        with torch.no_grad():
            E = self.item_embedding.weight[1:]
            norms = E.norm(dim=1)
            n = E.shape[0]
            U = F.normalize(E, dim=1)
            cos = float((U.sum(0).square().sum() - n) / max(n * (n - 1), 1))  # mean over pairs i != j
            return {
                "item_norm": float(norms.mean()),
                "item_norm_std": float(norms.std()) if n > 1 else 0.0,
                "item_cos": cos,
            }

    # -- generation (Algorithm 2) ------------------------------------------------------------
    @torch.no_grad()
    def generate(self, history: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """The oracle items ``e_n^0`` [B, d] generated for each history (reverse process, guided);
        with ``draws = K > 1``, K independent draws per history [K * B, d], draw-major. With
        ``fixed_draws`` the reverse process starts from the fixed ``x_T^k`` (``draws`` must be the
        config's K, or 1 for ``x_T^1`` alone)."""
        c = self.condition(history)
        B = c.shape[0]
        x_T = None
        if self.config.fixed_draws:
            if draws not in (1, self.config.draws):
                raise ValueError(f"fixed_draws: draws must be 1 or {self.config.draws} (the fixed draws), got {draws}")
            x_T = self._fixed_noise_rows(draws, B, c.dtype)
        if draws > 1:
            c = c.repeat(draws, 1)
        model_fn = ClassifierFreeGuidance(self.denoiser, c, self.null(), self.config.guidance_w)
        # the condition's share of the first layer is the same at every step: compute it once
        c_proj = self.denoiser.project_condition(model_fn.condition)
        fixed: dict[str, torch.Tensor | float] = {"c_proj": c_proj}
        if self.config.correction_scale != 1.0:  # passed only when set: s = 1 is the plain denoiser call
            fixed["correction_scale"] = self.config.correction_scale
        if self.config.self_condition:
            model_fn.denoiser = SelfConditioned(self.denoiser, **fixed)
        else:
            model_fn.denoiser = partial(self.denoiser, **fixed)
        shape = (c.shape[0], self.config.hidden)  # x_t is one item embedding, whatever the condition's width
        return sample(model_fn, self.scheduler, shape, device=c.device, dtype=c.dtype, x_T=x_T)

    def set_sampler(
        self,
        sampler: Sampler | None = None,
        steps: int | None = None,
        *,
        eta: float | None = None,
        guidance_w: float | None = None,
        correction_scale: float | None = None,
    ) -> None:
        """Change how :meth:`generate` samples (no retraining): ``sampler`` (ddpm | ddim | onestep),
        ``steps`` (S; None = all T steps), ``eta`` (DDIM) and the guidance strength ``w``.
        Arguments left as None keep their value, except ``steps``, which is set whenever
        ``sampler`` is given. ``self.config`` is updated (and validated) to match."""
        switch_sampler(self, sampler, steps, ddim_eta=eta, guidance_w=guidance_w, correction_scale=correction_scale)

    def query(self, history: torch.Tensor) -> torch.Tensor:
        """One generated oracle item per history [B, d]. With ``draws > 1`` this is one draw of the
        mixture; :meth:`score` uses all K (use it, not the query, to rank)."""
        return self.generate(history)

    def score(self, history: torch.Tensor) -> torch.Tensor:
        """[B, n_items]: ``x_0 E^T`` of the generated oracle item, or with ``draws = K > 1`` the
        log-probability of each item under the K-draw mixture ``(1/K) sum_k softmax(x0^k E^T)``."""
        K = self.config.draws
        if K == 1:
            return super().score(history)
        B = history.shape[0]
        q = self.generate(history, draws=K)  # draw-major, as in training
        logits = q @ self.item_embeddings()[1:].T / self.config.ce_temperature
        return mixture_log_probs(logits.view(K, B, -1))

    def new_item_scores(self, history: torch.Tensor) -> torch.Tensor | None:
        """With a residual denoiser, ``c E^T``: the guidance alone, without the learned correction, which
        is fitted to training targets and so knows nothing of items absent from training
        (:mod:`dreamrec.models.new_items`); otherwise None (the oracle's scores)."""
        if not self.config.denoiser_residual:
            return None
        return self.guidance(history[:, -self.max_len :]) @ self.item_embeddings()[1:].T

    def ranks_by_query(self) -> bool:
        return self.config.draws == 1  # a K-draw mixture is not one inner product: no retrieval index

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight
