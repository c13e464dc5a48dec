"""Models built from DreamRec's parts that are not DreamRec's method (a paper's name runs only that
paper's method).

* ``dreamrec-ablation`` (:class:`DreamRecAblation`): DreamRec plus every option the project's
  ablation studies tried (``benchmarks/experiments/dreamrec/NOTES.md``). With its defaults it is ``dreamrec``
  exactly (same parameters, same random draws, same numbers); each option below removes or replaces a
  part of the paper's method, and a run that sets one is not DreamRec.
* ``reshead-ce`` (:class:`ResHeadCE`): the recipe that beats SASRec-CE on Zhihu with the new-item policy
  (without it, the papers' protocol, it is level with SASRec-CE or behind; README, Benchmarks). Its defaults switch
  off every part of DreamRec's diffusion except the network's noise input: it is a Transformer
  encoder whose state ``c`` is corrected by a residual MLP head and trained by full-softmax
  cross-entropy, i.e. a softmax classifier over the catalog (see its docstring).

The options of ``dreamrec-ablation`` (defaults = the paper):

* ``target_grad = False``: the x0 target is a stop-gradient copy of the item row, so the x0 loss can
  no longer shrink the table (it still learns as the encoder's input and stays the retrieval keys).
* ``train_timesteps = "last"``: train only at ``t = T``, the step the one-step sampler uses. The
  target is then (almost) pure noise in ``x_T``: no denoising is learned.
* ``x0_loss = "cosine"``: ``1 - cos(x0, f)`` instead of the MSE of Eq. 14.
* ``x0_weight``: the weight of the x0 loss (0: no x0 regression at all).
* ``ce_weight > 0``: add ``ce_weight`` times a full-softmax cross-entropy of the prediction against
  the catalog, ``-log softmax(f(x_t, c, t) E[1:]^T / ce_temperature)[target]``: every other item is a
  negative (the paper has none).
* ``freeze_items``: keep the table at its random init (a control).
* ``tie_items = False``: the encoder reads its own input table; the x0 targets and the retrieval keys
  are a second table (the paper ties them).
* ``denoiser_residual``: ``f(x_t, c, t) = c + MLP([x_t; c; tau(t)])``, the MLP's output layer at zero
  (training starts from ``f = c``); ``denoiser_dropout`` on the ``mlp2`` hidden layer.
* ``denoiser_history``: the denoiser's condition is ``[c; h_bar]``, the guidance and the mean of the
  history's item embeddings (the null condition ``[∅; 0]``).
* ``correction_scale = s`` (inference, residual denoiser): generation uses ``c + s (f - c)``.
* ``train_batches = "seq2seq"``: SASRec's batches (a target at every position of a window, guided by
  the causal encoder's state there) instead of one (history, next item) pair per event.
* ``self_condition``: the denoiser also takes its own previous x0 estimate (Chen et al., 2023).
* ``draws = K > 1`` (with ``ce_weight > 0``): a mixture of K softmaxes over K noise draws, trained by
  its likelihood and used to score; ``fixed_draws``: the K noise vectors are drawn once (a buffer).
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

from dreamrec.data.batching import Batch
from dreamrec.diffusion import ClassifierFreeGuidance, drop_condition, sample
from dreamrec.diffusion.scheduler import Sampler
from dreamrec.diffusion.schedules import BetaSchedule
from dreamrec.models.base import ModelConfig, switch_sampler
from dreamrec.models.dreamrec import DreamRec, DreamRecConfig, guided_model_fn, history_mean
from dreamrec.models.sasrec import labelled_positions
from dreamrec.nn.denoisers import DenoiserType, MLPDenoiser, SelfConditioned
from dreamrec.nn.encoders import item_table


class DreamRecAblationConfig(DreamRecConfig):
    x0_loss: Literal["mse", "cosine"] = Field(
        "mse", description="mse: ||x0 - f||^2 (Eq. 14); cosine: 1 - cos(x0, f), blind to the table's scale"
    )
    x0_weight: float = Field(1.0, ge=0, description="weight of the x0 loss (the paper: 1; 0 with ce_weight > 0 "
                             "trains by the cross-entropy alone)")
    target_grad: bool = Field(
        True, description="False: the x0 target is a stop-gradient copy of the item row"
    )
    ce_weight: float = Field(
        0.0, ge=0, description="weight of a full-softmax cross-entropy of f(x_t, c, t) against all items "
        "(0 = the paper: no negatives)"
    )
    ce_temperature: float = Field(1.0, gt=0, description="temperature of the ce_weight term's logits")
    train_timesteps: Literal["uniform", "last"] = Field(
        "uniform", description="uniform: t ~ U{1..T} (Algorithm 1); last: always t = T, training for one-step generation"
    )
    train_batches: Literal["pairs", "seq2seq"] = Field(
        "pairs", description="pairs: one (history, next item) sample per event (Algorithm 1); seq2seq: windows "
        "with a target at every position, guided by the causal encoder's state there (SASRec's batches)"
    )
    freeze_items: bool = Field(False, description="keep the item table at its random init (a control)")
    tie_items: bool = Field(
        True, description="True: one item table is the encoder's input, the x0 targets and the retrieval keys (the "
        "paper); False: the encoder has its own input table (freeze_items then freezes the target table only)"
    )
    denoiser_residual: bool = Field(
        False, description="f(x_t, c, t) = c + MLP([x_t; c; tau(t)]) with the MLP's output layer at zero"
    )
    denoiser_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the mlp2 denoiser's hidden layer")
    denoiser_history: bool = Field(
        False, description="the denoiser's condition is [c; h_bar], the guidance and the mean of the history's "
        "item embeddings (the null condition is [∅; 0])"
    )
    correction_scale: float = Field(
        1.0, ge=0, description="inference only, with denoiser_residual: every denoiser call during generation "
        "returns c + s (f(x_t, c, t) - c) (1 = as trained)"
    )
    self_condition: bool = Field(
        False, description="self-conditioning (Chen et al., 2023): the denoiser also takes its own previous x0 estimate"
    )
    draws: int = Field(
        1, ge=1, description="K > 1 (with ce_weight > 0): K noise draws per history define a mixture of K "
        "softmaxes, trained by its likelihood and used to score items (1 = one query, the paper)"
    )
    fixed_draws: bool = Field(
        False, description="with draws K > 1: the K noise vectors x_T^k are drawn once at initialisation "
        "(a buffer saved with the model) and used in training and scoring, instead of fresh N(0, I) draws"
    )

    @model_validator(mode="after")
    def _check_options(self) -> "DreamRecAblationConfig":
        if self.x0_weight == 0 and self.ce_weight == 0:
            raise ValueError("x0_weight and ce_weight are both 0: the model would have no loss")
        if self.correction_scale != 1.0 and not self.denoiser_residual:
            raise ValueError(f"correction_scale {self.correction_scale} needs denoiser_residual: it scales f - c")
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


def mixture_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """``log (1/K) sum_k softmax(logits[k])`` [B, N] from ``logits`` [K, B, N]: the log-probabilities
    of an equal-weight mixture of K softmaxes."""
    K = logits.shape[0]
    return torch.logsumexp(F.log_softmax(logits.float(), dim=-1), dim=0) - math.log(K)


class DreamRecAblation(DreamRec):
    """DreamRec with the ablation options of the module docstring; the defaults are ``dreamrec``."""

    name: ClassVar[str] = "dreamrec-ablation"
    Config: ClassVar[type[ModelConfig]] = DreamRecAblationConfig
    config: DreamRecAblationConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or self.Config()
        assert isinstance(config, DreamRecAblationConfig)
        super().__init__(n_items, max_len, config)
        self.batch_mode = config.train_batches  # which batches the trainer builds
        if not config.tie_items:  # the x0 targets and retrieval keys: a second table, initialised alike
            self.target_embedding = item_table(n_items, config.hidden, config.item_init_std)
        if config.freeze_items:
            self.item_embedding.weight.requires_grad_(False)
        if config.fixed_draws:  # x_T^1..x_T^K ~ N(0, I), drawn once (torch's global RNG: seed it to reproduce)
            self.register_buffer("fixed_noise", torch.randn(config.draws, config.hidden))

    def build_denoiser(self, config: DreamRecConfig) -> MLPDenoiser:
        assert isinstance(config, DreamRecAblationConfig)
        d = config.hidden
        return MLPDenoiser(
            d, config.denoiser, self_condition=config.self_condition, residual=config.denoiser_residual,
            dropout=config.denoiser_dropout, condition_width=2 * d if config.denoiser_history else d,
            mlp_width=config.denoiser_width,
        )

    @property
    def item_embedding(self) -> nn.Embedding:
        """The table of the x0 targets and the retrieval keys; with ``tie_items`` also the encoder's input."""
        return self.encoder.item_embedding if self.config.tie_items else self.target_embedding

    def _fixed_noise_rows(self, draws: int, B: int, dtype: torch.dtype) -> torch.Tensor:
        """``[draws * B, d]``, draw-major: row ``k * B + b`` is the fixed ``x_T^k`` (``fixed_draws``)."""
        return self.fixed_noise[:draws].to(dtype).repeat_interleave(B, dim=0)

    def _draw_noise(self, B: int, like: torch.Tensor) -> torch.Tensor:
        """Noise shaped like ``like`` ([K * B, d], draw-major): the K fixed vectors with ``fixed_draws``,
        else fresh N(0, I)."""
        if self.config.fixed_draws:
            return self._fixed_noise_rows(self.config.draws, B, like.dtype)
        return super()._draw_noise(B, like)

    def condition(self, history: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's condition: the guidance ``c`` [B, d], or with ``denoiser_history`` ``[c; h_bar]``."""
        history = history[:, -self.max_len :]
        if item_vectors is None and self.config.denoiser_history:
            item_vectors = self.encoder.item_embedding(history)
        c = self.guidance(history, item_vectors)
        if not self.config.denoiser_history:
            return c
        assert item_vectors is not None
        return torch.cat([c, history_mean(history, item_vectors)[:, -1]], dim=-1)

    def null(self) -> torch.Tensor:
        """The null condition ``∅``, as wide as :meth:`condition`."""
        if not self.config.denoiser_history:
            return self.null_condition
        return torch.cat([self.null_condition, torch.zeros_like(self.null_condition)])

    # -- training -------------------------------------------------------------------------------
    def _guidance_and_targets(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c, x0, target)``, one row per training sample. ``pairs`` batches: the guidance of each
        history and its next item. ``seq2seq`` batches: every labelled position ``j`` of a window, with the
        causal encoder's state at ``j`` as ``c`` and the item after it as target."""
        history = batch.history[:, -self.max_len :]
        B, L = history.shape
        labelled, target = None, batch.target
        if batch.labels is not None:  # the window's labelled positions, as SASRec's loss takes them
            labelled, target = labelled_positions(replace(batch, labels=batch.labels[:, -L:]))
        if self.config.tie_items:  # one lookup for the history and the targets: one dense gradient
            rows = self.item_embedding(torch.cat([history.reshape(-1), target]))
            x0, vectors = rows[B * L :], rows[: B * L].view(B, L, -1)
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
        x_t = self.scheduler.add_noise(x0, self._draw_noise(B, x0), t)
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

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, history: torch.Tensor, draws: int = 1) -> torch.Tensor:
        """The generated ``x_0`` [B, d]; with ``draws = K > 1``, K draws per history [K * B, d], draw-major
        (with ``fixed_draws`` from the fixed ``x_T^k``: ``draws`` must be the config's K, or 1)."""
        c = self.condition(history)
        B = c.shape[0]
        x_T = None
        if self.config.fixed_draws:
            if draws not in (1, self.config.draws):
                raise ValueError(f"fixed_draws: draws must be 1 or {self.config.draws} (the fixed draws), got {draws}")
            x_T = self._fixed_noise_rows(draws, B, c.dtype)
        if draws > 1:
            c = c.repeat(draws, 1)
        fixed: dict[str, torch.Tensor | float] = {}
        if self.config.correction_scale != 1.0:  # passed only when set: s = 1 is the plain denoiser call
            fixed["correction_scale"] = self.config.correction_scale
        x0 = None if (x_T is not None or fixed) else self.closed_form_draw(c, self.null())
        if x0 is not None:  # the loop's law in one step (closed_form, mlp1 only)
            return x0
        if self.config.self_condition:
            model_fn = ClassifierFreeGuidance(self.denoiser, c, self.null(), self.config.guidance_w)
            fixed["c_proj"] = self.denoiser.project_condition(model_fn.condition)
            model_fn.denoiser = SelfConditioned(self.denoiser, **fixed)
        else:
            model_fn = guided_model_fn(self.denoiser, c, self.null(), self.config.guidance_w, **fixed)
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
        closed_form: bool | None = None,
    ) -> None:
        """DreamRec's :meth:`~DreamRec.set_sampler` plus the residual ``correction_scale``."""
        switch_sampler(self, sampler, steps, ddim_eta=eta, guidance_w=guidance_w, correction_scale=correction_scale,
                       closed_form=closed_form)

    def score(self, history: torch.Tensor) -> torch.Tensor:
        """[B, n_items]: ``x_0 E^T``, or with ``draws = K > 1`` the log-probability of each item under the
        K-draw mixture ``(1/K) sum_k softmax(x0^k E^T)``."""
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
        (:mod:`dreamrec.models.new_items`); otherwise None (the model's own scores)."""
        if not self.config.denoiser_residual:
            return None
        return self.guidance(history[:, -self.max_len :]) @ self.item_embeddings()[1:].T

    def ranks_by_query(self) -> bool:
        return self.config.draws == 1  # a K-draw mixture is not one inner product: no retrieval index


class ResHeadCEConfig(DreamRecAblationConfig):
    """``dreamrec-ablation`` with the recipe's defaults (the Zhihu settings of ``configs/reshead-ce/zhihu.yaml``)."""

    hidden: int = Field(64, ge=1, description="embedding size d")
    n_layers: int = Field(2, ge=1, description="Transformer blocks of the encoder")
    n_heads: int = Field(2, ge=1)
    dropout: float = Field(0.7, ge=0, lt=1)
    inner_size: int | None = Field(256, ge=1, description="feed-forward width")
    activation: Literal["gelu", "relu"] = "gelu"
    item_init_std: float = Field(0.02, gt=0, description="item and position tables start at N(0, std^2)")
    timesteps: int = Field(500, ge=1, description="T: the head is called at t = T only")
    beta_schedule: BetaSchedule = "linear"
    denoiser: DenoiserType = "mlp2"
    denoiser_residual: bool = True
    denoiser_dropout: float = Field(0.5, ge=0, lt=1, description="dropout on the head's hidden layer")
    correction_scale: float = Field(8.0, ge=0, description="inference: the query is c + s (f - c)")
    p_uncond: float = Field(0.0, ge=0, le=1, description="0: the dummy token is never trained")
    guidance_w: float = Field(0.0, ge=0, description="0: no classifier-free guidance")
    sampler: Sampler = "onestep"
    train_timesteps: Literal["uniform", "last"] = "last"
    x0_weight: float = Field(0.0, ge=0, description="0: no x0 regression")
    ce_weight: float = Field(1.0, ge=0, description="the full-softmax cross-entropy is the whole loss")


class ResHeadCE(DreamRecAblation):
    """A Transformer encoder with a residual MLP head, trained by full-softmax cross-entropy.

    The query for a history is ``q = c + s * MLP2([x_T; c; tau(T)])`` with ``c`` the encoder's last state,
    ``s = correction_scale`` (1 in training, 8 at inference by default) and ``x_T ~ N(0, I)``; items are
    ranked by ``q E^T`` and training minimises ``-log softmax(q E^T)[target]`` over the whole catalog.
    It is built from DreamRec's code (``dreamrec-ablation`` with other defaults) and computes what the
    Zhihu recipe computed under the name ``dreamrec`` in dreamrec 0.1 runs, but it is not a diffusion model:

    * no diffusion training: only ``t = T`` is used, where ``x_T = 0.08 e_n + 0.997 eps`` (``abar_T =
      0.0064``, linear schedule, ``T = 500``) is noise with a trace of the target; no x0 regression
      (``x0_weight = 0``), no other noise level;
    * no reverse process: one call of the head (``sampler = onestep``);
    * no classifier-free guidance (``p_uncond = 0``, ``w = 0``);
    * negatives: every other item of the catalog (DreamRec has none).

    What remains of DreamRec: the head's inputs (a random vector ``x_T``, the constant step embedding
    ``tau(T)``), so scores vary slightly with the noise draw, which the evaluator seeds. Every
    ``dreamrec-ablation`` option stays settable (e.g. ``seq2seq`` batches on the leave-one-out splits).
    """

    name: ClassVar[str] = "reshead-ce"
    Config: ClassVar[type[ModelConfig]] = ResHeadCEConfig
    config: ResHeadCEConfig


def split_legacy_params(name: str, params: dict, paper_fields: set[str]) -> tuple[dict, str | None, list[str]]:
    """Configs saved by earlier versions gave ``dreamrec`` (and ``diqdiff``) every option above. Returns the
    params without the options that ``name`` no longer has and that keep the paper's value (a full dump
    of a paper run), the model to use instead when some option departs from the paper (else None) and
    those options."""
    moved = {k: v for k, v in params.items() if k not in paper_fields and k in DreamRecAblationConfig.model_fields}
    fields = DreamRecAblationConfig.model_fields
    departed = sorted(k for k, v in moved.items() if v != fields[k].default)
    kept = {k: v for k, v in params.items() if k not in moved}
    if not departed:
        return kept, None, []
    recipe = params.get("denoiser_residual") and params.get("ce_weight", 0) > 0
    if name == "diqdiff":
        return kept, ResHeadCE.name + "-diqdiff" if recipe else "diqdiff-ablation", departed
    return kept, ResHeadCE.name if recipe else DreamRecAblation.name, departed
