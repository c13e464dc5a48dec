"""Du et al.'s model ("DiffRec2"): the denoiser's input H^n, the loss by hand, rounding as one inner
product, averaging over noise draws, reload, bad configs and the planted pattern."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import SASREC_CE_PLANTED_HR20, assert_reload_identical, planted_hr20

from dreamrec.data.batching import Batch
from dreamrec.errors import ConfigError
from dreamrec.models import MODELS, build_model
from dreamrec.models.diffrec2 import DiffRec2

SMALL = {"hidden": 8, "n_layers": 1, "n_heads": 2, "dropout": 0.0, "timesteps": 10}


def _model(**params) -> DiffRec2:
    torch.manual_seed(0)
    model = build_model("diffrec2", 12, 4, {**SMALL, **params})
    assert isinstance(model, DiffRec2)
    return model


def test_registered_and_rounding_is_one_inner_product() -> None:
    model = _model(sampler="onestep").eval()
    assert MODELS["diffrec2"] is DiffRec2 and model.ranks_by_query()
    h = torch.tensor([[0, 0, 0, 0], [0, 3, 1, 4], [5, 6, 12, 2]])
    torch.manual_seed(1)
    scores = model.score(h)
    torch.manual_seed(1)
    h0 = model.generate(h)
    assert scores.shape == (3, 12)
    assert torch.allclose(scores, model.rounding(h0), atol=1e-5)  # [h0; 1] . [W_v; b_v] = W h0 + b


def test_denoiser_input_by_hand() -> None:
    """H^n = [E(v_1) + z_n, ..., h^n + z_n] (+ positions inside the encoder); the slot is a real position."""
    model = _model().eval()
    h = torch.tensor([[0, 2, 5, 7]])
    h_n, n = torch.randn(1, 8), torch.tensor([4])
    z = model.step_embedding(n)
    vectors = torch.cat([model.item_embedding(h), h_n[:, None]], dim=1) + z[:, None]
    expected = model.encoder(torch.tensor([[0, 2, 5, 7, 1]]), vectors)[:, -1]
    assert torch.allclose(model.denoise(h, h_n, n), expected, atol=1e-6)
    slot_only = _model(step_everywhere=False).eval()
    vectors = torch.cat([slot_only.item_embedding(h), (h_n + slot_only.step_embedding(n))[:, None]], dim=1)
    expected = slot_only.encoder(torch.tensor([[0, 2, 5, 7, 1]]), vectors)[:, -1]
    assert torch.allclose(slot_only.denoise(h, h_n, n), expected, atol=1e-6)


@pytest.mark.parametrize("rec_on", ["embedding", "prediction", "both"])
@pytest.mark.parametrize("slot_norm", [True, False])
def test_loss_by_hand(rec_on: str, slot_norm: bool) -> None:
    """L = ||h0 - f(h^n, n)||^2 (summed over d, mean over rows) + CE(W h + b), h = h0, f or both (summed);
    h0 = E(v) (rescaled to length sqrt(d) with slot_norm) + sigma_0 eps."""
    model = _model(mse_weight=0.5, rec_on=rec_on, embedding_std=0.1, slot_norm=slot_norm).train()
    batch = Batch(history=torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), target=torch.tensor([4, 8]))
    torch.manual_seed(3)
    loss = model.loss(batch)
    torch.manual_seed(3)
    e_v = model.item_embedding(batch.target)
    if slot_norm:
        e_v = e_v / e_v.norm(dim=1, keepdim=True) * 8**0.5
    h0 = e_v + 0.1 * torch.randn_like(e_v)
    n = model.scheduler.sample_timesteps(2)
    eps = torch.randn_like(h0)
    a = model.scheduler.alphas_cumprod[n, None]
    f = model.denoise(batch.history, a.sqrt() * h0 + (1 - a).sqrt() * eps, n)
    rec = {h: F.cross_entropy(model.rounding(x), batch.target - 1) for h, x in (("embedding", h0), ("prediction", f))}
    rec["both"] = rec["embedding"] + rec["prediction"]
    assert loss.item() == pytest.approx((0.5 * ((h0 - f) ** 2).sum(1).mean() + rec[rec_on]).item(), rel=1e-5)


def test_target_grad_stops_the_mse_gradient_at_the_target_only() -> None:
    """target_grad false (a labelled variant): the same loss value; the item table's gradient is the one of the
    loss with the MSE target h0 held constant (it still reaches the table through the slot and the history)."""
    batch = Batch(history=torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), target=torch.tensor([4, 8]))
    grads, values = [], []
    for target_grad in (True, False):
        model = _model(rec_on="prediction", target_grad=target_grad).train()
        torch.manual_seed(3)
        loss = model.loss(batch)
        values.append(loss.item())
        grads.append(torch.autograd.grad(loss, model.item_embedding.weight)[0])
    assert values[0] == pytest.approx(values[1], rel=1e-6)
    model = _model(rec_on="prediction").train()
    torch.manual_seed(3)
    h0 = model.slot_vector(batch.target)
    n = model.scheduler.sample_timesteps(2)
    f = model.denoise(batch.history, model.scheduler.add_noise(h0, torch.randn_like(h0), n), n)
    by_hand = (h0.detach() - f).square().sum(-1).mean() + F.cross_entropy(model.rounding(f), batch.target - 1)
    torch.testing.assert_close(torch.autograd.grad(by_hand, model.item_embedding.weight)[0], grads[1])
    assert not torch.allclose(grads[0], grads[1])


def test_rounding_loss_reaches_the_denoiser() -> None:
    """The defaults: the rounding loss (the loss without its MSE term) has a gradient on the Transformer's
    blocks, since it is also computed on f_theta's prediction (on h_T^0 alone, the denoiser learns by MSE only)."""
    model = _model().train()
    batch = Batch(history=torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), target=torch.tensor([4, 8]))
    torch.manual_seed(3)
    loss = model.loss(batch)
    torch.manual_seed(3)
    h0 = model.slot_vector(batch.target) if hasattr(model, "slot_vector") else model.item_embedding(batch.target)
    n = model.scheduler.sample_timesteps(2)
    f = model.denoise(batch.history, model.scheduler.add_noise(h0, torch.randn_like(h0), n), n)
    rec = loss - model.config.mse_weight * (h0 - f).square().sum(-1).mean()
    blocks = list(model.encoder.blocks.parameters())
    grads = torch.autograd.grad(rec, blocks, allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 1e-6


def test_the_noisy_slot_carries_signal() -> None:
    """The defaults: the slot's signal-to-noise ratio abar_n ||h0||^2 / ((1 - abar_n) d) exceeds 1 on a fair share
    of the N steps at initialisation (E(v) at N(0, 0.02^2) against unit noise: the first few steps only)."""
    model = _model(timesteps=100)
    h0 = model.slot_vector(torch.arange(1, 13)) if hasattr(model, "slot_vector") else model.item_embedding.weight[1:]
    power = h0.detach().square().sum(1).mean()
    abar = model.scheduler.alphas_cumprod
    snr = abar * power / ((1 - abar) * 8)
    assert int((snr > 1).sum()) >= 30, snr


def test_n_seeds_average_the_draws() -> None:
    model = _model(sampler="onestep").eval()
    h = torch.tensor([[0, 3, 1, 4], [5, 6, 12, 2]])
    torch.manual_seed(2)
    avg = model.generate(h, n_seeds=3)
    torch.manual_seed(2)
    unk = (model.unk / model.unk.norm() * 8**0.5).expand(6, -1)  # slot_norm: E(unk) at length sqrt(d) too
    last = torch.full((6,), 9, dtype=torch.long)
    x = model.scheduler.add_noise(unk, torch.randn(6, 8), last)
    h0 = model.denoise(h.repeat(3, 1), x, torch.tensor([9]))
    assert torch.allclose(avg, h0.view(3, 2, -1).mean(0), atol=1e-6)


def test_bad_configs_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="sampler_steps"):
        build_model("diffrec2", 10, 4, {**SMALL, "sampler_steps": 11})
    with pytest.raises(ConfigError, match="mse_weight"):
        build_model("diffrec2", 10, 4, {**SMALL, "mse_weight": 0.0, "rec_on": "embedding"})
    with pytest.raises(ConfigError, match="rec_on"):
        build_model("diffrec2", 10, 4, {**SMALL, "rec_on": "all"})


