"""The diffusion toolkit: schedules and coefficients by hand, q_sample, posterior, samplers, guidance."""
from __future__ import annotations

import math

import pytest
import torch

from dreamrec.diffusion import (
    ClassifierFreeGuidance,
    DiffusionScheduler,
    drop_condition,
    guided_prediction,
    inference_timesteps,
    make_beta_schedule,
    sample,
)
from dreamrec.nn.denoisers import MLPDenoiser, SinusoidalTimeEmbedding


def hand_scheduler() -> DiffusionScheduler:
    # linear schedule, T = 3: betas 0.1, 0.2, 0.3
    return DiffusionScheduler(num_train_timesteps=3, beta_schedule="linear", beta_start=0.1, beta_end=0.3)


def test_coefficients_match_hand_computation() -> None:
    s = hand_scheduler()
    f = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    torch.testing.assert_close(s.betas, f([0.1, 0.2, 0.3]))
    torch.testing.assert_close(s.alphas_cumprod, f([0.9, 0.72, 0.504]))
    torch.testing.assert_close(s.alphas_cumprod_prev, f([1.0, 0.9, 0.72]))
    torch.testing.assert_close(s.sqrt_one_minus_alphas_cumprod, f([math.sqrt(0.1), math.sqrt(0.28), math.sqrt(0.496)]))
    # variance = beta_t (1 - abar_{t-1}) / (1 - abar_t)
    torch.testing.assert_close(s.posterior_variance, f([0.0, 0.2 * 0.1 / 0.28, 0.3 * 0.28 / 0.496]))
    # coef1 = beta_t sqrt(abar_{t-1}) / (1 - abar_t); coef2 = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)
    torch.testing.assert_close(s.posterior_mean_coef1, f([1.0, 0.2 * math.sqrt(0.9) / 0.28, 0.3 * math.sqrt(0.72) / 0.496]))
    torch.testing.assert_close(s.posterior_mean_coef2, f([0.0, 0.1 * math.sqrt(0.8) / 0.28, 0.28 * math.sqrt(0.7) / 0.496]))


