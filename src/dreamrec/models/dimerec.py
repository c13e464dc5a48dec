"""DimeRec (WSDM 2025, arXiv 2408.12153; survey notes, Sec. 3.4): a diffusion recommender guided by
multiple interests, diffusing on the unit sphere.

* **Guidance Extraction Module (GEM).** ``H^u = F(S^u)`` embeds the history (``F``: the item table).
  The model-based GEM (default) extracts ``K`` interests with an attentive matrix
  ``A = softmax_N(W_2 tanh(W_1 (H^u + P)^T))^T in R^{N x K}`` (a two-layer tanh MLP, softmax over the
  history's real positions) and ``g^u = A^T (H^u + P) in R^{K x d}``, ``P`` the position embeddings.
  The rule-based GEM is ``g^u = F(S^u[-K:])``, the last ``K`` items. The GEM is trained on its own by
  the interest closest to the target, ``g_u = g^u[argmax_k g^u_k . e_a]``, with a sampled softmax:
  ``L_gem = -log(exp(g_u . e_a) / (exp(g_u . e_a) + sum_{i- in I_sample} exp(g_u . e_i-)))``.
* **Diffusion Aggregation Module (DAM)** on the sphere (Algorithm 1). ``e'_a = L2-Norm(e_a)`` (line 7); a
  Gaussian ``eps`` in the tangent space at ``e'_a`` (``eps - (eps . e'_a) e'_a``, line 8) moves the target
  along the geodesic, ``x_t = exp_{e'_a}[theta_t eps / |eps|]`` with ``exp_x[v] = cos(|v|) x + sin(|v|) v / |v|``
  (line 9) and ``theta_t = arctan(sqrt((1 - abar_t) / abar_t) |eps|)`` (line 10, see below), i.e.
  ``x_t = L2-Norm(sqrt(abar_t) e'_a + sqrt(1 - abar_t) eps)``; ``x0_hat = f_theta(x_t, t, g^u)`` (an MLP over
  ``[x_t; g^u_1; ...; g^u_K; tau(t)]``, line 11) is mapped onto the sphere as well, so that the reconstruction
  loss cannot shrink the norms that the inner products need. Losses: ``L_recon = E ||e'_a - x0_hat||^2`` and
  ``L_ssm = -log(exp(x0_hat . e_a) / (exp(x0_hat . e_a) + sum_{i-} exp(x0_hat . e_i-)))``;
  ``L = L_gem + lambda L_recon + mu L_ssm`` (Eq. 23).
* **Reversing** (Algorithm 2): ``x_T`` uniform on the sphere, then for ``t = T..1``
  ``x_{t-1} = L2-Norm(mu~_t(x_t, x0_hat) + sigma_t eps')``, ``eps' ~ N(0, I_d)`` (line 6), with the shared
  samplers (DDPM as the algorithm, DDIM or one step for speed), every update mapped back onto the sphere; the
  generated ``x_0`` is the query and items are ranked by ``x_0 . e``.

Where the notes are silent or loose, this implementation chooses:

* **the angle.** Line 10 writes ``exp_{e'_a}[sqrt(1 - alpha_t) eps]``. We read ``alpha_t`` as the cumulative
  ``abar_t`` (the marginal ``q(x_t | x_0)`` that Algorithm 2's DDPM posterior reverses; the per-step
  ``1 - alpha_t = beta_t`` would be one step's noise). Taken literally, the tangent Gaussian's norm ``|eps|``
  is ``~ sqrt(d - 1)`` (7.9 at ``d = 64``), so the angle ``sqrt(1 - abar_t) |eps|`` passes ``2 pi`` and ``x_t``
  wraps back onto ``e'_a``: our earlier code, where ``cos(x_t, x0)`` was -0.96 at ``t = 40`` and 0.86
  at ``t = T = 100`` (``benchmarks/dimerec_geodesic.py``). The notes justify the sphere by the geodesic random
  walk, whose small steps act as tangent Gaussian noise, and reverse by DDPM's posterior followed by
  ``L2-Norm``. We keep line 10's exponential map and tangent direction and take the angle
  ``theta_t = arctan(sqrt((1 - abar_t) / abar_t) |eps|)``: equal to the notes' ``sqrt(1 - abar_t) |eps|`` to first
  order while it is small, and exactly the forward that matches Algorithm 2's reverse, DDPM's
  ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` mapped onto the sphere by ``L2-Norm``. It grows monotonically in
  ``t``, stays below ``pi / 2`` and reaches ``cos(x_T, x0) ~ 0.1`` at the default linear schedule (``T = 100``),
  close to the uniform ``x_T`` that reversing starts from.
* **the reverse noise** is Algorithm 2's: ``sigma_t`` the DDPM posterior standard deviation ``sqrt(beta~_t)``
  (the notes write ``beta~_t eps'``) and ``eps' ~ N(0, I_d)`` per coordinate. Its norm ``sigma_t sqrt(d)``
  (up to 1.1 on a unit vector) matches the forward above; with a perfect ``x0_hat`` the reverse's ``x_t``
  lie within ~0.1 in mean ``cos(x_t, x0)`` of the forward's (0.44 against 0.53 at ``t = 20``; 0.18 against 0.29
  at ``t = 40``; ``benchmarks/dimerec_geodesic.py``). We tried the
  alternative a review suggested, ``theta_t = arccos(sqrt(abar_t))`` on a unit tangent direction with
  ``eps' ~ N(0, I_d / d)``: its ``x_T`` stays at ``cos 0.60`` from ``x0``, far from the uniform start, and it
  ranked worse on the planted test (HR@20 0.52 against 0.66, one seed).
* the negatives ``I_sample`` are ``n_negatives`` items drawn uniformly once per batch and shared by its rows
  (``None``: the full softmax over all items); ``x0_hat`` is normalised but the items ``e`` in the softmaxes
  of ``L_gem`` and ``L_ssm`` (Eq. 23) and in the ranking ``x_0 . e`` are not: Algorithm 1 normalises ``e_a``
  only for the diffusion (line 7), and the item norms are the softmax's only scale.
* **the item table's scale.** The notes give no temperature in ``L_gem`` or ``L_ssm`` and no initialisation.
  Since the query ``x0_hat`` has unit norm, the logits ``x0_hat . e`` are bounded by the item norms, so the
  initial scale of the table is the softmax's initial inverse temperature. We start the rows at
  ``N(0, I / d)`` (``item_init_std None``: ``std = 1 / sqrt(d)``), norm ~1, the sphere's own scale, so that the
  logits start as cosines. Our earlier ``std = 0.02`` (norm 0.16 at ``d = 64``) left every softmax nearly flat
  (logits within +-0.16): the table first drifted one way (mean pairwise cosine 0.82 after epoch 1, the
  trainer's collapse warning), validation HR@20 stayed at popularity's for six of the eight planted epochs and
  the planted test reached 0.66; with ``1 / sqrt(d)`` it reaches 0.83 (torch's ``N(0, 1)``, norm 8, is too
  sharp: 0.57). ``temperature`` (default 1, the paper's softmaxes) divides the logits of ``L_gem`` and
  ``L_ssm`` by ``tau``, a labelled non-paper option that also repairs the small table (0.78 at ``tau = 0.1`` and
  ``std = 0.02``); the ranking formula does not use it. On the Zhihu split tau matters: at ``tau = 1`` the
  item norms are the only scale the softmax can sharpen with, the often-seen items grow and the ranking follows
  the norms (popularity's level); ``tau = 0.1`` with the full softmax reached 1.87 +- 0.19 % test HR@20 over five
  seeds, against 1.44 +- 0.13 % at ``tau = 1`` (``docs/models/dimerec.md``).
"""
from __future__ import annotations

