"""DDRM: registration and shapes, the forward noising of Eq. 6-7 by hand, the loss of Eq. 22 by hand, the start
point of Eq. 23 and the reverse process of Algorithm 2 by hand, seeded scores, reload, bad configs and the planted
pattern."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import SASREC_CE_PLANTED_HR20, assert_reload_identical, planted_run

from dreamrec.data.batching import Batch
from dreamrec.diffusion import sample
from dreamrec.errors import ConfigError
from dreamrec.models import MODELS, build_model
from dreamrec.models.ddrm import DDRM
from dreamrec.nn.losses import sample_negatives

SMALL = {"hidden": 8, "n_layers": 1, "n_heads": 2, "dropout": 0.0, "timesteps": 4}
HISTORIES = torch.tensor([[0, 0, 0, 0], [0, 3, 1, 4], [5, 6, 12, 2]])


def _model(**params) -> DDRM:
    torch.manual_seed(0)
    model = build_model("ddrm", 12, 4, {**SMALL, **params})
    assert isinstance(model, DDRM)
    return model


def test_registered_shapes_and_inner_product_rounding() -> None:
    model = _model().eval()
    assert MODELS["ddrm"] is DDRM and model.ranks_by_query()
    torch.manual_seed(1)
    scores = model.score(HISTORIES)
    torch.manual_seed(1)
    e = model.query(HISTORIES)
    assert e.shape == (3, 8) and scores.shape == (3, 12) and torch.isfinite(scores).all()
    assert torch.allclose(scores, e @ model.item_embeddings()[1:].T, atol=1e-6)  # Eq. 24: s(e, e_i) = e . e_i


def test_forward_noising_eq6_7_by_hand() -> None:
    """linear-var schedule with s = 0.5, variances 0.1 and 0.3: 1 - abar = (0.05, 0.15), so
    e_t = sqrt(abar_t) e_0 + sqrt(1 - abar_t) eps with abar = (0.95, 0.85)."""
    model = _model(timesteps=2, noise_scale=0.5, noise_min=0.1, noise_max=0.3)
    assert torch.allclose(model.scheduler.alphas_cumprod, torch.tensor([0.95, 0.85]), atol=1e-7)
    e0 = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    eps = torch.tensor([[0.5, 1.0], [-1.0, 2.0]])
    e_t = model.scheduler.add_noise(e0, eps, torch.tensor([0, 1]))
    expected = torch.tensor([
        [math.sqrt(0.95) * 1.0 + math.sqrt(0.05) * 0.5, math.sqrt(0.95) * -2.0 + math.sqrt(0.05) * 1.0],
        [math.sqrt(0.85) * 0.5 + math.sqrt(0.15) * -1.0, math.sqrt(0.85) * 4.0 + math.sqrt(0.15) * 2.0],
    ])
    assert torch.allclose(e_t, expected, atol=1e-6)


@pytest.mark.parametrize(
    "params", [{}, {"reweight": "softmax"}, {"reweight": "sigmoid", "reweight_beta": 2.0},
               {"negative": "denoised", "backbone_weight": 0.0}, {"lambda_re": 0.7, "backbone_weight": 0.3},
               {"start_weight": 0.0}, {"start_weight": 0.5, "negative": "denoised"}]
)
def test_loss_eq22_by_hand(params: dict) -> None:
    """mean_u w(u,i) [L_bpr + lambda L_re] + start_weight * mean [BPR(e, e_0^i, e_0^j) + lambda ||e_0^i - e||^2 / d]
    with e = f_psi(q(e_bar_t | e_bar), e_0^u, t) + backbone_weight * mean BPR(e_0^u, e_0^i, e_0^j), recomputed from
    the same negatives, steps and noise: f_theta is guided by the positive item, f_psi by the user."""
    model = _model(noise_scale=0.5, noise_min=0.1, noise_max=0.3, **params).train()
    cfg = model.config
    batch = Batch(history=torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [0, 0, 8, 9]]), target=torch.tensor([4, 8, 10]))
    torch.manual_seed(7)
    loss = model.loss(batch)
    torch.manual_seed(7)
    j = sample_negatives(batch.target, 12, 1)[:, 0]
    t = torch.randint(0, 4, (3,))
    eps_u, eps_i = torch.randn(3, 8), torch.randn(3, 8)
    E = model.item_embedding.weight
    e0_u, e0_i, e0_j = model.encoder.last_hidden(batch.history), E[batch.target], E[j]
    abar = model.scheduler.alphas_cumprod[t, None]
    e_t_u = abar.sqrt() * e0_u + (1 - abar).sqrt() * eps_u  # Eq. 6
    e_t_i = abar.sqrt() * e0_i + (1 - abar).sqrt() * eps_i  # Eq. 7
    u, i = model.f_theta(e_t_u, t, e0_i), model.f_psi(e_t_i, t, e0_u)
    neg = e0_j
    if cfg.negative == "denoised":
        neg = model.f_psi(abar.sqrt() * e0_j + (1 - abar).sqrt() * torch.randn(3, 8), t, e0_u)
    s_ui = (u * i).sum(1)
    bpr = torch.log1p(torch.exp(-(s_ui - (u * neg).sum(1))))
    re = (((e0_u - u) ** 2).sum(1) + ((e0_i - i) ** 2).sum(1)) / (2 * 8)
    w = torch.ones(3)
    if cfg.reweight == "softmax":
        w = 3 * torch.exp(s_ui) / torch.exp(s_ui).sum()
    elif cfg.reweight == "sigmoid":
        w = (1 / (1 + torch.exp(-s_ui))) ** cfg.reweight_beta
    backbone = torch.log1p(torch.exp(-((e0_u * e0_i).sum(1) - (e0_u * e0_j).sum(1))))
    e_bar = model.start_point(batch.history)
    e = model.f_psi(abar.sqrt() * e_bar + (1 - abar).sqrt() * torch.randn(3, 8), t, e0_u)  # from Eq. 23's start
    start = torch.log1p(torch.exp(-((e * e0_i).sum(1) - (e * e0_j).sum(1)))) + cfg.lambda_re * ((e0_i - e) ** 2).mean(1)
    expected = (w * (bpr + cfg.lambda_re * re)).mean() + cfg.backbone_weight * backbone.mean()
    expected = expected + cfg.start_weight * start.mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert model.encoder.item_embedding.weight.grad is not None and model.f_theta.fc_in.weight.grad is not None


def test_start_point_is_the_history_mean_without_padding() -> None:
    model = _model().eval()
    h = torch.tensor([[0, 0, 3, 7], [0, 0, 0, 0], [5, 5, 5, 2]])
    with torch.no_grad():
        model.item_embedding.weight[0].fill_(3.0)  # the padding row never counts
        E = model.item_embedding.weight
        e_bar = model.start_point(h)
    assert torch.allclose(e_bar[0], (E[3] + E[7]) / 2, atol=1e-6)
    assert torch.equal(e_bar[1], torch.zeros(8))
    assert torch.allclose(e_bar[2], (3 * E[5] + E[2]) / 4, atol=1e-6)


def test_reverse_process_by_hand() -> None:
    """Algorithm 2: e_bar^i noised to T by Eq. 7, then x_{t-1} = coef1 f_psi(x_t, e_0^u, t) + coef2 x_t for t = T..1."""
    model = _model().eval()
    torch.manual_seed(3)
    e = model.generate(HISTORIES)
    torch.manual_seed(3)
    sch = model.scheduler
    with torch.no_grad():
        e0_u, e_bar = model.encoder.last_hidden(HISTORIES), model.start_point(HISTORIES)
        x = sch.alphas_cumprod[3].sqrt() * e_bar + (1 - sch.alphas_cumprod[3]).sqrt() * torch.randn(3, 8)
        for t in (3, 2, 1, 0):
            x0_hat = model.f_psi(x, torch.tensor([t]), e0_u)
            x = sch.posterior_mean_coef1[t] * x0_hat + sch.posterior_mean_coef2[t] * x
    assert torch.allclose(e, x, atol=1e-5)
    assert torch.allclose(e, x0_hat, atol=1e-6)  # the last update returns f_psi's x0 (abar_0 = 1)


def test_seeded_scores_are_deterministic_and_the_sampler_switches() -> None:
    model = _model().eval()
    torch.manual_seed(0)
    a = model.score(HISTORIES)
    torch.manual_seed(0)
    assert torch.equal(a, model.score(HISTORIES))
    torch.manual_seed(1)
    assert not torch.equal(a, model.score(HISTORIES))  # the start point is noised
    model.set_sampler("ddim", 2)
    assert model.config.sampler == "ddim" and model.scheduler.timesteps.tolist() == [3, 1]
    model.set_sampler("onestep")
    assert model.scheduler.timesteps.tolist() == [3] and torch.isfinite(model.score(HISTORIES)).all()


def test_bad_configs_fail_clearly() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        build_model("ddrm", 10, 4, {**SMALL, "hidden": 9})
    with pytest.raises(ConfigError, match="sampler_steps"):
        build_model("ddrm", 10, 4, {**SMALL, "sampler_steps": 5})
    with pytest.raises(ConfigError, match="noise_min"):
        build_model("ddrm", 10, 4, {**SMALL, "noise_min": 0.02, "noise_max": 0.01})
    with pytest.raises(ConfigError, match="lambda_re"):
        build_model("ddrm", 10, 4, {**SMALL, "lambda_re": -1.0})
    with pytest.raises(ConfigError, match="reweight"):
        build_model("ddrm", 10, 4, {**SMALL, "reweight": "inverse"})
    with pytest.raises(ConfigError, match="mlp2"):
        build_model("ddrm", 10, 4, {**SMALL, "denoiser": "mlp1", "denoiser_width": 16})


def test_saved_run_reloads_to_identical_scores(tmp_path: Path, small_synthetic) -> None:
    assert_reload_identical("ddrm", SMALL, small_synthetic.dataset, tmp_path)


# -- the planted pattern ----------------------------------------------------------------------
# 10 topics of 10 items with flat popularity: popularity's HR@20 is ~0.4, the Bayes bound ~0.9.
def test_planted_pattern(tmp_path: Path) -> None:
    """The defaults (start_weight 0, ddrm_du_old_ddrm.json: HR@20 0.878, cos(e, e_0^u) 0.90, cos(e, e_bar^i) 0.51,
    0.23 after swapping e_0^u: the query follows the encoder here too). With start_weight 1 (ddrm_du_new_ddrm.json):
    HR@20 0.878 against popularity 0.405 (the encoder's e_0^u alone as query: 0.888; the history mean e_bar^i
    alone: 0.59). The query follows the encoder: cos(e, e_0^u) 0.76, cos(e, e_bar^i) 0.36, and guiding the same
    reverse process with another row's e_0^u gives a query at cos 0.12 to it."""
    hr, hr_pop, model, ds = planted_run("ddrm", {}, tmp_path)
    assert hr >= 1.8 * hr_pop, (hr, hr_pop)
    assert hr >= 0.8 * SASREC_CE_PLANTED_HR20, hr
    h = torch.from_numpy(ds.test.history[:300, -model.max_len :])
    with torch.no_grad():
        u, e_bar = model.user_embedding(h), model.start_point(h)
        x_T = model.scheduler.add_noise(e_bar, torch.randn_like(e_bar), model.scheduler.num_train_timesteps - 1)
        runs = {}
        for name, c in (("own", u), ("other", u.roll(1, 0))):  # the same start, another row's encoder state
            runs[name] = sample(lambda x, t, c=c: model.f_psi(x, t, c), model.scheduler, tuple(x_T.shape), x_T=x_T,
                                mean_only=True)
    cos = torch.nn.functional.cosine_similarity
    assert cos(runs["own"], runs["other"]).mean() < 0.5  # the query depends on the encoder state ...
    assert cos(runs["own"], e_bar).mean() < cos(runs["own"], u).mean()  # ... more than on the history mean