def test_exp_schedule_is_the_discretised_vp_sde() -> None:
    betas = make_beta_schedule("exp", 2, beta_min=0.1, beta_max=10.0)
    expected = [1 - math.exp(-0.05 - 9.9 * 1 / 8), 1 - math.exp(-0.05 - 9.9 * 3 / 8)]
    torch.testing.assert_close(betas, torch.tensor(expected, dtype=torch.float64))
    for T in (4, 50, 500):
        abar_T = torch.cumprod(1 - make_beta_schedule("exp", T), 0)[-1]
        assert float(abar_T) == pytest.approx(math.exp(-(0.1 + 10.0) / 2), rel=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine", "sqrt", "exp"])
def test_every_schedule_is_valid(name: str) -> None:
    betas = make_beta_schedule(name, 200)
    assert betas.shape == (200,) and bool(((betas > 0) & (betas < 1)).all())
    abar = torch.cumprod(1 - betas, 0)
    assert bool((abar[1:] < abar[:-1]).all())  # strictly more noise at every step
    if name != "linear":  # the others reach (nearly) pure noise
        assert float(abar[-1]) < 0.01
    with pytest.raises(ValueError):
        make_beta_schedule("nope", 10)  # type: ignore[arg-type]


def test_q_sample_statistics() -> None:
    torch.manual_seed(0)
    s = DiffusionScheduler(num_train_timesteps=10, beta_schedule="exp")
    x0 = torch.tensor([2.0, -1.0, 0.5])
    n = 200_000
    t = torch.full((n,), 4)
    x_t = s.add_noise(x0.expand(n, 3), torch.randn(n, 3), t)
    abar = float(s.alphas_cumprod[4])
    torch.testing.assert_close(x_t.mean(0), math.sqrt(abar) * x0, atol=0.01, rtol=0)
    torch.testing.assert_close(x_t.var(0), torch.full((3,), 1 - abar), atol=0.01, rtol=0)
    # scalar t and the epsilon <-> x0 conversions are inverse to each other
    eps = torch.randn(5, 3)
    xt = s.q_sample(x0.expand(5, 3), eps, 7)
    torch.testing.assert_close(s.predict_eps_from_x0(xt, 7, x0.expand(5, 3)), eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.predict_x0_from_eps(xt, 7, eps), x0.expand(5, 3), atol=1e-5, rtol=1e-5)


def test_posterior_is_bayes_rule() -> None:
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): multiply the two Gaussians by hand."""
    s = hand_scheduler()
    x0, x_t, t = torch.tensor([[1.5]]), torch.tensor([[-0.4]]), 2
    beta, alpha, abar_prev = 0.3, 0.7, 0.72
    precision = 1 / (1 - abar_prev) + alpha / beta
    mean = (math.sqrt(abar_prev) * 1.5 / (1 - abar_prev) + math.sqrt(alpha) * -0.4 / beta) / precision
    got_mean, got_var = s.q_posterior(x0, x_t, torch.tensor([t]))
    assert float(got_mean) == pytest.approx(mean, rel=1e-5)
    assert float(got_var) == pytest.approx(1 / precision, rel=1e-5)


def test_inference_grid() -> None:
    assert inference_timesteps(10, 10).tolist() == list(range(9, -1, -1))
    assert inference_timesteps(10, 3).tolist() == [9, 6, 3]
    assert inference_timesteps(10, 1).tolist() == [9]
    with pytest.raises(ValueError):
        inference_timesteps(10, 11)


SAMPLERS = [
    ("ddpm", None, 0.0),
    ("ddpm", 7, 0.0),
    ("ddim", 10, 0.0),
    ("ddim", 50, 0.0),
    ("ddim", 13, 0.7),
    ("onestep", None, 0.0),
]


@pytest.mark.parametrize("sampler,steps,eta", SAMPLERS)
@pytest.mark.parametrize("schedule", ["exp", "linear", "cosine"])
def test_perfect_x0_predictor_returns_x0(sampler: str, steps: int | None, eta: float, schedule: str) -> None:
    torch.manual_seed(1)
    s = DiffusionScheduler(num_train_timesteps=50, beta_schedule=schedule)
    s.set_timesteps(steps, sampler=sampler, eta=eta)  # type: ignore[arg-type]
    x0 = torch.randn(4, 8)
    calls: list[torch.Tensor] = []

    def perfect(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return x0.clone()

    out = sample(perfect, s, (4, 8))
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=1e-6)
    assert len(calls) == len(s.timesteps) == {"onestep": 1}.get(sampler, steps or 50)
    assert int(calls[0]) == 49  # every sampler starts from pure noise at step T


def test_ddpm_step_is_algorithm_2() -> None:
    s = hand_scheduler()
    s.set_timesteps()
    x_t, x0_hat, z = torch.tensor([[0.3]]), torch.tensor([[1.0]]), torch.tensor([[0.5]])
    for t in (2, 1):
        expected = s.posterior_mean_coef1[t] * x0_hat + s.posterior_mean_coef2[t] * x_t + s.posterior_variance[t].sqrt() * z
        torch.testing.assert_close(s.step(x0_hat, t, x_t, noise=z), expected)
    # the last step adds no noise (z = 0 when t = 1 in the paper's numbering)
    torch.testing.assert_close(s.step(x0_hat, 0, x_t, noise=z), x0_hat)


def test_ddim_step_by_hand() -> None:
    s = hand_scheduler()
    s.set_timesteps(3, sampler="ddim", eta=0.0)
    x_t, x0_hat = torch.tensor([[0.3]]), torch.tensor([[1.0]])
    eps = (0.3 - math.sqrt(0.504) * 1.0) / math.sqrt(0.496)
    expected = math.sqrt(0.72) * 1.0 + math.sqrt(1 - 0.72) * eps
    assert float(s.step(x0_hat, 2, x_t)) == pytest.approx(expected, rel=1e-5)


def test_epsilon_prediction_type() -> None:
    s = DiffusionScheduler(num_train_timesteps=20, beta_schedule="cosine", prediction_type="epsilon")
    s.set_timesteps(5, sampler="ddim")
    x0 = torch.randn(3, 4)

    def perfect_eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return s.predict_eps_from_x0(x_t, int(t[0]), x0)

    torch.testing.assert_close(sample(perfect_eps, s, (3, 4)), x0, atol=1e-4, rtol=1e-4)


# -- guidance ---------------------------------------------------------------------------------


class CountingDenoiser(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x_t.shape[0])
        return 0.5 * x_t + c * (1 + t.float()[:, None])


def test_guidance_w0_is_the_conditional_model() -> None:
    f = CountingDenoiser()
    x, t, c, null = torch.randn(5, 3), torch.randint(0, 9, (5,)), torch.randn(5, 3), torch.randn(3)
    torch.testing.assert_close(guided_prediction(f, x, t, c, null, 0.0), f(x, t, c), rtol=0, atol=0)
    torch.testing.assert_close(ClassifierFreeGuidance(f, c, null, 0.0)(x, t), f(x, t, c), rtol=0, atol=0)


def test_guidance_is_one_batched_call() -> None:
    f = CountingDenoiser()
    x, t, c, null = torch.randn(5, 3), torch.randint(0, 9, (5,)), torch.randn(5, 3), torch.randn(3)
    w = 2.0
    expected = (1 + w) * f(x, t, c) - w * f(x, t, null.expand(5, 3))
    f.batch_sizes.clear()
    torch.testing.assert_close(guided_prediction(f, x, t, c, null, w), expected)
    assert f.batch_sizes == [10]
    f.batch_sizes.clear()
    torch.testing.assert_close(ClassifierFreeGuidance(f, c, null, w)(x, t), expected)
    assert f.batch_sizes == [10]
    # in a sampling loop: exactly one call of 2B rows per step
    s = DiffusionScheduler(num_train_timesteps=12, beta_schedule="exp")
    s.set_timesteps(4, sampler="ddim")
    f.batch_sizes.clear()
    sample(ClassifierFreeGuidance(f, c, null, w), s, (5, 3))
    assert f.batch_sizes == [10] * 4


def test_drop_condition_rate() -> None:
    torch.manual_seed(0)
    c, null = torch.ones(20_000, 4), torch.zeros(4)
    dropped = (drop_condition(c, null, 0.1) == 0).all(1).float().mean()
    assert float(dropped) == pytest.approx(0.1, abs=0.01)
    assert torch.equal(drop_condition(c, null, 0.0), c)


# -- denoisers --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mlp1", "mlp2"])
def test_mlp_denoiser_equals_linear_over_concat(kind: str) -> None:
    torch.manual_seed(0)
    f = MLPDenoiser(6, kind)  # type: ignore[arg-type]
    x, c, t = torch.randn(4, 6), torch.randn(4, 6), torch.tensor([3, 3, 3, 3])
    tau = f.time_embedding(t)
    h = f.fc_in(torch.cat([x, c, tau], dim=1))
    ref = h if kind == "mlp1" else f.fc_out(torch.nn.functional.gelu(h))
    torch.testing.assert_close(f(x, t, c), ref)
    torch.testing.assert_close(f(x, t[:1], c), ref)  # a shared [1] step broadcasts
    assert f(x, t, c).shape == (4, 6)


def test_sinusoidal_time_embedding_any_size() -> None:
    for dim in (1, 2, 7, 64):
        e = SinusoidalTimeEmbedding(dim)(torch.arange(5))
        assert e.shape == (5, dim) and torch.isfinite(e).all()


# -- the middle of the samplers, the training t range, failed switches ---------------------------


@pytest.mark.parametrize("schedule", ["exp", "linear", "cosine"])
def test_deterministic_ddim_keeps_eps_at_every_step(schedule: str) -> None:
    """eta = 0 with a perfect x0-predictor: starting from x_T = q(x0, eps, T-1), every intermediate
    x_{t_prev} is exactly q(x0, eps, t_prev) (the same eps), not only the final x0."""
    torch.manual_seed(2)
    s = DiffusionScheduler(num_train_timesteps=20, beta_schedule=schedule)
    s.set_timesteps(5, sampler="ddim", eta=0.0)
    assert s.timesteps.tolist() == [19, 15, 11, 7, 3]
    x0, eps = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    x = s.q_sample(x0, eps, 19)
    visited = []
    for t in s.timesteps.tolist():
        x = s.step(x0.clone(), t, x)
        t_prev = s.previous_timestep(t)
        visited.append(t_prev)
        expected = x0 if t_prev < 0 else s.q_sample(x0, eps, t_prev)
        torch.testing.assert_close(x, expected, atol=1e-5, rtol=1e-5)
    assert visited == [15, 11, 7, 3, -1]


@pytest.mark.parametrize("schedule", ["exp", "linear", "cosine", "sqrt"])
def test_respaced_ddpm_equals_ddim_eta_1(schedule: str) -> None:
    """DDPM on a 7-step grid (posterior between grid points) is DDIM with eta = 1 on the same grid:
    same means, same sigmas, same noise draws -> the same trajectory for an imperfect network."""
    s = DiffusionScheduler(num_train_timesteps=50, beta_schedule=schedule)

    def net(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # an imperfect x0-predictor
        return 0.6 * x_t + 0.01 * t.float() - 0.3

    out = {}
    for sampler, eta in (("ddpm", 0.0), ("ddim", 1.0)):
        s.set_timesteps(7, sampler=sampler, eta=eta)  # type: ignore[arg-type]
        torch.manual_seed(3)
        out[sampler] = sample(net, s, (5, 6), dtype=torch.float64)
        torch.manual_seed(3)
        x, xs = torch.randn(5, 6, dtype=torch.float64), []
        for t in s.timesteps.tolist():  # the intermediates agree too
            x = s.step(net(x, torch.tensor([t])), t, x)
            xs.append(x)
        out[sampler + "_path"] = torch.stack(xs)
    torch.testing.assert_close(out["ddpm"], out["ddim"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["ddpm_path"], out["ddim_path"], atol=1e-5, rtol=1e-5)


def test_ddim_sigma_by_hand_at_eta_half() -> None:
    s = hand_scheduler()  # abar = 0.9, 0.72, 0.504
    s.set_timesteps(3, sampler="ddim", eta=0.5)
    x_t, x0_hat, z = torch.tensor([[0.3]]), torch.tensor([[1.0]]), torch.tensor([[0.8]])
    for t, abar, abar_prev in ((2, 0.504, 0.72), (1, 0.72, 0.9)):
        sigma = 0.5 * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        eps = (0.3 - math.sqrt(abar) * 1.0) / math.sqrt(1 - abar)
        expected = math.sqrt(abar_prev) * 1.0 + math.sqrt(1 - abar_prev - sigma**2) * eps + sigma * 0.8
        assert float(s.step(x0_hat, t, x_t, noise=z)) == pytest.approx(expected, rel=1e-5)
        assert float(s.step(x0_hat, t, x_t, noise=z) - s.step(x0_hat, t, x_t, noise=0 * z)) == pytest.approx(
            sigma * 0.8, rel=1e-5
        )
    # t = 2: sigma = 0.5 sqrt(0.28 / 0.496) sqrt(1 - 0.7) = 0.20577...
    assert float(s._sigma[0]) == pytest.approx(0.5 * math.sqrt(0.28 / 0.496 * 0.3), rel=1e-9)
    assert float(s.step(x0_hat, 0, x_t, noise=z)) == pytest.approx(1.0)  # the last step adds no noise


def test_eta_outside_unit_interval_is_rejected() -> None:
    s = DiffusionScheduler(num_train_timesteps=10)
    s.set_timesteps(5, sampler="ddim", eta=1.0)  # the boundary is fine
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=str(bad)):
            s.set_timesteps(5, sampler="ddim", eta=bad)


def test_sample_timesteps_covers_exactly_0_to_T_minus_1() -> None:
    torch.manual_seed(0)
    s = DiffusionScheduler(num_train_timesteps=20)
    t = s.sample_timesteps(20_000)
    assert t.dtype == torch.long and set(t.tolist()) == set(range(20))
    counts = torch.bincount(t, minlength=20).float() / 20_000
    torch.testing.assert_close(counts, torch.full((20,), 0.05), atol=0.01, rtol=0)  # uniform


def _snapshot(s: DiffusionScheduler) -> tuple:
    x, x0_hat, z = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    steps = [s.step(x0_hat, t, x, noise=z) for t in s.timesteps.tolist()]
    return s.sampler, s.eta, s.timesteps.clone(), [s.previous_timestep(t) for t in s.timesteps.tolist()], steps


@pytest.mark.parametrize("start", [("ddim", 5, 0.3), ("ddpm", 7, 0.0), ("onestep", None, 0.0)])
def test_failed_set_timesteps_leaves_the_scheduler_unchanged(start: tuple) -> None:
    s = DiffusionScheduler(num_train_timesteps=20, beta_schedule="cosine")
    s.set_timesteps(start[1], sampler=start[0], eta=start[2])
    torch.manual_seed(0)
    before = _snapshot(s)
    for steps, sampler, eta in ((21, "ddpm", 0.0), (21, "ddim", 0.0), (0, "ddim", 0.5), (5, "ddim", 1.5), (5, "nope", 0.0)):
        with pytest.raises(ValueError):
            s.set_timesteps(steps, sampler=sampler, eta=eta)  # type: ignore[arg-type]
        torch.manual_seed(0)
        after = _snapshot(s)
        assert after[:2] == before[:2] and torch.equal(after[2], before[2]) and after[3] == before[3]
        for a, b in zip(after[4], before[4]):
            assert torch.equal(a, b)
    # a successful switch drops the other sampler's coefficient, so nothing stale can be read
    s.set_timesteps(5, sampler="ddim")
    assert s._c_xt is None and s._c_eps is not None
    s.set_timesteps(5, sampler="ddpm")
    assert s._c_eps is None and s._c_xt is not None


def test_mean_only_ddpm_is_the_posterior_mean_chain() -> None:
    """``sample(..., mean_only=True)`` with ddpm over all T steps applies ``q_posterior``'s mean at every step."""
    sched = DiffusionScheduler(num_train_timesteps=4, beta_schedule="linear", beta_start=0.1, beta_end=0.4)
    W = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ W + t.float()

    x_T = torch.randn(2, 3)
    expected = x_T
    for t in (3, 2, 1, 0):
        expected, _ = sched.q_posterior(f(expected, torch.tensor([t])), expected, t)
    torch.manual_seed(0)
    out = sample(f, sched, (2, 3), x_T=x_T, mean_only=True)
    assert torch.allclose(out, expected, atol=1e-5)
    torch.manual_seed(0)
    assert not torch.allclose(sample(f, sched, (2, 3), x_T=x_T), expected, atol=1e-3)  # ancestral adds noise