from functools import partial
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from dreamrec.data.batching import Batch
from dreamrec.diffusion import DiffusionScheduler, sample
from dreamrec.diffusion.scheduler import Sampler
from dreamrec.diffusion.schedules import BetaSchedule
from dreamrec.models.base import ModelConfig, SequentialRecommender, check_sampler_steps, switch_sampler
from dreamrec.nn.denoisers import DenoiserType, MLPDenoiser
from dreamrec.nn.encoders import item_table
from dreamrec.nn.losses import softmax_cross_entropy


class DimeRecConfig(ModelConfig):
    hidden: int = Field(64, ge=1, description="embedding size d of items, interests and the denoiser")
    n_interests: int = Field(4, ge=1, description="K, the number of interests the GEM extracts")
    gem: Literal["model", "rule"] = Field("model", description="model: attentive K interests; rule: the last K items")
    gem_width: int | None = Field(None, ge=1, description="hidden width of the attention MLP (default 4 d)")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the history's embeddings")
    item_init_std: float | None = Field(
        None, gt=0, description="item and position tables start at N(0, std^2); None: std = 1 / sqrt(d), unit-norm rows"
    )
    timesteps: int = Field(100, ge=1, description="T, the number of diffusion steps")
    beta_schedule: BetaSchedule = "linear"
    beta_start: float = Field(1e-4, gt=0, lt=1, description="linear schedule")
    beta_end: float = Field(0.02, gt=0, lt=1, description="linear schedule")
    denoiser: DenoiserType = "mlp2"
    lambda_recon: float = Field(1.0, ge=0, description="lambda, the weight of L_recon")
    mu_ssm: float = Field(1.0, ge=0, description="mu, the weight of L_ssm")
    temperature: float = Field(
        1.0, gt=0, description="tau dividing the logits of L_gem and L_ssm (1: the paper's softmaxes, which have none)"
    )
    n_negatives: int | None = Field(
        128, ge=1, description="negatives I_sample shared by a batch's rows (None: every item, full softmax)"
    )
    sampler: Sampler = "ddpm"
    sampler_steps: int | None = Field(None, ge=1, description="S for ddim/ddpm; None = all T steps")
    ddim_eta: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _steps_fit_T(self) -> "DimeRecConfig":
        check_sampler_steps(self.sampler_steps, self.timesteps)
        if self.gem == "rule" and self.gem_width is not None:
            raise ValueError("gem_width sets the attention MLP of gem 'model'; the rule-based GEM has none")
        return self


