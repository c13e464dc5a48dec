"""DreamRec (Yang et al., NeurIPS 2023): sequential recommendation by guided diffusion.

Instead of classifying candidates, DreamRec generates the embedding of an "oracle" next item
and recommends the items closest to it (inner product over the whole catalog). This module is the
paper's method and nothing else; the project's research options beyond it are the separately named
models of :mod:`dreamrec.models.dreamrec_variants`.

* guidance ``c_{n-1} = T-enc(e_{1:n-1})`` (Sec. 4.2.1, Eq. 10): item + learned position
  embeddings, dropout, ONE causal self-attention block, the state at the last (most recent)
  position. We reuse the project's :class:`~dreamrec.nn.encoders.TransformerEncoder`, sharing the
  item table; as in the authors' code the feed-forward width is ``d`` and its activation ReLU by
  default, and the item and position tables start at ``N(0, item_init_std^2)`` (the encoder's own
  layers keep their ``N(0, 0.02^2)`` init).
* training (Algorithm 1): ``x_0 = e_n`` (the target's row of the item table, learned jointly and
  receiving gradients through the loss), ``c`` replaced by a learned dummy token ``∅`` with
  probability ``p_uncond``, ``t ~ Uniform{1..T}``, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``
  (Eq. 3) and the x0-loss ``|| x_0 - f(x_t, c, t) ||^2`` (Eq. 14) with NO negative sampling.
* generation (Algorithm 2): ``x_T ~ N(0, I)``, then the reverse process over all ``T`` steps with
  the guided prediction ``(1 + w) f(x_t, c, t) - w f(x_t, ∅, t)`` (Eq. 15) from one batched call on
  ``2B`` rows per step, or on ``B`` rows for ``mlp1``, which is affine in ``c`` (:func:`guided_model_fn`); the
  generated ``x_0`` is the query, and ``score = x_0 E[1:]^T``. ``mlp1`` is affine in ``x_t`` too, so the whole
  reverse process is a linear-Gaussian chain: with ``closed_form`` (the default) ``x_0`` is drawn from its exact
  output law in one step (:mod:`dreamrec.diffusion.affine_chain`; same distribution, other noise draws).

The options are those of the diffusion model: the encoder's shape, the chain (``timesteps``,
``beta_schedule``), the denoiser ``f`` (``mlp1`` as the authors' README commands, ``mlp2``), the
classifier-free guidance (``p_uncond``, ``guidance_w``) and the sampler: ``ddpm`` over all ``T``
steps (Algorithm 2, the default), ``ddim`` with ``sampler_steps`` and ``ddim_eta``, or ``onestep``
(the DDIM-10 sampler was within 2 % of the best validation HR@20 on Zhihu at a fiftieth of the cost:
``benchmarks/RESULTS.md``; ``set_sampler`` switches a trained model). The defaults are the authors'
(``T = 500``, the ``exp`` schedule, ``w = 2``, ``p_uncond = 0.1``, ``mlp1``, ``d = 64``: their README
command for YooChoose; their argparse default is ``T = 200``). Noise comes from torch's global
generator, which the evaluator seeds, so evaluation is deterministic.

A known failure mode of the joint MSE x0-loss is that the item table shrinks and collapses (a
table whose rows all meet at one point is a perfect, useless target: the loss falls to ~1e-3, as
with the authors' code): :meth:`DreamRec.on_epoch_end` logs the mean item-embedding norm and the
mean pairwise cosine of the items.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from dreamrec import keyed_noise
from dreamrec.data.batching import Batch
from dreamrec.diffusion import ClassifierFreeGuidance, DiffusionScheduler, drop_condition, sample
from dreamrec.diffusion.affine_chain import AffineChain, affine_chain
from dreamrec.diffusion.scheduler import Sampler
from dreamrec.diffusion.schedules import BetaSchedule
from dreamrec.models.base import ModelConfig, SequentialRecommender, switch_sampler
from dreamrec.nn.denoisers import DenoiserType, MLPDenoiser
from dreamrec.nn.encoders import TRIM_PADDING_HELP, TransformerEncoder, TrimPadding


class DreamRecConfig(ModelConfig):
    # guidance encoder T-enc (Sec. 4.2.1): one Transformer block in the paper
    hidden: int = Field(64, ge=1, description="embedding size d of items, guidance and denoiser")
    n_layers: int = Field(1, ge=1, description="Transformer blocks of the guidance encoder (paper: 1)")
    n_heads: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    inner_size: int | None = Field(None, ge=1, description="feed-forward width; default hidden (authors' code)")
    activation: Literal["gelu", "relu"] = "relu"
    item_init_std: float = Field(1.0, gt=0, description="item and position tables start at N(0, std^2)")
    trim_padding: TrimPadding = Field("auto", description=TRIM_PADDING_HELP)
    # the diffusion chain (Sec. 3)
    timesteps: int = Field(500, ge=1, description="T, the number of diffusion steps")
    beta_schedule: BetaSchedule = "exp"
    beta_min: float = Field(0.1, gt=0, description="exp schedule")
    beta_max: float = Field(10.0, gt=0, description="exp schedule")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="linear schedule")
    beta_end: float = Field(0.02, gt=0, lt=1, description="linear schedule")
    # the denoiser f(x_t, c, t) (Sec. 4.2.2)
    denoiser: DenoiserType = "mlp1"
    denoiser_width: int | None = Field(None, ge=1, description="the mlp2 denoiser's hidden width (default 2 * hidden)")
    # classifier-free guidance (Sec. 4.3)
    p_uncond: float = Field(0.1, ge=0, le=1, description="probability of training with the dummy token")
    guidance_w: float = Field(2.0, ge=0, description="guidance strength w of Eq. 15")
    # the reverse process: Algorithm 2 is DDPM over all T steps
    sampler: Sampler = "ddpm"
    sampler_steps: int | None = Field(None, ge=1, description="S for ddim/ddpm; None = all T steps")
    ddim_eta: float = Field(0.0, ge=0, le=1)
    closed_form: bool = Field(
        True, description="with an mlp1 denoiser (affine in x_t), draw x_0 from the sampler's exact output law in "
        "one step instead of looping over the steps (same distribution, other noise draws; dreamrec.diffusion.affine_chain)")

    @model_validator(mode="after")
    def _check(self) -> "DreamRecConfig":
        if self.sampler_steps is not None and self.sampler_steps > self.timesteps:
            raise ValueError(f"sampler_steps ({self.sampler_steps}) exceeds timesteps ({self.timesteps})")
        if self.denoiser_width is not None and self.denoiser != "mlp2":
            raise ValueError(f"denoiser_width needs denoiser mlp2 (got {self.denoiser}: no hidden layer)")
        return self


def history_mean(history: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``[B, L, d]``: at each position ``j``, the mean of the item vectors of the history's real items
    (``history > 0``) up to and including ``j`` (zeros before the first). Column ``-1`` is the whole
    history's mean ``h_bar``; the other columns are the prefixes' means."""
    real = (history > 0).unsqueeze(-1).to(vectors.dtype)
    sums = (vectors * real).cumsum(dim=1)
    return sums / real.cumsum(dim=1).clamp_min(1.0)


