"""Forward process, posterior and samplers (DDPM ancestral, DDIM, one-step) for any denoiser.

Timestep convention: a timestep is a 0-based index ``t in {0..T-1}``; index ``t`` is the paper's
step ``t + 1`` (so ``alphas_cumprod[t]`` is the paper's ``bar alpha_{t+1}``), as in diffusers and in
DreamRec's code. The "previous" step of index 0 is the clean data, with ``alphas_cumprod = 1``.

The scheduler is model-agnostic (diffusers style): it owns ``num_train_timesteps``,
``beta_schedule`` and ``prediction_type`` and has three verbs,

* :meth:`DiffusionScheduler.add_noise` (``q_sample``, training),
* :meth:`DiffusionScheduler.set_timesteps` (choose sampler and inference grid),
* :meth:`DiffusionScheduler.step` (one reverse update from the network output),

and :func:`sample` is the short pipeline loop around a callable ``model_fn(x_t, t) -> output``.
The samplers only differ in the grid of timesteps they visit and the update they apply, and all
of them are exact for a perfect x0-predictor: the last update returns the predicted ``x_0``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from dreamrec import keyed_noise
from dreamrec.diffusion.schedules import BetaSchedule, make_beta_schedule

PredictionType = Literal["x0", "epsilon"]
Sampler = Literal["ddpm", "ddim", "onestep"]
ReverseVariance = Literal["posterior", "beta"]


def _gather(values: torch.Tensor, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped to broadcast against ``x`` ([B] or scalar ``t`` -> [B, 1, ...] or [1, ...])."""
    v = values.to(device=x.device, dtype=x.dtype)
    if isinstance(t, int) or (isinstance(t, torch.Tensor) and t.ndim == 0):
        return v[int(t)].reshape((1,) * x.ndim)
    return v[t.to(x.device)].reshape(t.shape[0], *((1,) * (x.ndim - 1)))


def inference_timesteps(T: int, num_steps: int) -> torch.Tensor:
    """Descending grid of ``num_steps`` indices in ``[0, T-1]`` that always starts at ``T-1``.

    ``t_i = ceil((i + 1) T / S) - 1`` for ``i = 0..S-1`` (diffusers' "trailing" spacing), reversed:
    ``S = T`` gives every step ``T-1, ..., 0``; ``S = 1`` gives ``[T-1]`` (the one-step sampler).
    """
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.long)
    t = torch.div((i + 1) * T + num_steps - 1, num_steps, rounding_mode="floor") - 1
    return t.flip(0)