def test_saved_run_reloads_to_identical_scores(tmp_path: Path, small_synthetic) -> None:
    assert_reload_identical("diffrec2", {**SMALL, "sampler": "ddim", "sampler_steps": 3}, small_synthetic.dataset, tmp_path)


# -- the planted pattern ----------------------------------------------------------------------
# 10 topics of 10 items with flat popularity: popularity's HR@20 is ~0.4, the Bayes bound ~0.9.
def test_planted_pattern(tmp_path: Path) -> None:
    """The defaults (slot_norm, rounding loss on h^0 and on the prediction) with the step embedding at the noisy
    slot only, one-step inference (configs/diffrec2/zhihu.yaml). Before issue 33's fix (E(v) at N(0, 0.02^2)
    against unit noise, rounding loss on h^0 alone) it reached 0.53 against popularity's 0.405; with z_n at every
    position (the paper's H^n) it stayed at popularity's level within these 8 epochs (0.42). Measured with the fix
    (benchmarks/results/survey_checks/ddrm_du_new_du.json): 0.772 against popularity 0.405 and SASRec-CE 0.893
    (86 % of it) on the same data and training settings."""
    hr, hr_pop = planted_hr20("diffrec2", {"sampler": "onestep", "step_everywhere": False}, tmp_path)
    assert hr >= 1.6 * hr_pop, (hr, hr_pop)
    assert hr >= 0.8 * SASREC_CE_PLANTED_HR20, hr