def tangent_noise(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The component of ``eps`` [B, d] in the tangent space of the unit sphere at ``x0`` [B, d] (unit rows)."""
    return eps - (eps * x0).sum(-1, keepdim=True) * x0


def geodesic_angle(alphas_cumprod_t: torch.Tensor, eps_norm: torch.Tensor) -> torch.Tensor:
    """``theta_t = arctan(sqrt((1 - abar_t) / abar_t) |eps|)``, the geodesic distance of ``x_t`` from ``e'_a`` for a
    tangent noise of norm ``|eps|`` (Algorithm 1, line 10, our reading): ``~ sqrt(1 - abar_t) |eps|`` (the notes'
    angle) while that is small, rising monotonically in ``t`` and never reaching ``pi / 2``."""
    abar = alphas_cumprod_t.clamp(1e-12, 1.0)
    return torch.atan(((1 - abar) / abar).sqrt() * eps_norm)


def q_sample_sphere(e_a: torch.Tensor, alphas_cumprod_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The forward process on the sphere (Algorithm 1, lines 8-10): ``x_t = exp_{e'_a}[theta_t eps / |eps|]`` with
    ``eps`` [B, d] projected onto the tangent space at the unit rows ``e_a`` = ``e'_a`` [B, d] and ``theta_t``
    [B, 1] = :func:`geodesic_angle`; equivalently ``x_t = L2-Norm(sqrt(abar_t) e'_a + sqrt(1 - abar_t) eps)``,
    DDPM's ``q(x_t | x_0)`` with a tangent Gaussian, mapped onto the sphere as Algorithm 2 maps every update."""
    eps = tangent_noise(e_a, eps)
    eps_norm = eps.norm(dim=-1, keepdim=True)
    direction = eps / eps_norm.clamp_min(1e-12)
    return sphere_exp(e_a, geodesic_angle(alphas_cumprod_t, eps_norm) * direction)


def sphere_exp(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The exponential map of the unit sphere, ``exp_x[v] = cos(|v|) x + sin(|v|) v / |v|``, for a
    tangent ``v`` at ``x`` (``exp_x[0] = x``)."""
    norm = v.norm(dim=-1, keepdim=True)
    direction = v / norm.clamp_min(1e-12)
    return torch.cos(norm) * x + torch.sin(norm) * direction


def sampled_softmax_ce(query: torch.Tensor, table: torch.Tensor, target: torch.Tensor,
                       negatives: torch.Tensor | None, temperature: float = 1.0) -> torch.Tensor:
    """Mean of ``-log(exp(q . e_a / tau) / (exp(q . e_a / tau) + sum_{i-} exp(q . e_i- / tau)))`` over rows
    (``L_gem`` and ``L_ssm`` of Eq. 23; ``tau = temperature``, 1 in the paper): ``query`` [B, d],
    ``table`` [n + 1, d] (row 0 padding), ``target`` [B] in 1..n, ``negatives`` [k] items shared by the rows
    (a negative equal to a row's target is left out of that row), or None for all items (full softmax)."""
    if temperature != 1.0:
        query = query / temperature
    if negatives is None:
        return softmax_cross_entropy(query, table, target)
    pos = (query * table[target]).sum(-1, keepdim=True)
    neg = (query @ table[negatives].T).masked_fill(negatives[None, :] == target[:, None], float("-inf"))
    return -F.log_softmax(torch.cat([pos, neg], dim=1), dim=1)[:, 0].mean()


class DimeRec(SequentialRecommender):
    name: ClassVar[str] = "dimerec"
    Config: ClassVar[type[ModelConfig]] = DimeRecConfig
    batch_mode: ClassVar[Literal["pairs", "seq2seq", "none"]] = "pairs"
    config: DimeRecConfig

    def __init__(self, n_items: int, max_len: int, config: ModelConfig | None = None):
        config = config or DimeRecConfig()
        assert isinstance(config, DimeRecConfig)
        super().__init__(n_items, max_len, config)
        d, K = config.hidden, config.n_interests
        std = config.item_init_std or d**-0.5
        self.item_embedding = item_table(n_items, d, std)
        self.emb_dropout = nn.Dropout(config.dropout)
        if config.gem == "model":
            self.position_embedding = nn.Embedding(max_len, d)
            nn.init.normal_(self.position_embedding.weight, std=std)
            width = config.gem_width or 4 * d
            self.attention = nn.Sequential(nn.Linear(d, width, bias=False), nn.Tanh(), nn.Linear(width, K, bias=False))
        self.denoiser = MLPDenoiser(d, config.denoiser, condition_width=K * d)
        self.scheduler = DiffusionScheduler(
            num_train_timesteps=config.timesteps, beta_schedule=config.beta_schedule, prediction_type="x0",
            beta_start=config.beta_start, beta_end=config.beta_end,
        )
        self.scheduler.set_timesteps(config.sampler_steps, sampler=config.sampler, eta=config.ddim_eta)

    # -- guidance extraction (GEM) --------------------------------------------------------------
    def attention_weights(self, history: torch.Tensor, hp: torch.Tensor) -> torch.Tensor:
        """``A`` [B, N, K]: softmax over the real positions of ``W_2 tanh(W_1 (H + P))`` (zeros for an empty history)."""
        logits = self.attention(hp).masked_fill((history == 0).unsqueeze(-1), float("-inf"))
        return torch.softmax(logits, dim=1).nan_to_num(0.0)

    def interests(self, history: torch.Tensor) -> torch.Tensor:
        """``g^u`` [B, K, d]: the model-based ``A^T (H + P)``, or the rule-based last ``K`` items (zeros
        where the history is shorter)."""
        history = history[:, -self.max_len :]
        K = self.config.n_interests
        if self.config.gem == "rule":
            last = history[:, -K:]
            if last.shape[1] < K:
                last = F.pad(last, (K - last.shape[1], 0))
            return self.item_embedding(last)
        L = history.shape[1]
        positions = torch.arange(self.max_len - L, self.max_len, device=history.device)
        valid = (history > 0).unsqueeze(-1).to(self.item_embedding.weight.dtype)
        hp = self.emb_dropout(self.item_embedding(history) + self.position_embedding(positions)[None]) * valid
        return self.attention_weights(history, hp).transpose(1, 2) @ hp

    # -- training (Algorithm 1) -----------------------------------------------------------------
    def _negatives(self, device: torch.device) -> torch.Tensor | None:
        k = self.config.n_negatives
        return None if k is None else torch.randint(1, self.n_items + 1, (k,), device=device)

    def loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.config
        target = batch.target
        E = self.item_embedding.weight
        g = self.interests(batch.history)  # [B, K, d]
        e_a = E[target]
        negatives = self._negatives(target.device)
        # L_gem: the interest closest to the target, by a sampled softmax
        closest = (g * e_a[:, None]).sum(-1).argmax(1)
        g_u = g[torch.arange(g.shape[0], device=g.device), closest]
        loss = sampled_softmax_ce(g_u, E, target, negatives, cfg.temperature)
        # the DAM on the sphere: x_t moves from e'_a along the geodesic
        x0 = F.normalize(e_a, dim=-1)
        t = self.scheduler.sample_timesteps(x0.shape[0], device=x0.device)
        alphas_cumprod_t = self.scheduler.alphas_cumprod.to(x0)[t, None]
        x_t = q_sample_sphere(x0, alphas_cumprod_t, torch.randn_like(x0))
        x0_hat = F.normalize(self.denoiser(x_t, t, g.flatten(1)), dim=-1)
        if cfg.lambda_recon > 0:
            loss = loss + cfg.lambda_recon * (x0 - x0_hat).square().sum(-1).mean()
        if cfg.mu_ssm > 0:
            loss = loss + cfg.mu_ssm * sampled_softmax_ce(x0_hat, E, target, negatives, cfg.temperature)
        return loss

    # -- reversing (Algorithm 2) ----------------------------------------------------------------
    @torch.no_grad()
    def generate(self, history: torch.Tensor) -> torch.Tensor:
        """The user's next-interest embedding ``e_u = x_0`` [B, d] (unit rows), generated on the sphere."""
        c = self.interests(history).flatten(1)
        c_proj = self.denoiser.project_condition(c)  # the same at every step
        denoise = partial(self.denoiser, c=c, c_proj=c_proj)

        def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return F.normalize(denoise(x_t, t), dim=-1)

        shape = (c.shape[0], self.config.hidden)
        return sample(model_fn, self.scheduler, shape, device=c.device, dtype=c.dtype,
                      project=partial(F.normalize, dim=-1))

    def query(self, history: torch.Tensor) -> torch.Tensor:
        return self.generate(history)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight

    def set_sampler(self, sampler: Sampler | None = None, steps: int | None = None, *, eta: float | None = None) -> None:
        """Change how :meth:`generate` samples (no retraining); see :func:`~dreamrec.models.base.switch_sampler`."""
        switch_sampler(self, sampler, steps, ddim_eta=eta)