class DiffusionScheduler:
    """Gaussian diffusion with precomputed coefficients (computed in float64, stored as float32).

    Attributes (all ``[T]``): ``betas``, ``alphas = 1 - betas``, ``alphas_cumprod`` (``bar alpha``),
    ``alphas_cumprod_prev`` (``bar alpha_{t-1}``, 1 at the first step), ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``, ``posterior_mean_coef1``, ``posterior_mean_coef2`` and
    ``posterior_variance`` of ``q(x_{t-1} | x_t, x_0)`` (DDPM Eq. 6-7; DreamRec Eq. 7):

        mean = coef1 * x_0 + coef2 * x_t,
        coef1 = beta_t sqrt(bar alpha_{t-1}) / (1 - bar alpha_t),
        coef2 = (1 - bar alpha_{t-1}) sqrt(alpha_t) / (1 - bar alpha_t),
        variance = beta_t (1 - bar alpha_{t-1}) / (1 - bar alpha_t).

    ``variance`` picks the DDPM sampler's reverse variance ``sigma_t^2`` (Ho et al. 2020, Sec. 3.2):
    ``"posterior"`` = the posterior variance above (``beta~_t``, the default), ``"beta"`` = ``beta_t``
    itself (DDPM's "large" choice; the DiffuRec and DiffuRecSys code, ``diffurec.py``
    ``p_mean_variance``: ``log(append(posterior_variance[1], betas[1:]))``, no noise at ``t = 0``).
    With a respaced grid (fewer steps than ``T``) ``beta_t`` is that of the composite step.
    DDIM and the one-step sampler ignore it.
    """

    def __init__(
        self,
        *,
        num_train_timesteps: int = 1000,
        beta_schedule: BetaSchedule = "exp",
        prediction_type: PredictionType = "x0",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        betas: torch.Tensor | None = None,
        variance: ReverseVariance = "posterior",
    ):
        if variance not in ("posterior", "beta"):
            raise ValueError(f"variance must be 'posterior' or 'beta', got {variance!r}")
        self.variance: ReverseVariance = variance
        if prediction_type not in ("x0", "epsilon"):
            raise ValueError(f"prediction_type must be 'x0' or 'epsilon', got {prediction_type!r}")
        if betas is None:
            betas = make_beta_schedule(
                beta_schedule,
                num_train_timesteps,
                beta_start=beta_start,
                beta_end=beta_end,
                beta_min=beta_min,
                beta_max=beta_max,
            )
        betas = torch.as_tensor(betas, dtype=torch.float64)
        self.num_train_timesteps = int(betas.shape[0])
        self.beta_schedule = beta_schedule
        self.prediction_type: PredictionType = prediction_type

        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self._abar64 = alphas_cumprod  # float64 copy for the sampler coefficients
        f32 = torch.float32
        self.betas = betas.to(f32)
        self.alphas = alphas.to(f32)
        self.alphas_cumprod = alphas_cumprod.to(f32)
        self.alphas_cumprod_prev = alphas_cumprod_prev.to(f32)
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().to(f32)
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt().to(f32)
        self.posterior_mean_coef1 = (betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)).to(f32)
        self.posterior_mean_coef2 = ((1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod)).to(f32)
        self.posterior_variance = (betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)).to(f32)

        self.set_timesteps()

    # -- training --------------------------------------------------------------------------
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``q_sample``: ``x_t = sqrt(bar alpha_t) x_0 + sqrt(1 - bar alpha_t) eps`` (DDPM Eq. 4;
        DreamRec Algorithm 1, line 7). ``t`` is ``[B]`` (or a scalar) of 0-based indices."""
        return _gather(self.sqrt_alphas_cumprod, t, x0) * x0 + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    q_sample = add_noise

    def sample_timesteps(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """``t ~ Uniform{1..T}`` (Algorithm 1, line 5), as 0-based indices, from torch's global RNG."""
        return torch.randint(0, self.num_train_timesteps, (batch_size,), device=device)

    # -- parameterisations -------------------------------------------------------------------
    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """``x_0 = (x_t - sqrt(1 - bar alpha_t) eps) / sqrt(bar alpha_t)``."""
        return (x_t - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / _gather(self.sqrt_alphas_cumprod, t, x_t)

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor) -> torch.Tensor:
        """``eps = (x_t - sqrt(bar alpha_t) x_0) / sqrt(1 - bar alpha_t)`` (DreamRec footnote 3 / Appendix A)."""
        return (x_t - _gather(self.sqrt_alphas_cumprod, t, x_t) * x0) / _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t)

    def to_x0(self, model_output: torch.Tensor, t: torch.Tensor | int, x_t: torch.Tensor) -> torch.Tensor:
        """The network output as a prediction of ``x_0`` whatever ``prediction_type`` is."""
        if self.prediction_type == "x0":
            return model_output
        return self.predict_x0_from_eps(x_t, t, model_output)

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``q(x_{t-1} | x_t, x_0)`` (DDPM Eq. 6-7, DreamRec Eq. 7)."""
        mean = _gather(self.posterior_mean_coef1, t, x_t) * x0 + _gather(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, _gather(self.posterior_variance, t, x_t)

    # -- sampling ----------------------------------------------------------------------------
    def set_timesteps(
        self, num_inference_steps: int | None = None, *, sampler: Sampler = "ddpm", eta: float = 0.0
    ) -> None:
        """Choose the sampler and its grid ``self.timesteps`` (descending 0-based indices).

        * ``ddpm``: ancestral sampling, DreamRec Algorithm 2. With ``num_inference_steps = T``
          (the default) it visits every step and uses the posterior of ``q(x_{t-1} | x_t, x_0)``;
          with fewer steps it uses the posterior between consecutive grid points (respacing).
        * ``ddim``: Song et al. (2021) Eq. 12 with ``S = num_inference_steps`` and ``eta``.
        * ``onestep``: ``x_0 = f(x_T, c, T)``, a single network call (``num_inference_steps`` ignored).
        """
        T = self.num_train_timesteps
        if sampler not in ("ddpm", "ddim", "onestep"):
            raise ValueError(f"unknown sampler {sampler!r}; expected ddpm, ddim or onestep")
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:  # eta > 1 would make 1 - abar_prev - sigma^2 negative (wrong marginals)
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        S = 1 if sampler == "onestep" else (T if num_inference_steps is None else num_inference_steps)
        # everything is computed into locals first, so a failing call leaves the scheduler untouched
        timesteps = inference_timesteps(T, S)
        # coefficients of x_{t_prev} per grid point, in float64
        abar = self._abar64[timesteps]
        abar_prev = torch.cat([self._abar64[timesteps[1:]], torch.ones(1, dtype=torch.float64)])
        prev = dict(zip(timesteps.tolist(), [*timesteps[1:].tolist(), -1]))
        index = {t: i for i, t in enumerate(timesteps.tolist())}
        c_eps: torch.Tensor | None = None
        c_xt: torch.Tensor | None = None
        if sampler == "ddim":
            # sigma_t(eta) = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev)   (DDIM Eq. 16)
            sigma2 = eta**2 * (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)
            c_x0 = abar_prev.sqrt()
            # >= 0 for eta <= 1 (sigma^2 <= posterior variance <= 1 - abar_prev); the clamp only
            # absorbs float64 rounding at eta = 1
            c_eps = (1 - abar_prev - sigma2).clamp(min=0).sqrt()
            sigma = sigma2.sqrt()
        else:  # ddpm / onestep: posterior between consecutive grid points (equals DDPM's for stride 1)
            beta_step = 1 - abar / abar_prev  # beta of the composite step t_prev -> t
            c_x0 = beta_step * abar_prev.sqrt() / (1 - abar)
            c_xt = (1 - abar_prev) * (1 - beta_step).sqrt() / (1 - abar)
            if self.variance == "beta":  # sigma_t^2 = beta_t, none at the last step (t = 0)
                sigma = torch.cat([beta_step[:-1].sqrt(), torch.zeros(1, dtype=torch.float64)])
            else:
                sigma = (beta_step * (1 - abar_prev) / (1 - abar)).sqrt()
        # commit: the other sampler's coefficient is cleared (None) so a stale value cannot be read
        self.sampler: Sampler = sampler
        self.eta = eta
        self.timesteps = timesteps
        self._prev = prev
        self._index = index
        self._c_x0 = c_x0
        self._c_eps = c_eps
        self._c_xt = c_xt
        self._sigma = sigma

    def step_coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a, b, sigma)`` [S] in float64, grid order: :meth:`step` at the ``i``-th grid point is
        ``a_i x_t + b_i x0_hat + sigma_i z`` for an x0-prediction (DDPM: ``a = coef2``, ``b = coef1``; DDIM:
        ``eps_hat = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar)`` folded in; one-step: ``a = 0``, ``b = 1``).
        Used by :mod:`dreamrec.diffusion.affine_chain`."""
        if self.prediction_type != "x0":
            raise ValueError("step_coefficients: the update is affine in (x_t, x0_hat) for x0-prediction only")
        if self.sampler == "ddim":
            assert self._c_eps is not None
            abar = self._abar64[self.timesteps]
            a = self._c_eps / (1 - abar).sqrt()
            b = self._c_x0 - a * abar.sqrt()
        else:
            assert self._c_xt is not None
            a, b = self._c_xt, self._c_x0
        return a.clone(), b.clone(), self._sigma.clone()

    def previous_timestep(self, t: int) -> int:
        """The grid point after ``t`` (``-1`` = clean data)."""
        return self._prev[int(t)]

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        sample: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One reverse update ``x_t -> x_{t_prev}`` from the network output at grid point ``t``.

        DDPM (Algorithm 2, line 7): ``x_{t-1} = coef1 x0_hat + coef2 x_t + sigma_t z`` with
        ``sigma_t^2`` the posterior variance and ``z = 0`` at the last step (line 5).
        DDIM: ``x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z``
        with ``eps_hat`` derived from ``x0_hat``. ``noise`` defaults to :func:`dreamrec.keyed_noise.randn_like`
        (the global generator, or per-row keyed noise inside ``keyed_rows``) and is only drawn when ``sigma > 0``.
        """
        i = self._index[int(t)]
        x0_hat = self.to_x0(model_output, t, sample)
        dtype = sample.dtype
        if self.sampler == "ddim":
            assert self._c_eps is not None
            eps_hat = self.predict_eps_from_x0(sample, t, x0_hat)
            x_prev = self._c_x0[i].to(dtype) * x0_hat + self._c_eps[i].to(dtype) * eps_hat
        else:
            assert self._c_xt is not None
            x_prev = self._c_x0[i].to(dtype) * x0_hat + self._c_xt[i].to(dtype) * sample
        sigma = float(self._sigma[i])
        if sigma > 0:
            z = keyed_noise.randn_like(sample) if noise is None else noise
            x_prev = x_prev + sigma * z
        return x_prev


def sample(
    model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: DiffusionScheduler,
    shape: tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    x_T: torch.Tensor | None = None,
    mean_only: bool = False,
    project: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The pipeline: ``x_T ~ N(0, I)``; for ``t`` in ``scheduler.timesteps``: ``x <- step(model_fn(x, t), t, x)``.

    ``model_fn(x_t, t)`` receives ``t`` as a ``[1]`` long tensor, the step shared by every row
    (networks broadcast it, so a time embedding is computed once per step, not per row); call
    ``scheduler.set_timesteps`` first to choose the sampler. Noise comes from :mod:`dreamrec.keyed_noise` (torch's global generator; per-row keys inside ``keyed_rows``).
    ``mean_only`` drops the ``sigma z`` term of every step: with ``ddpm`` each update is then the posterior
    mean ``mu(x_t, x0_hat)`` (DiffRec's inference, Algorithm 2). ``project`` maps ``x_T`` and every update
    back onto a manifold (DimeRec's ``L2-Norm``: the unit sphere).
    """
    x = keyed_noise.randn(shape, device=device, dtype=dtype) if x_T is None else x_T
    if project is not None:
        x = project(x)
    for t in scheduler.timesteps.tolist():
        t_step = torch.full((1,), t, device=x.device, dtype=torch.long)
        x = scheduler.step(model_fn(x, t_step), t, x, noise=torch.zeros_like(x) if mean_only else None)
        if project is not None:
            x = project(x)
    return x