def guided_condition(f: MLPDenoiser, c: torch.Tensor, null_c: torch.Tensor, w: float) -> torch.Tensor:
    """``(1 + w) W_c c - w W_c ∅`` [B, d]: the condition's share of Eq. 15's guided prediction when ``f`` is
    affine in its condition (``mlp1``); ``W_c c`` alone at ``w = 0``."""
    proj = f.project_condition(c)
    return proj if w == 0 else (1 + w) * proj - w * f.project_condition(null_c.to(c.dtype))


def guided_model_fn(
    f: MLPDenoiser, c: torch.Tensor, null_c: torch.Tensor, w: float, **fixed: torch.Tensor | float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``model_fn(x_t, t)`` for :func:`~dreamrec.diffusion.sample`: Eq. 15's guided prediction
    ``(1 + w) f(x_t, c, t) - w f(x_t, ∅, t)`` of the denoiser ``f`` for fixed conditions ``c`` [B, ...];
    ``fixed``: further keyword arguments of every call of ``f``.

    The condition's share ``W_c c`` of the first layer does not change between steps: it is computed once.
    When ``f`` is affine in its condition (``mlp1``: ``f.affine_in_condition``), Eq. 15 IS ``f`` with the
    condition projection ``(1 + w) W_c c - w W_c ∅``, so each step is one call on ``B`` rows (equal to the
    two-branch mix up to float rounding); otherwise each step is one call on the ``2B`` rows ``[c; ∅]``."""
    if getattr(f, "affine_in_condition", False) and w != 0 and not fixed:
        c_proj = guided_condition(f, c, null_c, w)
        # the guidance is inside c_proj: the sampler calls f on the conditional rows alone (w = 0 below)
        return ClassifierFreeGuidance(partial(f, c_proj=c_proj), c, null_c, 0.0)
    model_fn = ClassifierFreeGuidance(f, c, null_c, w)
    model_fn.denoiser = partial(f, c_proj=f.project_condition(model_fn.condition), **fixed)
    return model_fn


class DreamRec(SequentialRecommender):
    name: ClassVar[str] = "dreamrec"
    Config: ClassVar[type[ModelConfig]] = DreamRecConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"
    config: DreamRecConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or self.Config()
        assert isinstance(config, DreamRecConfig)
        super().__init__(n_items, max_len, config)
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
        self.denoiser = self.build_denoiser(config)
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
        self._law_cache: tuple[tuple, torch.Tensor, AffineChain] | None = None  # see output_law

    def build_denoiser(self, config: DreamRecConfig) -> MLPDenoiser:
        """``f(x_t, c, t) = MLP([x_t; c; tau(t)])`` (Sec. 4.2.2)."""
        return MLPDenoiser(config.hidden, config.denoiser, mlp_width=config.denoiser_width)

    @property
    def item_embedding(self) -> nn.Embedding:
        """The one item table: the encoder's input, the diffusion targets ``x_0`` and the retrieval keys."""
        return self.encoder.item_embedding

    def guidance(self, history: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """``c_{n-1} = T-enc(e_{1:n-1})`` [B, d] (Eq. 10; a learned vector for an empty history).
        ``item_vectors``: the history's rows of the encoder's input table, if already looked up. Histories
        wider than ``max_len`` keep their most recent columns (the encoder cuts both)."""
        return self.encoder.last_hidden(history, item_vectors)

    def _draw_noise(self, B: int, like: torch.Tensor) -> torch.Tensor:
        """The noise ``eps ~ N(0, I)`` shaped like ``like`` [B, d]: torch's global generator in training, each
        row's own keyed stream inside :func:`dreamrec.keyed_noise.keyed_rows` (inference)."""
        return keyed_noise.randn_like(like)

    # -- training (Algorithm 1) ---------------------------------------------------------------
    def guidance_and_target(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_{n-1}, e_n^0)`` [B, d] each: the guidance of each history and its next item's row of
        the table (one lookup for both, so the table gets one dense gradient)."""
        history = batch.history[:, -self.max_len :]
        B, L = history.shape
        rows = self.item_embedding(torch.cat([history.reshape(-1), batch.target]))
        # split, not two slices: its backward concatenates the two gradients instead of zero-filling
        # a [B * L + B, d] buffer for each slice and adding them
        hist_rows, target_rows = rows.split([B * L, B])
        return self.guidance(history, hist_rows.view(B, L, -1)), target_rows

    def loss(self, batch: Batch) -> torch.Tensor:
        """Algorithm 1, one step on a batch of (history, next item) pairs."""
        cfg = self.config
        c, x0 = self.guidance_and_target(batch)  # lines 2-3: c_{n-1} = T-enc(e_{1:n-1}), x_0 = e_n
        c = drop_condition(c, self.null_condition, cfg.p_uncond)  # line 4: c <- ∅ with probability p_u
        t = self.scheduler.sample_timesteps(x0.shape[0], device=x0.device)  # line 5: t ~ U{1..T}
        eps = self._draw_noise(x0.shape[0], x0)  # line 6: eps ~ N(0, I)
        x_t = self.scheduler.add_noise(x0, eps, t)  # Eq. 3: sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
        x0_hat = self.denoiser(x_t, t, c)  # f_theta(x_t, c, t)
        loss = F.mse_loss(x0_hat, x0)  # Eq. 14: ||x_0 - f_theta(x_t, c, t)||^2 (averaged over d too)
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
    def generate(self, history: torch.Tensor) -> torch.Tensor:
        """The oracle items ``e_n^0`` [B, d] generated for each history: ``x_T ~ N(0, I)``, then the
        scheduler's reverse steps with the guided prediction of Eq. 15."""
        c = self.guidance(history[:, -self.max_len :])
        x0 = self.closed_form_draw(c, self.null_condition)
        if x0 is not None:  # the same law as the loop below, in one step (closed_form)
            return x0
        model_fn = guided_model_fn(self.denoiser, c, self.null_condition, self.config.guidance_w)
        return sample(model_fn, self.scheduler, (c.shape[0], self.config.hidden), device=c.device, dtype=c.dtype)

    def closed_form_draw(self, c: torch.Tensor, null_c: torch.Tensor) -> torch.Tensor | None:
        """One draw ``x_0`` [B, d] per condition row of ``c`` from :meth:`output_law` (keyed noise), guided by
        ``null_c`` at the config's ``w``; None where the closed form does not apply (then loop)."""
        chain = self.output_law(c.device, c.dtype)
        if chain is None:
            return None
        u = guided_condition(self.denoiser, c, null_c, self.config.guidance_w)
        return chain.sample(u, keyed_noise.randn((c.shape[0], self.config.hidden), device=c.device, dtype=c.dtype))

    def output_law(self, device: torch.device, dtype: torch.dtype) -> AffineChain | None:
        """The generated ``x_0``'s law ``G u + g + L eps`` (:mod:`dreamrec.diffusion.affine_chain`) when
        ``closed_form`` is on, the sampler is ``ddpm`` or ``ddim`` and the denoiser is affine in ``x_t``
        (``mlp1``); None otherwise. Cached until
        the denoiser's weights, the sampler, the device or the dtype change."""
        f, sched = self.denoiser, self.scheduler
        if not (self.config.closed_form and getattr(f, "affine_in_condition", False) and sched.prediction_type == "x0"
                and sched.sampler != "onestep"):  # one step is one network call already
            return None
        key = (tuple((p.data_ptr(), p._version) for p in f.parameters()), sched.sampler, sched.eta, sched.variance,
               device, dtype)
        cached = self._law_cache
        if cached is not None and cached[0] == key and cached[1] is sched.timesteps:
            return cached[2]
        with torch.no_grad():  # a cached constant: no autograd graph kept alive, whoever calls
            A, k = f.affine_parts(sched.timesteps.to(device))
            chain = affine_chain(A, k, *sched.step_coefficients()).to(device, dtype)
        self._law_cache = (key, sched.timesteps, chain)
        return chain

    def set_sampler(
        self,
        sampler: Sampler | None = None,
        steps: int | None = None,
        *,
        eta: float | None = None,
        guidance_w: float | None = None,
        closed_form: bool | None = None,
    ) -> None:
        """Change how :meth:`generate` samples (no retraining): ``sampler`` (ddpm | ddim | onestep),
        ``steps`` (S; None = all T steps), ``eta`` (DDIM), the guidance strength ``w`` and ``closed_form``
        (False: step by step even where the closed form applies). Arguments left as None keep their value,
        except ``steps``, which is set whenever ``sampler`` is given. ``self.config`` is updated (and
        validated) to match."""
        switch_sampler(self, sampler, steps, ddim_eta=eta, guidance_w=guidance_w, closed_form=closed_form)

    def query(self, history: torch.Tensor) -> torch.Tensor:
        """One generated oracle item per history [B, d]."""
        return self.generate(history)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight
