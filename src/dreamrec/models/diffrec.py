"""DiffRec, T-DiffRec and L-DiffRec (Wang, Xu, Feng, Lin, He & Chua, SIGIR 2023; survey notes, Sec. 1.2).

DiffRec is a *collaborative* diffusion model: it diffuses a user's whole interaction vector
``x_0 in {0, 1}^{|I|}`` (entry ``i`` = has the user interacted with item ``i``) and scores every item
by the reconstructed ``x0_hat``, so it overrides :meth:`score` instead of producing a query.

* forward process ``q(x_t | x_0) = N(sqrt(bar alpha_t) x_0, (1 - bar alpha_t) I)`` (Eq. 3) with the
  noise kept small (:func:`~dreamrec.diffusion.schedules.linear_variance_betas`):
  ``1 - bar alpha_t = s (alpha_min + (t-1)/(T-1) (alpha_max - alpha_min))``, so that a noised vector
  still carries the user's preferences;
* ``x0_hat_theta(x_t, t)``: :class:`~dreamrec.nn.interaction.InteractionDenoiser`;
* training (Algorithm 1): ``t ~ U{1..T}`` or importance sampling ``p_t ∝ sqrt(E[L_t^2])`` (the last 10
  losses of each step, uniform until every step has 10; the loss is divided by ``T p_t``);
  ``L_t = lambda_t ||x0_hat_theta(x_t, t) - x_0||^2`` (mean over items), with ``reweight`` the weight of
  Eq. 11, ``lambda_t = (bar alpha_{t-1} / (1 - bar alpha_{t-1}) - bar alpha_t / (1 - bar alpha_t)) / 2``
  for ``t > 1`` and ``lambda_1 = 1`` (Eq. 12's reconstruction term); otherwise ``lambda_t = 1``;
* ``x0_loss: multinomial`` (an ablation, not the paper's method): the per-row squared error is replaced by
  Mult-VAE's multinomial negative log-likelihood ``-sum_i x_0,i log softmax(x0_hat)_i`` (the loss of
  L-DiffRec's decoders), with the same step sampling and weights; the denoiser then outputs logits, so the reverse
  chain plugs in ``x0_hat = N softmax(logits)``, the expected counts of a multinomial draw of ``N`` items
  (``N`` = the history vector's mass plus one, the next item, as a training vector holds). It asks whether
  DiffRec's squared error is what holds it below L-DiffRec (``benchmarks/experiments/diffrec/NOTES.md``);
* inference (Algorithm 2): ``x_{T'} ~ q(x_{T'} | x_0)`` from the history's vector (``T' = 0``: the vector
  itself), then ``x_{t-1} = mu_theta(x_t, t)``, the posterior mean of Eq. 10 with ``x0_hat`` plugged in
  (no noise), for ``t = T, ..., 1``; the scores are the final ``x_0``.
* T-DiffRec (``time_weights = (w_min, w_max)``): the ``m``-th of a user's ``M`` interactions in time
  order gets ``w_m = w_min + (m - 1)/(M - 1) (w_max - w_min)`` and ``x_0 <- x_0 ⊙ w`` (an item seen twice
  keeps its most recent weight; ``M = 1`` gets ``w_max``).

Adaptation to next-item prediction (the paper ranks a user's held-out interactions from the full
training vector): a training row's vector holds its history window *and* its target, so the model
learns to add the next item to a history; at inference the vector holds the history alone. The
papers mask the user's known items when ranking; here, as for every model, all items are ranked
unless the evaluation excludes the history (``dreamrec evaluate --exclude-seen``), and DiffRec,
which reconstructs its input, needs that exclusion to be useful.

L-DiffRec (Sec. 3.4; ``latent_clusters = C >= 1``) runs the same diffusion on a compressed latent instead
of ``x_0`` (:mod:`dreamrec.nn.latent`): the items are clustered into ``C`` groups by k-means
(:meth:`DiffRec.fit_statistics`, training data only); the slice ``x_0^c`` of each cluster is encoded by its
own variational encoder into ``mu_c, log sigma^2_c`` (``latent_dim`` wide each); training draws
``z_0 = mu + sigma * eps`` (inference takes ``z_0 = mu``), concatenates the clusters' latents, applies
Algorithm 1 to ``z_0`` (Eq. 3, 11-12, importance sampling; the denoiser is the same MLP, ``C * latent_dim``
wide) and decodes the denoiser's ``z0_hat`` with the per-cluster decoders into logits over all items, in
item order. The loss is ``L_diff(z_0) + lambda * (-sum_i x_0,i log softmax(x0_hat)_i + beta_k KL(q || N(0, I)))``
with ``lambda = vae_weight`` and ``beta_k = kl_cap * min(1, k / kl_anneal_steps)`` at update ``k``
(Mult-VAE's multinomial likelihood and KL annealing). Inference (Algorithm 2 in the latent): ``z_{T'}``
from ``mu``, the mean-only reverse chain, then the decoders; the scores are the decoded logits.
Deviations: the paper clusters pre-trained LightGCN item embeddings, here the truncated SVD of the
training interaction matrix (there is no LightGCN in this project); every cluster gets the same latent
width (the authors' code splits one width in proportion to the cluster sizes); the decoders end in one
softmax over all items; ``lambda`` weights the VAE term (the authors' code, with reweighting, puts a
decaying weight on the diffusion term instead: the same objective up to a constant factor while fixed).
T-DiffRec's weights apply to the ``x_0`` that is encoded and reconstructed (LT-DiffRec).
Defaults: ``latent_dim`` 100 per cluster, linear encoders/decoders (``vae_dims = []``, as the authors'
``in_dims = [300]``), input dropout 0.1, ``beta`` up to 0.2 over 1000 updates (Mult-VAE's cap), and
``lambda = 100`` for Eq. 11's weights, which make ``L_diff`` ~1e3 times the plain MSE; without ``reweight``
use ``lambda`` ~0.1-1. The diffusion term must keep its share: the reverse chain applies the denoiser
``T`` times, so it has to stay a good ``z_0`` predictor (on the planted set, ``lambda = 10`` without
reweighting fell to popularity's HR@20, 0.1 and 1 did not).
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field, PositiveInt, model_validator

from dreamrec import keyed_noise
from dreamrec.data.batching import Batch
from dreamrec.data.dataset import SampleRows
from dreamrec.diffusion import DiffusionScheduler, sample
from dreamrec.diffusion.schedules import linear_variance_betas
from dreamrec.errors import ConfigError
from dreamrec.models.base import ModelConfig, SequentialRecommender
from dreamrec.nn.interaction import InteractionDenoiser
from dreamrec.nn.latent import ClusteredVAE, gaussian_kl, item_clusters, multinomial_nll, multinomial_nll_rows

LOSS_HISTORY = 10  # losses kept per step for importance sampling
LATENT_ONLY = ("latent_dim", "vae_dims", "vae_dropout", "vae_weight", "kl_cap", "kl_anneal_steps")


class DiffRecConfig(ModelConfig):
    dims: list[int] = Field(default_factory=lambda: [1000], min_length=1, description="hidden widths of the MLP (mirrored)")
    time_dim: int = Field(10, ge=1, description="width of the step embedding")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout on the denoiser's input (x_t; L-DiffRec: z_t)")
    normalize: bool = Field(False, description="L2-normalise x_t before the MLP")
    timesteps: int = Field(5, ge=1, description="T, the number of diffusion steps")
    noise_scale: float = Field(0.1, gt=0, le=1, description="s: scales the whole variance schedule")
    noise_min: float = Field(0.0005, gt=0, lt=1, description="alpha_min, the variance at t = 1 before scaling")
    noise_max: float = Field(0.005, gt=0, lt=1, description="alpha_max, the variance at t = T before scaling")
    reweight: bool = Field(True, description="weight L_t by Eq. 11 (SNR difference); False: the plain per-row error at every t")
    x0_loss: Literal["mse", "multinomial"] = Field(
        "mse", description="DiffRec: the per-row error of x0_hat; multinomial is an ablation, not the paper's"
    )
    t_sampling: Literal["uniform", "importance"] = "uniform"
    inference_noise_steps: int = Field(0, ge=0, description="T': noise the history to step T' before denoising (0 = none)")
    time_weights: tuple[float, float] | None = Field(
        None, description="T-DiffRec: (w_min, w_max) in (0, 1], interaction weights rising linearly with recency"
    )
    # L-DiffRec (Sec. 3.4)
    latent_clusters: int = Field(0, ge=0, description="L-DiffRec: C item clusters, one VAE each (0 = DiffRec on x_0)")
    latent_dim: int = Field(100, ge=1, description="L-DiffRec: width of each cluster's latent (z_0: C * latent_dim)")
    vae_dims: list[PositiveInt] = Field(
        default_factory=list, description="L-DiffRec: hidden widths of each encoder, mirrored in its decoder"
    )
    vae_dropout: float = Field(0.1, ge=0, lt=1, description="L-DiffRec: dropout on x_0 before the encoders")
    vae_weight: float = Field(
        100.0, gt=0, description="L-DiffRec: lambda, the weight of the VAE loss (for reweight; ~0.1-1 without it)"
    )
    kl_cap: float = Field(0.2, ge=0, description="L-DiffRec: the KL weight beta once annealed")
    kl_anneal_steps: int = Field(1000, ge=0, description="L-DiffRec: updates over which beta rises from 0 to kl_cap")

    @model_validator(mode="after")
    def _check(self) -> DiffRecConfig:
        if self.inference_noise_steps > self.timesteps:
            raise ValueError(f"inference_noise_steps ({self.inference_noise_steps}) cannot exceed timesteps ({self.timesteps})")
        linear_variance_betas(self.timesteps, self.noise_scale, self.noise_min, self.noise_max)  # raises on a bad schedule
        if self.time_weights is not None:
            lo, hi = self.time_weights
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"time_weights must satisfy 0 < w_min <= w_max <= 1, got {self.time_weights}")
        if self.latent_clusters == 0:
            fields = type(self).model_fields
            stray = [k for k in LATENT_ONLY if getattr(self, k) != fields[k].get_default(call_default_factory=True)]
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply to L-DiffRec: set latent_clusters >= 1")
        elif self.x0_loss != "mse":
            raise ValueError("x0_loss only applies to DiffRec on x_0: L-DiffRec's latent z_0 is not a bag of items")
        return self


class DiffRec(SequentialRecommender):
    name: ClassVar[str] = "diffrec"
    Config: ClassVar[type[ModelConfig]] = DiffRecConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"
    config: DiffRecConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or DiffRecConfig()
        assert isinstance(config, DiffRecConfig)
        super().__init__(n_items, max_len, config)
        C = config.latent_clusters
        if C > n_items:
            raise ConfigError(f"latent_clusters ({C}) exceeds the number of items ({n_items})")
        self.vae = ClusteredVAE(n_items, C, config.latent_dim, config.vae_dims, config.vae_dropout) if C else None
        if C:  # updates made so far, for the KL annealing (saved, so that a resumed run continues it)
            self.register_buffer("kl_step", torch.zeros(1, dtype=torch.long))
        self.denoiser = InteractionDenoiser(
            C * config.latent_dim if C else n_items, config.dims, time_dim=config.time_dim, dropout=config.dropout,
            normalize=config.normalize,
        )
        betas = linear_variance_betas(config.timesteps, config.noise_scale, config.noise_min, config.noise_max)
        self.scheduler = DiffusionScheduler(betas=betas, prediction_type="x0")
        abar = torch.cumprod(1 - betas, 0)  # float64: 1 - abar is ~1e-4, too close to 1 for float32
        snr = abar / (1 - abar)
        snr_prev = torch.cat([snr.new_full((1,), float("inf")), snr[:-1]])
        weights = torch.where(torch.arange(config.timesteps) == 0, torch.ones_like(snr), (snr_prev - snr) / 2)
        self.register_buffer("loss_weights", weights.float(), persistent=False)
        # importance sampling state (saved, so that a resumed run continues it)
        self.register_buffer("loss_history", torch.zeros(config.timesteps, LOSS_HISTORY))
        self.register_buffer("loss_count", torch.zeros(config.timesteps, dtype=torch.long))

    # -- the interaction vector ----------------------------------------------------------------
    def interaction_vector(self, history: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, n_items]`` vector ``x_0`` of the last ``max_len`` history items (and the target, the most
        recent); column ``j`` is item ``j + 1``. 1 per item, or T-DiffRec's recency weight."""
        if history.shape[1] > self.max_len:
            history = history[:, -self.max_len :]
        seq = history if target is None else torch.cat([history, target[:, None]], dim=1)
        valid = seq > 0
        w = valid.float()
        if self.config.time_weights is not None:
            lo, hi = self.config.time_weights
            m = valid.cumsum(1).float()  # 1..M along the valid (time-ordered) positions
            M = valid.sum(1, keepdim=True).float()
            frac = torch.where(M > 1, (m - 1) / (M - 1).clamp(min=1), torch.ones_like(m))
            w = (lo + frac * (hi - lo)) * valid
        x = torch.zeros(seq.shape[0], self.n_items + 1, device=seq.device)
        x.scatter_reduce_(1, seq, w, reduce="amax")
        return x[:, 1:]

    # -- training (Algorithm 1) ----------------------------------------------------------------
    def sample_steps(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(``t`` [B] 0-based, ``p_t`` [B]): uniform, or importance sampling once every step has a full history."""
        T = self.config.timesteps
        if self.config.t_sampling == "importance" and bool((self.loss_count == LOSS_HISTORY).all()):
            p = (self.loss_history**2).mean(1).sqrt()
            p = p / p.sum()
            p = 0.999 * p + 0.001 / T  # keep every step reachable
            t = torch.multinomial(p, batch_size, replacement=True).to(device)
            return t, p.to(device)[t]
        t = torch.randint(0, T, (batch_size,), device=device)
        return t, torch.full((batch_size,), 1.0 / T, device=device)

    def diffusion_loss(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Algorithm 1's loss on ``x0`` [B, D], the denoiser's ``x0_hat`` [B, D]); ``x0`` is DiffRec's
        interaction vector or L-DiffRec's latent ``z_0``."""
        t, p_t = self.sample_steps(x0.shape[0], x0.device)
        x_t = self.scheduler.add_noise(x0, torch.randn_like(x0), t)
        x0_hat = self.denoiser(x_t, t)
        if self.config.x0_loss == "multinomial":  # the ablation: -sum_i x0_i log softmax(x0_hat)_i per row
            err = multinomial_nll_rows(x0_hat, x0)
        else:  # Algorithm 1: the squared error, mean over items
            err = ((x0_hat - x0) ** 2).mean(1)
        L_t = err * self.loss_weights[t] if self.config.reweight else err
        if self.training and self.config.t_sampling == "importance":
            self._record(t, L_t.detach())
        return (L_t / (self.config.timesteps * p_t)).mean(), x0_hat

    def loss(self, batch: Batch) -> torch.Tensor:
        x0 = self.interaction_vector(batch.history, batch.target)
        if self.vae is None:
            return self.diffusion_loss(x0)[0]
        mu, logvar = self.vae.encode(x0)  # q_phi_c(z_0^c | x_0^c) of every cluster: [B, C, d]
        z0 = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        L_diff, z0_hat = self.diffusion_loss(z0.flatten(1))
        x0_hat = self.vae.decode(z0_hat.view_as(mu))  # p_psi_c(x_0^c | z0_hat^c), put back in item order
        L_vae = multinomial_nll(x0_hat, x0) + self.kl_weight() * gaussian_kl(mu, logvar)
        if self.training:
            self.kl_step += 1
        return L_diff + self.config.vae_weight * L_vae

    def kl_weight(self) -> float:
        """L-DiffRec's ``beta_k = kl_cap * min(1, k / kl_anneal_steps)`` after ``k = kl_step`` updates."""
        cfg = self.config
        if cfg.kl_anneal_steps == 0:
            return cfg.kl_cap
        return cfg.kl_cap * min(1.0, int(self.kl_step) / cfg.kl_anneal_steps)

    def fit_statistics(self, dataset: Any) -> None:
        """L-DiffRec: cluster the items (Sec. 3.4) from the training rows alone (DiffRec: nothing to fit)."""
        if self.vae is None:
            return
        if dataset.n_items != self.n_items:
            raise ValueError(f"dataset has {dataset.n_items} items, model was built for {self.n_items}")
        # item_clusters' fixed seed 0: the clusters depend on the training data only, not on the run's seed
        labels = item_clusters(training_matrix(dataset.train, self.n_items, self.max_len), self.config.latent_clusters)
        self.vae.item_cluster.copy_(torch.from_numpy(labels))

    @torch.no_grad()
    def _record(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each step's new losses (in batch order) to its history and keep the last ``LOSS_HISTORY``."""
        for step in t.unique().tolist():
            n = int(self.loss_count[step])
            kept = torch.cat([self.loss_history[step, :n], losses[t == step]])[-LOSS_HISTORY:]
            self.loss_history[step, : len(kept)] = kept
            self.loss_count[step] = len(kept)

    # -- inference (Algorithm 2) ---------------------------------------------------------------
    @torch.no_grad()
    def reverse(self, history: torch.Tensor) -> torch.Tensor:
        """The denoised ``x_0`` [B, n_items] of the history's interaction vector (L-DiffRec: the decoded
        denoised latent of its encoding ``mu``)."""
        x = self.interaction_vector(history)
        if self.vae is None:
            return self.denoise(x)
        mu, _ = self.vae.encode(x)
        return self.vae.decode(self.denoise(mu.flatten(1)).view_as(mu))

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """Algorithm 2 from ``x`` [B, D]: noise it to step ``T'``, then the mean-only reverse chain."""
        model_fn = self.denoiser
        if self.config.x0_loss == "multinomial":  # logits -> x0's units: the expected counts N softmax(logits)
            mass = x.sum(1, keepdim=True) + 1.0  # N: the history's mass and the next item, as a training vector holds
            model_fn = lambda x_t, t: mass * torch.softmax(self.denoiser(x_t, t), dim=-1)  # noqa: E731
        T_prime = self.config.inference_noise_steps
        if T_prime > 0:
            t = torch.full((x.shape[0],), T_prime - 1, device=x.device, dtype=torch.long)
            x = self.scheduler.add_noise(x, keyed_noise.randn_like(x), t)
        return sample(model_fn, self.scheduler, tuple(x.shape), x_T=x, mean_only=True)  # ddpm over all T steps

    def score(self, history: torch.Tensor) -> torch.Tensor:
        return self.reverse(history)


def training_matrix(train: Any, n_items: int, max_len: int) -> sp.csr_matrix:
    """Binary [rows, n_items] matrix of the training data (column ``j`` = item ``j + 1``): a row per sample
    (its last ``max_len`` history items and its target) or per training sequence."""
    if isinstance(train, SampleRows):
        items = np.concatenate([train.history[:, -max_len:], train.target[:, None]], axis=1)
        rows = np.repeat(np.arange(len(items)), items.shape[1])
        items, n_rows = items.ravel(), len(train)
    else:  # Sequences
        items, n_rows = train.items, len(train)
        rows = np.repeat(np.arange(n_rows), train.lengths())
    keep = items > 0
    ones = np.ones(int(keep.sum()), dtype=np.float32)
    X = sp.csr_matrix((ones, (rows[keep], items[keep] - 1)), shape=(n_rows, n_items))
    X.data[:] = 1.0  # an item repeated in a row counts once
    return X
