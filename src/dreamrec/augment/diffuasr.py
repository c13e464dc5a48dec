"""DiffuASR (Liu et al., CIKM 2023, "Diffusion Augmentation for Sequential Recommendation"):
generate ``M`` pseudo pre-order items for a training sequence with a guided diffusion model and
prepend them, then train any sequential recommender on the augmented data.

Training (:func:`train_diffuasr`, TRAINING split only): from a sequence ``v_1..v_n`` with ``n > M``,
``S_aug = v_1..v_M`` is the generation target and ``S_raw`` the items after it (at most
``cond_len``, the ones nearest the block). ``x_0 = [E(v_1); ...; E(v_M)] in R^{M x d}`` (Sec. 3.2),
``c = mean_{v in S_raw} E(v)`` (the guidance, Sec. 3.4), and the SU-Net is fitted with the
eps-prediction loss ``||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, c)||^2``; the
condition is dropped to a learned null vector with probability ``p_uncond`` (classifier-free guidance).

Generation (:meth:`DiffuASRGenerator.generate`): for a history, ``c`` is the mean embedding of its
earliest ``cond_len`` items, ``x_T ~ N(0, I)`` runs through the shared sampler with
``(1 + w) eps(x_t, c) - w eps(x_t, null)``, and each of the ``M`` rows of ``x_0`` is rounded to the
item of highest cosine similarity (optionally never an item of the history nor one already chosen).

The item table ``E`` is learned jointly with the denoiser, as in the paper, with two guards. (1) An
eps-predictor has trivial solutions through ``E``: rows shrunk to zero or all equal make ``x_0`` known
and the noise readable from ``x_t`` (the loss then falls to zero while ``E`` says nothing about items;
measured here: unguarded rows reach pairwise cosine 0.85 within 10 epochs). So the table is used
centred and at row norm ``sqrt(d)`` (``item_norm``; unit scale per coordinate like the noise; rounding
is by cosine, so nothing is lost). (2) The eps loss weighs the error on ``x_0`` by
``abar_t / (1 - abar_t)``, about zero at the noise levels where the guidance decides, so it ties ``E``
to the guidance only weakly; a context term ``CE(cos(c, E) / tau, v)`` for ``v in S_aug``
(``context_weight``; an item2vec-like objective) tells each target item apart from all others by its
guidance. On the planted data it is what lets the table learn the topics (see tests/test_diffuasr.py).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from dreamrec.augment.sunet import SUNet, grid_side
from dreamrec.diffusion import ClassifierFreeGuidance, DiffusionScheduler, drop_condition, make_beta_schedule, sample
from dreamrec.diffusion.schedules import BetaSchedule
from dreamrec.errors import ConfigError, DataError


class DiffuASRConfig(BaseModel):
    """Settings of DiffuASR (paper / authors' code defaults where they exist: M=10, d=64, T=1000, linear betas)."""

    model_config = ConfigDict(extra="forbid")

    M: int = Field(10, ge=1, description="items generated and prepended per augmented sequence")
    d: int = Field(64, ge=1, description="item embedding size; a perfect square (reshaped to sqrt(d) x sqrt(d))")
    T: int = Field(1000, ge=1, description="diffusion steps")
    beta_schedule: BetaSchedule = Field("linear", description="noise schedule (dreamrec.diffusion.schedules)")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="first beta of the linear schedule")
    beta_end: float = Field(0.02, gt=0, lt=1, description="last beta of the linear schedule")
    sampler: Literal["ddpm", "ddim"] = Field("ddim", description="reverse process (the authors' code: DDIM, eta 0)")
    sampling_steps: int | None = Field(50, ge=1, description="sampler steps (None = all T; the authors' code uses 5)")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM eta")
    guidance: Literal["free", "none"] = Field(
        "free", description="free: classifier-free guidance with p_uncond / guidance_w; none: conditional model only. "
        "The paper's classifier-guided variant (gradients of a separately trained recommender) is not implemented"
    )
    p_uncond: float = Field(0.1, ge=0, lt=1, description="probability of dropping the guidance in training")
    guidance_w: float = Field(1.0, ge=0, description="guidance strength w: (1 + w) eps(c) - w eps(null)")
    cond_len: int = Field(50, ge=1, description="at most this many items of S_raw (those nearest the block) guide")
    channels: tuple[int, ...] = Field((32, 64), min_length=1, description="SU-Net widths, one per resolution")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the SU-Net residual blocks")
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    embedding_std: float = Field(
        0.02, gt=0, description="std of the item table's initialisation. With item_norm the rows are used at norm "
        "sqrt(d) whatever it is, and it only sets how fast their directions move (Adam's angular step is about "
        "lr / row norm); without item_norm use 1.0, the noise's scale (the authors' code)"
    )
    item_norm: bool = Field(True, description="use the table centred (its mean row removed) and every row at norm "
                            "sqrt(d): guards against the rows shrinking or merging into one")
    context_weight: float = Field(
        0.3, ge=0, description="weight of the context term CE(cos(c, E) / context_tau, v) for v in S_aug: each "
        "generated-position item is told apart from all items by its guidance (guards against collapse and ties "
        "E to the guidance; 0 = the diffusion loss alone, as the paper)"
    )
    context_tau: float = Field(0.1, gt=0, description="temperature of the context term's cosine logits")
    train_windows: Literal["start", "all"] = Field(
        "start", description="Sequences: S_aug is the first M items of each sequence (start, the paper) or every "
        "window of M items followed by at least one more (all). Rows always use the start of each row's window"
    )
    augment_below: int | None = Field(
        None, ge=1, description="augment only training sequences (rows: histories) with fewer items than this "
        "(the short, long-tail users); None = every one"
    )
    augment_min_len: int = Field(1, ge=1, description="never augment a sequence shorter than this (its guidance)")
    exclude_seen: bool = Field(True, description="never generate an item of the sequence or one twice per block")
    row_width: Literal["window", "widen"] = Field(
        "window", description="SampleRows: re-pad to the dataset's window keeping the most recent items (window; "
        "rows whose history already fills it are not augmented) or widen every row by M columns (widen; train "
        "with train.max_len = window + M to see them)"
    )
    generate_batch_size: int = Field(256, ge=1)
    seed: int = 0
    device: str = "cpu"

    @model_validator(mode="after")
    def _check(self) -> DiffuASRConfig:
        grid_side(self.d)  # a perfect square, or a clear ValueError
        if self.sampling_steps is not None and self.sampling_steps > self.T:
            raise ValueError(f"sampling_steps ({self.sampling_steps}) exceeds T ({self.T})")
        if self.guidance == "free" and self.guidance_w > 0 and self.p_uncond == 0:
            raise ValueError("guidance_w > 0 needs p_uncond > 0 (the null condition is never trained otherwise)")
        if any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive, got {list(self.channels)}")
        abar_T = float(torch.prod(1 - make_beta_schedule(self.beta_schedule, self.T, beta_start=self.beta_start,
                                                         beta_end=self.beta_end)))
        if abar_T > 0.1:
            raise ValueError(f"the {self.beta_schedule} schedule with T={self.T} keeps abar_T = {abar_T:.3f} of the "
                             "signal: x_T would not be noise; raise T or beta_end")
        return self


def diffuasr_config(overrides: dict[str, Any] | None = None) -> DiffuASRConfig:
    """A config from ``key: value`` settings, with every problem in one :class:`ConfigError`."""
    try:
        return DiffuASRConfig(**(overrides or {}))
    except ValidationError as e:
        msgs = [f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in e.errors()]
        raise ConfigError("DiffuASR config: " + "; ".join(msgs)) from None


def earliest(histories: np.ndarray, k: int) -> np.ndarray:
    """The earliest ``k`` items of each right-aligned history, left-aligned and zero-padded: ``[N, k]``."""
    h = np.asarray(histories, dtype=np.int64)
    n, w = h.shape
    if w == 0:
        return np.zeros((n, k), dtype=np.int64)
    idx = (w - (h != 0).sum(1))[:, None] + np.arange(k)[None, :]  # from the first item on
    return np.where(idx < w, h[np.arange(n)[:, None], np.minimum(idx, w - 1)], 0)


class DiffuASRGenerator(nn.Module):
    """The item table ``E``, the null guidance and the SU-Net; :meth:`loss` trains, :meth:`generate` augments."""

    def __init__(self, n_items: int, config: DiffuASRConfig):
        super().__init__()
        self.n_items, self.config = n_items, config
        d = config.d
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=config.embedding_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.null_condition = nn.Parameter(torch.zeros(d))
        self.denoiser = SUNet(M=config.M, d=d, channels=tuple(config.channels), dropout=config.dropout)
        self.scheduler = DiffusionScheduler(num_train_timesteps=config.T, beta_schedule=config.beta_schedule,
                                            prediction_type="epsilon", beta_start=config.beta_start,
                                            beta_end=config.beta_end)
        self.loss_history: list[float] = []  # mean denoising loss per training epoch
        self.n_train_pairs = 0

    @property
    def device(self) -> torch.device:
        return self.null_condition.device

    def table(self) -> torch.Tensor:
        """``E`` as used, ``[n_items + 1, d]`` (row 0, padding, is zero): rows at norm ``sqrt(d)`` with ``item_norm``."""
        w = self.item_embedding.weight
        if self.config.item_norm:
            w = w - w[1:].mean(0, keepdim=True)
            w = F.normalize(w, dim=-1) * math.sqrt(self.config.d)
        return w * (torch.arange(w.shape[0], device=w.device) > 0)[:, None]

    def condition(self, raw: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """``c`` = mean embedding of the non-zero items of each row of ``raw`` [B, L]; the null vector for empty rows."""
        table = self.table() if table is None else table
        n = (raw > 0).sum(1, keepdim=True)
        c = table[raw].sum(1) / n.clamp(min=1)
        return torch.where(n > 0, c, self.null_condition.to(c.dtype))

    def loss(self, aug: torch.Tensor, raw: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The eps-prediction loss on ``x_0 = E(S_aug)`` ([B, M] ids) guided by ``S_raw`` ([B, L], 0 = none),
        plus the context term; returns (total, parts)."""
        cfg = self.config
        table = self.table()
        x0 = table[aug]  # [B, M, d]
        c_raw = self.condition(raw, table)
        c = drop_condition(c_raw, self.null_condition, cfg.p_uncond) if cfg.guidance == "free" else c_raw
        t = self.scheduler.sample_timesteps(aug.shape[0], device=aug.device)
        eps = torch.randn_like(x0)
        mse = F.mse_loss(self.denoiser(self.scheduler.add_noise(x0, eps, t), t, c), eps)
        total, parts = mse, {"mse": mse.item()}
        if cfg.context_weight > 0:
            has = (raw > 0).any(1)
            logits = F.normalize(c_raw[has], dim=-1) @ F.normalize(table[1:], dim=-1).T / cfg.context_tau
            ctx = -logits.log_softmax(-1).gather(1, aug[has] - 1).mean()  # CE of each of the M items, [B, n] once
            total = total + cfg.context_weight * ctx
            parts["context"] = ctx.item()
        return total, parts

    @torch.no_grad()
    def generate(self, histories: np.ndarray | torch.Tensor, *, exclude_seen: bool | None = None,
                 seed: int | None = None) -> np.ndarray:
        """``[N, M]`` item ids (1..n_items) to PRECEDE each right-aligned history ``[N, L]`` (column ``M - 1``
        is the item right before the history). Seeded (``seed``, default the config's) without touching
        torch's global generator; ``exclude_seen`` (default the config's) forbids the history's items and
        repeats within a block, falling back to any item only where nothing else is left."""
        cfg = self.config
        exclude = cfg.exclude_seen if exclude_seen is None else exclude_seen
        h = np.asarray(histories.cpu() if isinstance(histories, torch.Tensor) else histories, dtype=np.int64)
        if h.ndim != 2:
            raise ValueError(f"histories must be [N, L], got shape {h.shape}")
        if h.size and (h.min() < 0 or h.max() > self.n_items):
            raise DataError(f"history item ids must lie in 0..{self.n_items} (0 = padding)")
        was_training = self.training
        self.eval()
        self.scheduler.set_timesteps(cfg.sampling_steps, sampler=cfg.sampler, eta=cfg.eta)
        table = self.table()
        unit = F.normalize(table[1:], dim=-1)
        out = np.zeros((len(h), cfg.M), dtype=np.int64)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed if seed is None else seed)
            for s in range(0, len(h), cfg.generate_batch_size):
                rows = torch.from_numpy(h[s : s + cfg.generate_batch_size]).to(self.device)
                c = self.condition(torch.from_numpy(earliest(rows.cpu().numpy(), cfg.cond_len)).to(self.device), table)
                w = cfg.guidance_w if cfg.guidance == "free" else 0.0
                model_fn = ClassifierFreeGuidance(self.denoiser, c, self.null_condition, w)
                x0 = sample(model_fn, self.scheduler, (len(rows), cfg.M, cfg.d), device=self.device)
                out[s : s + len(rows)] = self._round(x0, unit, rows if exclude else None)
        self.train(was_training)
        return out

    def _round(self, x0: torch.Tensor, unit: torch.Tensor, seen: torch.Tensor | None) -> np.ndarray:
        """Cosine rounding of each of the M rows, the position nearest the history first."""
        B, M, _ = x0.shape
        ids = torch.zeros(B, M, dtype=torch.long, device=x0.device)
        banned = None
        if seen is not None:
            banned = torch.zeros(B, self.n_items + 1, dtype=torch.bool, device=x0.device)
            banned.scatter_(1, seen, True)
        for m in reversed(range(M)):
            scores = F.normalize(x0[:, m], dim=-1) @ unit.T  # [B, n_items]
            if banned is not None:
                masked = scores.masked_fill(banned[:, 1:], float("-inf"))
                full = torch.isinf(masked).all(1, keepdim=True)
                scores = torch.where(full, scores, masked)
            ids[:, m] = scores.argmax(1) + 1
            if banned is not None:
                banned[torch.arange(B, device=x0.device), ids[:, m]] = True
        return ids.cpu().numpy()
