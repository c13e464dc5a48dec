"""The closed-form reverse process (dreamrec.diffusion.affine_chain) against the step-by-step loop."""
from __future__ import annotations

import pytest
import torch

from dreamrec.diffusion import DiffusionScheduler, sample
from dreamrec.diffusion.affine_chain import affine_chain
from dreamrec.models import build_model
from dreamrec.models.dreamrec import guided_condition, guided_model_fn


def _model(sampler: str, steps: int | None, eta: float = 0.0, closed_form: bool = True):
    torch.manual_seed(0)
    return build_model("dreamrec", 30, 5, {"hidden": 8, "timesteps": 40, "beta_schedule": "linear",
                                           "guidance_w": 2.0, "sampler": sampler, "sampler_steps": steps,
                                           "ddim_eta": eta, "closed_form": closed_form}).eval()


HISTORY = torch.tensor([[0, 0, 3, 7, 9], [1, 2, 3, 4, 5], [0, 0, 0, 0, 11]])


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddpm", 7, 0.0), ("ddim", 6, 0.0),
                                               ("ddim", 6, 0.5)])
def test_mean_equals_the_noiseless_loop_from_zero(sampler, steps, eta):
    """With x_T = 0 and no step noise the loop returns E[x_0 | x_T = 0] = G u + g: the chain's mean."""
    m = _model(sampler, steps, eta)
    with torch.no_grad():
        c = m.guidance(HISTORY)
        fn = guided_model_fn(m.denoiser, c, m.null_condition, m.config.guidance_w)
        loop = sample(fn, m.scheduler, tuple(c.shape), x_T=torch.zeros_like(c), mean_only=True)
        law = m.output_law(c.device, torch.float64)
        u = guided_condition(m.denoiser, c, m.null_condition, m.config.guidance_w)
        assert law is not None
        torch.testing.assert_close(law.mean(u.double()).float(), loop, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, 0.0), ("ddim", 6, 0.5), ("ddim", 6, 0.0)])
def test_covariance_matches_the_loop_by_monte_carlo(sampler, steps, eta):
    """20,000 loop draws for one history: their covariance and mean match L L^T and G u + g."""
    m = _model(sampler, steps, eta, closed_form=False)
    n = 20_000
    with torch.no_grad():
        torch.manual_seed(1)
        x = m.generate(HISTORY[1:2].repeat(n, 1)).double()  # the loop (closed_form off)
        c = m.guidance(HISTORY[1:2])
        law = m.__class__.output_law(_enable(m), c.device, torch.float64)
        u = guided_condition(m.denoiser, c, m.null_condition, m.config.guidance_w).double()
    cov = torch.cov(x.T)
    want = law.L @ law.L.T
    assert (cov - want).norm() / want.norm() < 0.05
    spread = want.diagonal().sqrt()
    assert ((x.mean(0) - law.mean(u)[0]).abs() / spread).max() < 0.05


def _enable(m):
    m.config = m.config.model_copy(update={"closed_form": True})
    return m


def test_closed_form_draws_have_the_loops_law_and_reuse_the_cache():
    m = _model("ddpm", None)
    hist = HISTORY[:1].repeat(20_000, 1)
    with torch.no_grad():
        torch.manual_seed(2)
        fast = m.generate(hist).double()
        law = m._law_cache[2]
        assert m.generate(HISTORY[:1]).shape == (1, 8) and m._law_cache[2] is law  # same weights: cached
        m.config = m.config.model_copy(update={"closed_form": False})
        torch.manual_seed(3)
        slow = m.generate(hist).double()
    assert (torch.cov(fast.T) - torch.cov(slow.T)).norm() / torch.cov(slow.T).norm() < 0.06
    assert ((fast.mean(0) - slow.mean(0)).abs() / slow.std(0)).max() < 0.06


def test_cache_follows_the_weights_and_the_sampler():
    m = _model("ddpm", None)
    with torch.no_grad():
        first = m.output_law(torch.device("cpu"), torch.float32)
        m.denoiser.fc_in.weight.mul_(0.5)  # an in-place update (as an optimiser's) bumps the version
        second = m.output_law(torch.device("cpu"), torch.float32)
        assert second is not first and not torch.equal(second.G, first.G)
        m.set_sampler("ddim", 5)
        assert m.output_law(torch.device("cpu"), torch.float32) is not second


def test_nonaffine_denoiser_and_switch_off_use_the_loop():
    torch.manual_seed(0)
    m = build_model("dreamrec", 30, 5, {"hidden": 8, "timesteps": 20, "denoiser": "mlp2"}).eval()
    assert m.output_law(torch.device("cpu"), torch.float32) is None
    assert _model("ddpm", None, closed_form=False).output_law(torch.device("cpu"), torch.float32) is None
    assert _model("onestep", None).output_law(torch.device("cpu"), torch.float32) is None  # one call already


def test_affine_chain_by_hand_one_and_two_steps():
    """d = 1: y1 = a0 y0 + b0 (A y0 + u + k0) + s0 z0, y2 = a1 y1 + b1 (A y1 + u + k1) + s1 z1."""
    A = torch.tensor([[0.5]])
    k = torch.tensor([[1.0], [2.0]])
    a, b, s = torch.tensor([0.2, 0.3]), torch.tensor([0.6, 0.7]), torch.tensor([0.4, 0.0])
    law = affine_chain(A, k, a, b, s)
    m0, m1 = 0.2 + 0.6 * 0.5, 0.3 + 0.7 * 0.5  # M_0, M_1
    assert law.G.item() == pytest.approx(m1 * 0.6 + 0.7)
    assert law.g.item() == pytest.approx(m1 * 0.6 * 1.0 + 0.7 * 2.0)
    assert (law.L @ law.L.T).item() == pytest.approx((m1 * m0) ** 2 + (m1 * 0.4) ** 2)
    with pytest.raises(ValueError, match="do not fit"):
        affine_chain(A, k, a[:1], b, s)


def test_step_coefficients_reproduce_step():
    for sampler, steps, eta in [("ddpm", None, 0.0), ("ddpm", 4, 0.0), ("ddim", 5, 0.3), ("onestep", None, 0.0)]:
        sched = DiffusionScheduler(num_train_timesteps=30, beta_schedule="linear")
        sched.set_timesteps(steps, sampler=sampler, eta=eta)
        a, b, sig = sched.step_coefficients()
        x, x0 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
        z = torch.randn(4, 3, dtype=torch.float64)
        for i, t in enumerate(sched.timesteps.tolist()):
            got = sched.step(x0.float(), t, x.float(), noise=z.float()).double()
            want = a[i] * x + b[i] * x0 + sig[i] * z
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    eps = DiffusionScheduler(num_train_timesteps=10, prediction_type="epsilon")
    with pytest.raises(ValueError, match="x0-prediction"):
        eps.step_coefficients()
