"""DiffuRec (Li, Sun & Li, TOIS 2023) and the DiffuRecSys extensions (DiffuRecSys, Sec. 5).

DiffuRec represents the next item as a distribution: the target embedding is noised by a
diffusion process, a Transformer *approximator* reconstructs it from the noised target and the
history, and recommendations round the reversed ``x_0`` to items by inner product.

* history representations ``e_i = LN(Drop(E[s_i]))`` (item dropout ``emb_dropout``; no position
  embedding, as the authors' code, unless ``position_embedding``);
* diffusion phase (Algorithm 1): ``x_0 = E[target]`` (a row of the same table, trained jointly),
  ``t ~ U{1..T}``, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Eq. 18-20) with
  ``eps ~ N(0, I)``, or DiffuRecSys's offset noise ``eps + s delta`` (Eq. 17) when
  ``offset_noise > 0``; truncated-linear schedule (``trunc_lin``), ``T = 32`` by default;
* approximator (:class:`~dreamrec.nn.approximators.DiffuRecApproximator`):
  ``z_i = e_i + lambda_i ⊙ (x_t + d_t)``, ``lambda_i ~ N(delta, delta)`` (Eq. 15), or with
  ``cross_attention`` DiffuRecSys's Eq. 16; ``x0_hat`` = the last position's output (Eq. 14);
* loss (Eq. 24-25): cross-entropy of ``softmax(x0_hat . E[1:]^T)`` over all items;
* reverse phase (Algorithm 2): ``x_T ~ N(0, I)`` (never offset), ``x_{t-1}`` from the posterior of
  ``q(x_{t-1} | x_t, x0_hat)`` (Eq. 21-23), ``T`` steps; rounding (Eq. 26) is ``x_0 . E[1:]^T``.
  The history enters every step through the approximator (with fresh ``lambda`` draws, as the authors).
* Algorithm 3 (DiffuRecSys): ``n_seeds > 1`` runs the reverse process from that many independent
  noise draws in one batch and averages the reversed ``x_0`` (= averaging the scores, which are
  linear in ``x_0``).

**Faithful settings** (``configs/diffurec/<dataset>.yaml``): the authors' code (WHUIR/DiffuRec at
``f6f70c9``) differs from the papers' text and from our cleaner defaults in details this model
reproduces as options: ``official_padding`` (the padding row ``E[0]`` is a learned item embedding,
``model.py:33``, that also receives ``lambda ⊙ (x_t + d_t)``; attention masks only padded queries,
``diffurec.py:232-234``; the training softmax includes the padding column, ``model.py:75``),
``block_dropout`` (``diffurec.py:255``), ``layer_norm_eps = 1e-12``, ``gelu = "tanh"``,
``init = "xavier"`` (:mod:`dreamrec.nn.official_layers`) and ``reverse_variance = "beta"`` (the
reverse step's variance is ``beta_t``, ``diffurec.py:476``). Their training loop (no gradient
clipping, StepLR(100, 0.1), validation at epochs 21, 41, ..., the model of the last validation at which
any of six metrics improved, patience 5 validations) is ``train.*`` settings. Their evaluation ranks
the padding column too and averages per-batch means; ours never ranks padding and averages over users.

The reverse process uses the project's samplers (``ddpm`` = Algorithm 2, ``ddim`` with
``sampler_steps`` and ``ddim_eta``, ``onestep``): the approximator predicts ``x_0``, so DDIM's
update and respacing apply unchanged. The default ``ddpm`` variance is the posterior variance
``beta~_t`` (``reverse_variance = "beta"``: the authors' ``beta_t``, DDPM's "large" choice).

The DiffuRecSys paper's three variants are configs: ``cross_attention = False, offset_noise = 0``
(DiffuRec baseline), ``cross_attention = True`` (+ cross-attention), and both with
``offset_noise = 0.1`` (+ offset noise, the authors' 0.1).
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dreamrec.data.batching import Batch
from dreamrec.errors import ConfigError
from dreamrec.diffusion import DiffusionScheduler, sample
from dreamrec.diffusion.noise import OffsetMode, offset_noise
from dreamrec.diffusion.scheduler import ReverseVariance, Sampler
from dreamrec.diffusion.schedules import BetaSchedule
from dreamrec.models.base import ModelConfig, SequentialRecommender, switch_sampler
from dreamrec.models.sasrec import softmax_cross_entropy
from dreamrec.nn.approximators import DiffuRecApproximator
from dreamrec.nn.dropout import Dropout
from dreamrec.nn.encoders import item_table
from dreamrec.nn.official_layers import GeluKind, InitKind


class DiffuRecConfig(ModelConfig):
    # approximator (the papers: d = 128, 4 heads, dropout 0.1, item dropout 0.3)
    hidden: int = Field(128, ge=1, description="embedding size d of items and approximator")
    n_blocks: int = Field(4, ge=1, description="Transformer blocks of the approximator")
    n_heads: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the approximator")
    emb_dropout: float = Field(0.3, ge=0, lt=1, description="dropout on the history item embeddings")
    delta: float = Field(0.001, ge=0, description="lambda ~ N(delta, delta): mean and std of the uncertainty")
    delta_std: float | None = Field(None, ge=0, description="lambda's std when not delta; 0 = lambda fixed at delta")
    position_embedding: bool = Field(False, description="add learned positions to e_i (the authors' code has none)")
    item_init_std: float = Field(1.0, gt=0, description="item table starts at N(0, std^2) (torch's default, as the authors)")
    trim_padding: bool | Literal["auto"] = Field(
        "auto", description="run the approximator in length buckets without padding columns (exact): fewer "
        "FLOPs on short histories but about 4x the operator calls, so 'auto' trims on the CPU and not on a GPU")
    # the authors' code (see the module docstring); the defaults are our cleaner choices
    official_padding: bool = Field(False, description="learned padding row, attention masks padded queries only, "
                                   "softmax over the padding column too (the authors' code)")
    block_dropout: bool = Field(False, description="dropout on every block's output (the authors' code)")
    layer_norm_eps: float = Field(1e-5, gt=0, description="LayerNorm eps (the authors': 1e-12)")
    gelu: GeluKind = Field("exact", description="exact or tanh-approximate GELU (the authors': tanh)")
    init: InitKind = Field("torch", description="xavier: Xavier-normal FFN and attention-output weights (the authors')")
    # diffusion
    reverse_variance: ReverseVariance = Field(
        "posterior", description="ddpm's sigma_t^2: posterior (beta~_t) or beta (beta_t, the authors' code)")
    timesteps: int = Field(32, ge=1, description="T, the number of diffusion steps")
    beta_schedule: BetaSchedule = "trunc_lin"
    rescale_timesteps: bool = Field(True, description="feed t * 1000 / T to the step embedding (authors' code)")
    # DiffuRecSys switches
    cross_attention: bool = Field(False, description="DiffuRecSys Eq. 16 instead of Eq. 15")
    offset_noise: float = Field(0.0, ge=0, description="scale s of the offset noise (Eq. 17) in training; 0 = off")
    offset_mode: OffsetMode = Field("row", description="row: one shift per sample; element: per coordinate (authors' code)")
    # inference
    sampler: Sampler = "ddpm"
    sampler_steps: int | None = Field(None, ge=1, description="S for ddim/ddpm; default T (all steps)")
    ddim_eta: float = Field(0.0, ge=0, le=1)
    n_seeds: int = Field(1, ge=1, description="Algorithm 3: average the reversed x0 over this many noise draws")


class DiffuRec(SequentialRecommender):
    name: ClassVar[str] = "diffurec"
    Config: ClassVar[type[ModelConfig]] = DiffuRecConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"
    config: DiffuRecConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or DiffuRecConfig()
        assert isinstance(config, DiffuRecConfig)
        super().__init__(n_items, max_len, config)
        d = config.hidden
        if config.official_padding:  # a learned padding row like any item (the authors' model.py:33)
            self.item_embedding = nn.Embedding(n_items + 1, d)
            nn.init.normal_(self.item_embedding.weight, std=config.item_init_std)
        else:
            self.item_embedding = item_table(n_items, d, config.item_init_std)
        self.position_embedding = nn.Embedding(max_len, d) if config.position_embedding else None
        self.emb_dropout = Dropout(config.emb_dropout)
        self.emb_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.approximator = self.build_approximator(config)
        self.scheduler = DiffusionScheduler(
            num_train_timesteps=config.timesteps, beta_schedule=config.beta_schedule, prediction_type="x0",
            variance=config.reverse_variance,
        )
        self.scheduler.set_timesteps(config.sampler_steps, sampler=config.sampler, eta=config.ddim_eta)

    def build_approximator(self, config: DiffuRecConfig) -> nn.Module:
        """``f_theta(e, valid, x_t, t) -> x0_hat``."""
        try:
            return DiffuRecApproximator(
                config.hidden,
                n_blocks=config.n_blocks,
                n_heads=config.n_heads,
                dropout=config.dropout,
                delta=config.delta,
                delta_std=config.delta_std,
                num_train_timesteps=config.timesteps,
                rescale_timesteps=config.rescale_timesteps,
                cross_attention=config.cross_attention,
                trim_padding=config.trim_padding,
                official_padding=config.official_padding,
                block_dropout=config.block_dropout,
                layer_norm_eps=config.layer_norm_eps,
                gelu=config.gelu,
                init=config.init,
            )
        except ValueError as err:
            raise ConfigError(f"model {self.name!r}: {err}") from None

    # -- the history ---------------------------------------------------------------------------
    def history_representation(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``e`` [B, L, d] = ``LN(Drop(E[s]))`` (+ positions), ``valid`` [B, L]) of the most recent ``max_len`` items."""
        if history.shape[1] > self.max_len:
            history = history[:, -self.max_len :]
        x = self.item_embedding(history)
        if self.position_embedding is not None:
            L = history.shape[1]
            x = x + self.position_embedding(torch.arange(self.max_len - L, self.max_len, device=history.device))[None]
        return self.emb_norm(self.emb_dropout(x)), history > 0

    # -- diffusion phase (Algorithm 1) -----------------------------------------------------------
    def forward_noise(self, x0: torch.Tensor) -> torch.Tensor:
        """The training noise: ``N(0, I)``, or offset noise (Eq. 17) when ``offset_noise > 0``."""
        return offset_noise(x0, self.config.offset_noise, self.config.offset_mode)

    def reconstruct(self, batch: Batch) -> torch.Tensor:
        """The training reconstruction ``x0_hat`` [B, d]: the target's embedding noised to a random step (Eq. 18-20)
        and denoised by the approximator, guided by the history."""
        e, valid = self.history_representation(batch.history)
        x0 = self.item_embedding(batch.target)  # gradients flow into the table
        t = self.scheduler.sample_timesteps(x0.shape[0], device=x0.device)
        x_t = self.scheduler.add_noise(x0, self.forward_noise(x0), t)  # Eq. 18-20
        return self.approximator(e, valid, x_t, t)

    def loss(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy of ``x0_hat . E[1:]^T`` against the target (Eq. 24-25)."""
        x0_hat = self.reconstruct(batch)
        if self.config.official_padding:  # the padding column is a class of the softmax (model.py:75)
            ce = F.cross_entropy(x0_hat @ self.item_embedding.weight.T, batch.target)
        else:
            ce = softmax_cross_entropy(x0_hat, self.item_embedding.weight, batch.target)
        extra = self.extra_loss(x0_hat)
        return ce if extra is None else ce + extra

    def extra_loss(self, x0_hat: torch.Tensor) -> torch.Tensor | None:
        """A further term on the batch's reconstructions ``x0_hat`` [B, d], added to the loss; None here (a hook
        for models built on DiffuRec, e.g. the DiQDiff authors' contrastive term)."""
        return None

    # -- reverse phase (Algorithm 2, Algorithm 3) -------------------------------------------------
    @torch.no_grad()
    def reverse(self, history: torch.Tensor, n_seeds: int | None = None) -> torch.Tensor:
        """The reversed ``x_0`` [B, d] for each history, averaged over ``n_seeds`` noise draws
        (Algorithm 3; default ``config.n_seeds``). Uses torch's global generator."""
        k = self.config.n_seeds if n_seeds is None else n_seeds
        e, valid = self.history_representation(history)
        B, L, d = e.shape
        if k > 1:  # one batched reverse process over the k draws of every row
            e, valid = e.repeat(k, 1, 1), valid.repeat(k, 1)

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.approximator(e, valid, x_t, t)

        x0 = sample(model_fn, self.scheduler, (e.shape[0], d), device=e.device, dtype=e.dtype)
        return x0.view(k, B, d).mean(0)

    def set_sampler(
        self,
        sampler: Sampler | None = None,
        steps: int | None = None,
        *,
        eta: float | None = None,
        n_seeds: int | None = None,
    ) -> None:
        """Change how :meth:`reverse` samples (no retraining): ``sampler`` (ddpm | ddim | onestep),
        ``steps`` (S; None = all T), DDIM's ``eta`` and Algorithm 3's ``n_seeds``. Arguments left as
        None keep their value, except ``steps``, which is set whenever ``sampler`` is given."""
        switch_sampler(self, sampler, steps, ddim_eta=eta, n_seeds=n_seeds)

    def query(self, history: torch.Tensor) -> torch.Tensor:
        return self.reverse(history)

    def item_embeddings(self) -> torch.Tensor:
        """Rounding (Eq. 26) ranks items by ``x_0 . E_j``."""
        return self.item_embedding.weight
