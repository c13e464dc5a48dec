"""DreamRec: shapes and empty histories, the x0 loss, guided sampling, the planted pattern, the CLI."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dreamrec.config import TrainConfig, build_run_config, load_yaml
from dreamrec.data.batching import Batch
from dreamrec.errors import ConfigError
from dreamrec.eval.evaluate import evaluate
from dreamrec.models import MODELS, build_model
from dreamrec.models.dreamrec import DreamRec

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"hidden": 16, "timesteps": 20}
ABLATION = "dreamrec-ablation"  # DreamRec plus the research options (dreamrec.models.dreamrec_variants)


def histories(n_items: int = 30, L: int = 8) -> torch.Tensor:
    torch.manual_seed(0)
    h = torch.randint(1, n_items + 1, (6, L))
    h[0] = 0  # empty history
    h[1, :5] = 0  # right-aligned, three items
    h[2, :-1] = 0  # one item
    return h


@pytest.mark.parametrize("denoiser", ["mlp1", "mlp2"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "onestep"])
def test_shapes_and_empty_history(denoiser: str, sampler: str) -> None:
    model = build_model(ABLATION, 30, 8, {**SMALL, "denoiser": denoiser, "sampler": sampler, "sampler_steps": 5})
    h = histories()
    target = torch.randint(1, 31, (6,))
    torch.manual_seed(5)
    loss = model.loss(Batch(h, target))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    joint = model.item_embedding.weight.grad.clone()
    # the same draws with a stop-gradient target: the target rows lose the x0 target's gradient
    model.zero_grad()
    model.config = model.config.model_copy(update={"target_grad": False})
    torch.manual_seed(5)
    model.loss(Batch(h, target)).backward()
    detached = model.item_embedding.weight.grad
    rows = target.unique()
    assert not torch.allclose(joint[rows], detached[rows])  # the table learns through the x0 target
    others = torch.ones(31, dtype=torch.bool)
    others[rows] = False
    torch.testing.assert_close(joint[others], detached[others])  # ... and only the target rows
    model.eval()
    scores = model.score(h)
    assert scores.shape == (6, 30) and torch.isfinite(scores).all()
    assert model.item_embeddings().shape == (31, 16)
    wide = torch.cat([torch.zeros(6, 4, dtype=torch.long), h], 1)  # wider than max_len: most recent kept
    assert model.score(wide).shape == (6, 30)


def test_registered_and_config_defaults() -> None:
    assert MODELS["dreamrec"] is DreamRec and DreamRec.batch_mode == "pairs"
    model = build_model("dreamrec", 500, 10)
    cfg = model.config
    # the authors' values (their README command for YooChoose: T 500, exp schedule, w 2; p_u 0.1, mlp1, d 64)
    assert (cfg.hidden, cfg.p_uncond, cfg.guidance_w, cfg.beta_schedule, cfg.timesteps, cfg.denoiser) == (
        64, 0.1, 2.0, "exp", 500, "mlp1")
    assert cfg.sampler == "ddpm" and cfg.sampler_steps is None  # Algorithm 2: ancestral sampling ...
    assert len(model.scheduler.timesteps) == cfg.timesteps  # ... over all T steps
    with pytest.raises(ConfigError, match="sampler_steps .20. exceeds timesteps .4."):
        build_model("dreamrec", 20, 5, {"timesteps": 4, "sampler_steps": 20})
    fast = build_model("dreamrec", 20, 5, {"sampler": "ddim", "sampler_steps": 10})
    assert len(fast.scheduler.timesteps) == 10
    std = float(model.item_embedding.weight[1:].detach().std())
    assert 0.9 < std < 1.1  # N(0, 1) item table, as the authors
    assert torch.equal(model.item_embedding.weight[0], torch.zeros(64))
    for d in (8, 33, 128):  # any embedding size
        m = build_model("dreamrec", 20, 5, {"hidden": d, "timesteps": 5})
        m.eval()
        assert m.score(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 20)


def test_loss_decreases() -> None:
    model = build_model("dreamrec", 30, 8, {**SMALL, "dropout": 0.0})
    batch = Batch(histories(), torch.tensor([3, 4, 5, 6, 7, 8]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        torch.manual_seed(0)  # the same t, noise and condition drop at every step
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    stats = model.on_epoch_end(1)
    assert stats["item_norm"] > 0 and "item_norm_std" in stats


@pytest.mark.parametrize("denoiser,rows", [("mlp1", 6), ("mlp2", 12)])
def test_generation_is_one_guided_call_per_step_and_seeded(denoiser: str, rows: int) -> None:
    """One network call per step: on 2B rows ([c; ∅]), or on B rows for the affine mlp1, whose guided
    prediction is the network with the condition projection (1 + w) W_c c - w W_c ∅. (The loop: mlp1's default
    closed form makes no network call at all, below.)"""
    model = build_model("dreamrec", 30, 8, {**SMALL, "guidance_w": 2.0, "denoiser": denoiser, "closed_form": False})
    model.eval()
    sizes: list[int] = []
    model.denoiser.register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[0]))
    h = histories()
    a = model.score(h)
    assert sizes == [rows] * 20  # all T = 20 steps (Algorithm 2)
    torch.manual_seed(5)
    b = model.score(h)
    torch.manual_seed(5)
    assert torch.equal(b, model.score(h))  # noise from torch's global generator
    assert not torch.equal(a, b)
    if denoiser == "mlp1":
        model.config = model.config.model_copy(update={"closed_form": True})
        sizes.clear()
        torch.manual_seed(5)
        c = model.score(h)
        torch.manual_seed(5)
        assert sizes == [] and torch.equal(c, model.score(h)) and not torch.equal(b, c)
    ev = [evaluate(model, _rows(h), ks=(5,), seed=3) for _ in range(2)]
    assert ev[0] == ev[1]  # the evaluator seeds it: deterministic


def test_w0_generation_is_the_conditional_model() -> None:
    model = build_model("dreamrec", 30, 8, {**SMALL, "guidance_w": 0.0, "sampler": "onestep"})
    model.eval()
    h = histories()
    torch.manual_seed(0)
    got = model.generate(h)
    torch.manual_seed(0)
    x_T = torch.randn(6, 16)
    c = model.guidance(h)
    expected = model.denoiser(x_T, torch.tensor([19]), c)
    torch.testing.assert_close(got, expected)


def _rows(h: torch.Tensor):
    import numpy as np

    from dreamrec.data.dataset import SampleRows

    return SampleRows(h.numpy(), np.arange(1, h.shape[0] + 1, dtype=np.int64))


def test_zhihu_config_is_the_papers() -> None:
    cfg = build_run_config(load_yaml(ROOT / "configs" / "dreamrec" / "zhihu.yaml"))
    assert cfg.model == "dreamrec"
    p = cfg.params
    assert (p["hidden"], p["p_uncond"], p["timesteps"], p["guidance_w"], p["denoiser"]) == (64, 0.1, 500, 4.0, "mlp1")
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size) == ("adamw", 0.01, 256)
    build_model(cfg.model, 100, 10, cfg.params)


# -- the planted pattern ------------------------------------------------------------------------

# A catalog of 100 items in 10 topics with flat popularity inside a topic, so that the Bayes
# ranking is "items of the likely next topics": an inner-product query can express it exactly.
PLANTED = {"n_users": 2000, "n_items": 100, "n_topics": 10, "zipf": 0.0, "seed": 0}
# the paper's x0-loss collapses the jointly learned item table (~0.81 of Bayes at best here, 0.10 on
# the default data); a stop-gradient x0 target and training at t = T for the one-step sampler fix it
PLANTED_PARAMS = {
    "hidden": 64,
    "timesteps": 100,
    "denoiser": "mlp2",
    "sampler": "onestep",
    "guidance_w": 0.0,
    "target_grad": False,
    "train_timesteps": "last",
}


@pytest.mark.parametrize("train_batches", ["pairs", "seq2seq"])
def test_planted_pattern_near_bayes(tmp_path: Path, train_batches: str) -> None:
    """dreamrec-ablation with a stop-gradient target, trained at t = T for the one-step sampler, reaches 0.85
    of the Bayes-optimal HR@20 on the planted topic structure (measured: 0.95; experiments/dreamrec/NOTES.md),
    trained on (history, next item) pairs or on SASRec's seq2seq windows."""
    from dreamrec.data.synthetic import SyntheticConfig, bayes_optimal, generate
    from dreamrec.train.trainer import seed_everything, train

    data = generate(SyntheticConfig(**PLANTED))
    ds = data.dataset
    cfg = TrainConfig(epochs=15, batch_size=256, lr=5e-3, optimizer="adamw", patience=3, val_metric="HR@20", seed=0)
    seed_everything(0)
    model = build_model(ABLATION, ds.n_items, ds.max_len, {**PLANTED_PARAMS, "train_batches": train_batches})
    assert model.batch_mode == train_batches
    train(model, ds, cfg, tmp_path, progress=False)
    test = evaluate(model, ds.test, seed=0)
    bound = bayes_optimal(data, "test")
    assert test["HR@20"] >= 0.85 * bound["HR@20"], (test["HR@20"], bound["HR@20"])


# -- options beyond the paper ------------------------------------------------------------------


def test_cosine_x0_loss_matches_formula() -> None:
    from dreamrec.models.dreamrec_variants import x0_loss

    pred = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    target = torch.tensor([[0.0, 2.0], [6.0, 8.0]])
    # row 1: orthogonal -> 1 - 0; row 2: parallel -> 1 - 1; mean = 0.5
    torch.testing.assert_close(x0_loss(pred, target, "cosine"), torch.tensor(0.5))
    pred2 = torch.tensor([[1.0, 1.0]])
    target2 = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(x0_loss(pred2, target2, "cosine"), torch.tensor(1 - 2**-0.5))
    torch.testing.assert_close(x0_loss(pred, target, "mse"), ((pred - target) ** 2).mean())
    with pytest.raises(ValueError):
        x0_loss(pred, target, "l1")
    # at model level, with a stub denoiser and hand-set targets: mean over rows of 1 - cos(x0_hat, E[y])
    model = build_model(ABLATION, 30, 8, {**SMALL, "x0_loss": "cosine"})
    with torch.no_grad():
        model.item_embedding.weight[3] = 2 * torch.eye(16)[0]
        model.item_embedding.weight[4] = 3 * torch.eye(16)[1]
    x0_hat = torch.zeros(2, 16)
    x0_hat[0, :2] = 1.0  # 45 degrees from E[3]: 1 - 1/sqrt(2)
    x0_hat[1, 1] = -5.0  # opposite to E[4]: 1 - (-1) = 2

    class Stub(torch.nn.Module):
        def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, x0_sc=None) -> torch.Tensor:
            return x0_hat

    model.denoiser = Stub()
    loss = model.loss(Batch(histories()[:2], torch.tensor([3, 4])))
    assert loss.item() == pytest.approx(((1 - 2**-0.5) + 2.0) / 2, rel=1e-6)


def test_stop_gradient_target_gets_no_x0_gradient() -> None:
    h = torch.zeros(4, 8, dtype=torch.long)
    h[:, -2:] = torch.tensor([1, 2])  # histories use items 1, 2 only
    target = torch.tensor([10, 11, 12, 13])
    for target_grad in (True, False):
        model = build_model(ABLATION, 30, 8, {**SMALL, "target_grad": target_grad})
        model.loss(Batch(h, target)).backward()
        g = model.item_embedding.weight.grad
        assert g[1:3].abs().sum() > 0  # the table still learns as the encoder's input
        assert (g[10:14].abs().sum() > 0) == target_grad  # ... and from the x0 target only when joint
    frozen = build_model(ABLATION, 30, 8, {**SMALL, "freeze_items": True})
    frozen.loss(Batch(h, target)).backward()
    assert frozen.item_embedding.weight.grad is None


def test_ce_term_adds_full_softmax_cross_entropy_by_hand() -> None:
    """``ce_weight``: loss = mse + weight * -log softmax(x0_hat E[1:]^T / tau)[target - 1]."""
    n_items, d = 4, 16
    model = build_model(ABLATION, n_items, 8, {**SMALL, "ce_weight": 0.5, "ce_temperature": 2.0, "n_layers": 2})
    assert len(model.encoder.blocks) == 2
    E = torch.zeros(n_items + 1, d)
    E[1, 0], E[2, 1], E[3, 0], E[4, 2] = 1.0, 1.0, -1.0, 2.0
    with torch.no_grad():
        model.item_embedding.weight.copy_(E)
    x0_hat = torch.zeros(1, d)
    x0_hat[0, 0] = 2.0  # logits over items 1..4 = [2, 0, -2, 0] / 2 = [1, 0, -1, 0]

    class Stub(torch.nn.Module):
        def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, x0_sc=None) -> torch.Tensor:
            return x0_hat

    model.denoiser = Stub()
    loss = model.loss(Batch(histories(n_items)[:1], torch.tensor([2])))
    mse = ((x0_hat - E[2]) ** 2).mean().item()
    ce = -(0.0 - torch.logsumexp(torch.tensor([1.0, 0.0, -1.0, 0.0]), 0)).item()
    assert loss.item() == pytest.approx(mse + 0.5 * ce, rel=1e-6)


def test_train_timesteps_last_uses_step_T() -> None:
    model = build_model(ABLATION, 30, 8, {**SMALL, "train_timesteps": "last"})
    steps: list[torch.Tensor] = []
    model.denoiser.register_forward_hook(lambda mod, args, out: steps.append(args[1]))
    model.loss(Batch(histories(), torch.tensor([3, 4, 5, 6, 7, 8])))
    assert torch.equal(steps[0], torch.full((6,), 19))


def test_item_statistics_by_hand() -> None:
    model = build_model(ABLATION, 3, 8, SMALL)
    e = torch.eye(16)
    with torch.no_grad():  # items 1 and 2 parallel, 3 orthogonal to both
        model.item_embedding.weight[1:] = torch.stack([2 * e[0], 5 * e[0], e[1]])
    stats = model.on_epoch_end(1)
    # pairwise cosines over i != j: (1, 2) = (2, 1) = 1, the other four pairs 0 -> 2 / 6
    assert stats["item_cos"] == pytest.approx(1 / 3, rel=1e-6)
    assert stats["item_norm"] == pytest.approx(8 / 3, rel=1e-6)
    assert stats["item_norm_std"] == pytest.approx(float(torch.tensor([2.0, 5.0, 1.0]).std()), rel=1e-6)


def test_training_sample_timesteps_cover_exactly_0_to_T_minus_1() -> None:
    """DreamRec trains on t ~ Uniform{0..T-1} (0-based): every step is drawn, nothing outside."""
    model = build_model(ABLATION, 30, 8, SMALL)
    steps: list[torch.Tensor] = []
    model.denoiser.register_forward_hook(lambda mod, args, out: steps.append(args[1]))
    torch.manual_seed(0)
    h = histories().repeat(100, 1)
    with torch.no_grad():
        for _ in range(10):
            model.loss(Batch(h, torch.randint(1, 31, (h.shape[0],))))
    t = torch.cat(steps)
    assert t.numel() == 6000 and set(t.tolist()) == set(range(20))


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_generation_uses_the_learned_null_condition(w: float) -> None:
    """The ∅ that training drops in (p_uncond = 1: always) is the one guidance subtracts at generation."""
    model = build_model(ABLATION, 30, 8, {**SMALL, "guidance_w": w, "p_uncond": 1.0, "sampler": "ddim",
                                            "sampler_steps": 4})
    model.eval()
    h, target = histories(), torch.tensor([3, 4, 5, 6, 7, 8])
    torch.manual_seed(1)
    scores, loss = model.score(h), model.loss(Batch(h, target))
    with torch.no_grad():
        model.null_condition.add_(1.0)
    torch.manual_seed(1)
    scores2, loss2 = model.score(h), model.loss(Batch(h, target))
    assert loss2.item() != loss.item()  # training sees the parameter
    if w > 0:
        assert not torch.allclose(scores2, scores)  # so does guided generation
    else:
        assert torch.equal(scores2, scores)  # w = 0: the conditional model only, ∅ unused


def test_failed_set_sampler_leaves_model_consistent() -> None:
    model = build_model(ABLATION, 30, 8, {**SMALL, "guidance_w": 2.0, "sampler": "ddim", "sampler_steps": 5,
                                            "ddim_eta": 0.5})
    model.eval()
    h = histories()
    torch.manual_seed(1)
    before = model.score(h)
    cfg = model.config
    for kwargs in ({"sampler": "ddpm", "steps": 50}, {"sampler": "ddim", "steps": 21}, {"eta": 1.5},
                   {"sampler": "ddim", "steps": 5, "eta": 2.0}):
        with pytest.raises(Exception):
            model.set_sampler(**kwargs)
        assert model.config == cfg and model.scheduler.sampler == "ddim" and model.scheduler.eta == 0.5
        assert model.scheduler.timesteps.tolist() == [19, 15, 11, 7, 3]
        torch.manual_seed(1)
        assert torch.equal(model.score(h), before), kwargs


def test_ddim_eta_above_one_is_rejected_by_every_config() -> None:
    from pydantic import ValidationError

    for name in ("dreamrec", "diffurec", "idreamrec", "diqdiff", "dimerec"):
        Config = MODELS[name].Config
        for bad in (1.5, -0.5):
            with pytest.raises(ValidationError, match="ddim_eta"):
                Config(ddim_eta=bad)
        assert Config(ddim_eta=1.0).ddim_eta == 1.0


def test_loss_with_one_table_lookup_equals_separate_lookups() -> None:
    """The loss looks up history and targets in one call; value and gradients equal the plain
    Algorithm 1 path (target rows and the encoder's own lookup), dropout and noise under one seed."""
    from dreamrec.diffusion.guidance import drop_condition
    from dreamrec.models.dreamrec_variants import x0_loss

    torch.manual_seed(0)
    model = DreamRec(30, 6, DreamRec.Config(hidden=16, timesteps=20, dropout=0.3, p_uncond=0.3))
    model.train()
    history = torch.randint(0, 31, (8, 6))
    target = torch.randint(1, 31, (8,))
    batch = Batch(history, target)
    torch.manual_seed(7)
    got = model.loss(batch)
    g_got = torch.autograd.grad(got, list(model.parameters()), allow_unused=True)
    torch.manual_seed(7)
    x0 = model.item_embedding(target)
    c = drop_condition(model.encoder.last_hidden(history), model.null_condition, 0.3)
    t = model.scheduler.sample_timesteps(8, device=x0.device)
    x_t = model.scheduler.add_noise(x0, torch.randn_like(x0), t)
    want = x0_loss(model.denoiser(x_t, t, c), x0, "mse")
    g_want = torch.autograd.grad(want, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(got, want)
    for a, b in zip(g_got, g_want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_x0_weight_scales_the_x0_loss_and_both_zero_is_rejected() -> None:
    """``x0_weight``: loss = x0_weight * mse + ce_weight * ce (same draws); no loss at all is a config error."""
    h, target = histories(), torch.tensor([3, 4, 5, 6, 7, 8])
    losses = {}
    for x0_w, ce_w in ((1.0, 0.0), (0.0, 1.0), (0.25, 1.0)):
        torch.manual_seed(0)
        model = build_model(ABLATION, 30, 8, {**SMALL, "x0_weight": x0_w, "ce_weight": ce_w, "dropout": 0.0})
        model.eval()  # no dropout draws; the noise and t draws are seeded below
        torch.manual_seed(1)
        losses[(x0_w, ce_w)] = model.loss(Batch(h, target)).item()
    assert losses[(0.25, 1.0)] == pytest.approx(0.25 * losses[(1.0, 0.0)] + losses[(0.0, 1.0)], rel=1e-5)
    with pytest.raises(ConfigError, match="x0_weight and ce_weight are both 0"):
        build_model(ABLATION, 30, 8, {**SMALL, "x0_weight": 0.0})


def test_self_conditioning_denoiser_and_sampler_wrapper() -> None:
    """x0_sc = None is the zeros input; SelfConditioned refines its first estimate, then feeds each output back."""
    from dreamrec.nn.denoisers import MLPDenoiser, SelfConditioned

    torch.manual_seed(0)
    f = MLPDenoiser(8, "mlp2", self_condition=True)
    x, c, t = torch.randn(3, 8), torch.randn(3, 8), torch.tensor([4])
    torch.testing.assert_close(f(x, t, c), f(x, t, c, x0_sc=torch.zeros(3, 8)))
    assert not torch.allclose(f(x, t, c), f(x, t, c, x0_sc=torch.ones(3, 8)))
    with pytest.raises(ValueError, match="without self_condition"):
        MLPDenoiser(8)(x, t, c, x0_sc=x)
    wrapped = SelfConditioned(f)
    first = wrapped(x, t, c)
    torch.testing.assert_close(first, f(x, t, c, x0_sc=f(x, t, c)))  # two calls at the first step
    x2 = torch.randn(3, 8)
    torch.testing.assert_close(wrapped(x2, torch.tensor([2]), c), f(x2, torch.tensor([2]), c, x0_sc=first))


@pytest.mark.parametrize("sampler", ["ddim", "onestep"])
def test_self_conditioned_dreamrec_trains_and_samples(sampler: str) -> None:
    model = build_model(ABLATION, 30, 8, {**SMALL, "self_condition": True, "sampler": sampler, "sampler_steps": 4,
                                            "guidance_w": 1.0})
    assert model.denoiser.fc_in.in_features == 4 * 16
    calls: list[int] = []
    model.denoiser.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    h, target = histories(), torch.tensor([3, 4, 5, 6, 7, 8])
    for seed in range(6):  # both branches (with and without the self-conditioning pass) occur
        torch.manual_seed(seed)
        model.loss(Batch(h, target)).backward()
    assert set(calls) == {6} and len(calls) > 6
    calls.clear()
    model.eval()
    scores = model.score(h)
    assert scores.shape == (6, 30) and torch.isfinite(scores).all()
    steps = 1 if sampler == "onestep" else 4
    assert calls == [12] * (steps + 1)  # guided 2B rows; one extra call refines the first estimate


class _DrawStub(torch.nn.Module):
    """A denoiser whose output for row r is ``rows[r]`` (ignores its inputs)."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = rows

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, x0_sc=None, c_proj=None) -> torch.Tensor:
        assert x_t.shape[0] == self.rows.shape[0]
        return self.rows

    def project_condition(self, c: torch.Tensor) -> torch.Tensor:
        return c


def _mixture_model(draws: int) -> tuple[DreamRec, torch.Tensor]:
    n_items, d = 4, 16
    model = build_model(
        ABLATION, n_items, 8,
        {**SMALL, "ce_weight": 1.0, "x0_weight": 0.0, "draws": draws, "train_timesteps": "last",
         "sampler": "onestep", "guidance_w": 0.0, "p_uncond": 0.0},
    )
    E = torch.zeros(n_items + 1, d)
    E[1, 0], E[2, 1], E[3, 0], E[4, 2] = 1.0, 1.0, -1.0, 2.0
    with torch.no_grad():
        model.item_embedding.weight.copy_(E)
    return model, E


def test_mixture_of_draws_loss_by_hand() -> None:
    """``draws = 2``: loss = -log(0.5 softmax(x0^1 E^T)[target] + 0.5 softmax(x0^2 E^T)[target])."""
    model, E = _mixture_model(2)
    x0_hat = torch.zeros(2, 16)
    x0_hat[0, 0] = 2.0  # draw 1: logits [2, 0, -2, 0]
    x0_hat[1, 2] = 1.0  # draw 2: logits [0, 0, 0, 2]
    model.denoiser = _DrawStub(x0_hat)
    loss = model.loss(Batch(histories(4)[:1], torch.tensor([4])))
    p1 = torch.softmax(torch.tensor([2.0, 0.0, -2.0, 0.0]), 0)[3]
    p2 = torch.softmax(torch.tensor([0.0, 0.0, 0.0, 2.0]), 0)[3]
    assert loss.item() == pytest.approx(-torch.log(0.5 * p1 + 0.5 * p2).item(), rel=1e-6)


def test_mixture_of_draws_scores_items_by_the_mixture() -> None:
    """``score`` with ``draws = 2`` is ``log mean_k softmax(x0^k E^T)``: here it ranks items 1 and 4
    (one per draw) above item 2, which no single query between the two draws would."""
    model, E = _mixture_model(2)
    x0_hat = torch.zeros(2, 16)
    x0_hat[0, 0] = 4.0  # draw 1 points at item 1
    x0_hat[1, 2] = 2.0  # draw 2 points at item 4 (logit 4)
    model.denoiser = _DrawStub(x0_hat)
    model.eval()
    scores = model.score(histories(4)[:1])
    want = torch.log(0.5 * torch.softmax(x0_hat[0] @ E[1:].T, 0) + 0.5 * torch.softmax(x0_hat[1] @ E[1:].T, 0))
    torch.testing.assert_close(scores[0], want)
    assert scores[0].argsort(descending=True)[:2].sort().values.tolist() == [0, 3]
    one, _ = _mixture_model(1)
    one.denoiser = _DrawStub(x0_hat[:1])
    one.eval()
    torch.testing.assert_close(one.score(histories(4)[:1]), x0_hat[:1] @ E[1:].T)  # draws = 1: the inner product


def test_mixture_of_draws_needs_the_ce_term() -> None:
    with pytest.raises(ConfigError, match="draws=3 needs ce_weight > 0"):
        build_model(ABLATION, 30, 8, {**SMALL, "draws": 3})


def test_mixture_of_draws_trains_and_evaluates_deterministically() -> None:
    """A K = 3 model takes training steps (finite loss, gradients into the denoiser) and its
    evaluation, seeded, repeats exactly."""
    from dreamrec.data.synthetic import SyntheticConfig, generate

    torch.manual_seed(0)
    model = build_model(ABLATION, 30, 8, {**SMALL, "ce_weight": 1.0, "x0_weight": 0.0, "draws": 3,
                                            "train_timesteps": "last", "sampler": "onestep"})
    loss = model.loss(Batch(histories(), torch.tensor([3, 4, 5, 6, 7, 8])))
    loss.backward()
    assert torch.isfinite(loss) and model.denoiser.fc_in.weight.grad.abs().sum() > 0
    ds = generate(SyntheticConfig(n_items=30, n_users=40, seed=0)).dataset
    a, b = evaluate(model, ds.test, seed=5), evaluate(model, ds.test, seed=5)
    assert a == b and a["n"] == len(ds.test)


class _NoiseRecorder(torch.nn.Module):
    """A denoiser stub that records the ``x_t`` it is given and returns ``x_t`` itself."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, **_: object) -> torch.Tensor:
        self.seen.append(x_t.detach().clone())
        return x_t

    def project_condition(self, c: torch.Tensor) -> torch.Tensor:
        return c


def test_fixed_draws_use_the_same_noise_in_training_and_scoring_and_reload() -> None:
    """fixed_draws: training and scoring both start from the K stored vectors x_T^k (row k * B + b
    gets x_T^k), the scores are the mixture over exactly those K, and the vectors travel with the
    state dict; without the flag each call draws new noise."""
    cfg = {**SMALL, "ce_weight": 1.0, "x0_weight": 0.0, "draws": 3, "train_timesteps": "last",
           "sampler": "onestep", "guidance_w": 0.0, "p_uncond": 0.0, "fixed_draws": True}
    torch.manual_seed(0)
    model = build_model(ABLATION, 30, 8, cfg)
    z = model.fixed_noise.clone()
    assert z.shape == (3, 16)
    B = 4
    h, y = histories()[:B], torch.tensor([3, 4, 5, 6])
    real = model.denoiser
    model.denoiser = rec = _NoiseRecorder()
    model.loss(Batch(h, y))
    x0 = model.item_embedding.weight[y].detach().repeat(3, 1)
    T = model.scheduler.num_train_timesteps - 1
    want = model.scheduler.add_noise(x0, z.repeat_interleave(B, dim=0), torch.full((3 * B,), T))
    torch.testing.assert_close(rec.seen[0], want)  # x_T^k = sqrt(abar_T) x0 + sqrt(1 - abar_T) z_k
    model.eval()
    model.score(h)
    torch.testing.assert_close(rec.seen[1], z.repeat_interleave(B, dim=0))  # scoring starts at the same z_k
    model.denoiser = real
    torch.manual_seed(1)
    s1 = model.score(h)
    torch.manual_seed(2)
    s2 = model.score(h)
    torch.testing.assert_close(s1, s2)  # no fresh noise anywhere: the scores do not depend on the RNG
    q = model.generate(h, draws=3).view(3, B, -1)
    E = model.item_embeddings()[1:]
    torch.testing.assert_close(s1, torch.logsumexp(torch.log_softmax(q @ E.T, -1), 0) - torch.log(torch.tensor(3.0)))
    torch.manual_seed(7)  # another init draws other vectors; loading the state dict restores ours
    other = build_model(ABLATION, 30, 8, cfg)
    assert not torch.equal(other.fixed_noise, z)
    other.load_state_dict(model.state_dict())
    other.eval()
    torch.testing.assert_close(other.score(h), s1)
    with pytest.raises(ValueError, match="draws must be 1 or 3"):
        model.generate(h, draws=2)
    with pytest.raises(ConfigError, match="fixed_draws needs draws > 1"):
        build_model(ABLATION, 30, 8, {**SMALL, "fixed_draws": True})
    free = build_model(ABLATION, 30, 8, {**cfg, "fixed_draws": False})
    free.eval()
    assert not hasattr(free, "fixed_noise")
    assert not torch.allclose(free.score(h), free.score(h))  # fresh draws per call


@pytest.mark.parametrize("sampler", ["onestep", "ddim"])
def test_correction_scale_extrapolates_the_residual_correction_at_inference_only(sampler: str) -> None:
    """correction_scale s: every generation step uses c + s (f - c); s = 1 is the trained model; the
    training loss does not depend on s; without a residual denoiser it is a config error."""
    cfg = {**SMALL, "denoiser": "mlp2", "denoiser_residual": True, "sampler": sampler, "sampler_steps": 3,
           "guidance_w": 0.0, "p_uncond": 0.0, "ce_weight": 1.0, "x0_weight": 0.0}
    torch.manual_seed(0)
    model = build_model(ABLATION, 30, 8, cfg)
    with torch.no_grad():  # a non-zero correction
        torch.nn.init.normal_(model.denoiser.fc_out.weight, std=0.5)
    h, y = histories()[:4], torch.tensor([3, 4, 5, 6])
    model.eval()
    c = model.guidance(h)
    x_T = torch.randn(4, 16)
    T1 = torch.tensor([model.scheduler.num_train_timesteps - 1])
    f = model.denoiser(x_T, T1, c)
    torch.testing.assert_close(model.denoiser(x_T, T1, c, correction_scale=3.0), c + 3.0 * (f - c))
    torch.manual_seed(5)
    base = model.generate(h)
    model.set_sampler(correction_scale=3.0)
    assert model.config.correction_scale == 3.0
    torch.manual_seed(5)
    scaled = model.generate(h)
    if sampler == "onestep":  # one call from x_T: exactly c + 3 (f - c)
        torch.testing.assert_close(scaled, c + 3.0 * (base - c))
    else:
        assert not torch.allclose(scaled, base)
    model.train()
    torch.manual_seed(1)
    loss_scaled = model.loss(Batch(h, y))
    model.set_sampler(correction_scale=1.0)
    torch.manual_seed(1)
    torch.testing.assert_close(model.loss(Batch(h, y)), loss_scaled)
    with pytest.raises(ConfigError, match="correction_scale 2.0 needs denoiser_residual"):
        build_model(ABLATION, 30, 8, {**SMALL, "correction_scale": 2.0})


@pytest.mark.parametrize("kind", ["mlp1", "mlp2"])
def test_residual_denoiser_starts_at_the_guidance_and_learns_a_correction(kind: str) -> None:
    """denoiser_residual: f = c + MLP(...), the MLP's output layer at zero, so f = c exactly at init
    (for any x_t and t); after a gradient step the correction depends on x_t."""
    from dreamrec.nn.denoisers import MLPDenoiser

    torch.manual_seed(0)
    f = MLPDenoiser(8, kind, residual=True)
    x, c = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(f(x, torch.tensor([3]), c), c, rtol=0, atol=0)
    torch.testing.assert_close(f(torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 4]), c), c, rtol=0, atol=0)
    torch.optim.SGD(f.parameters(), lr=0.1).zero_grad()
    ((f(x, torch.tensor([3]), c) - torch.randn(5, 8)) ** 2).sum().backward()
    torch.optim.SGD(f.parameters(), lr=0.1).step()
    out = f(x, torch.tensor([3]), c)
    assert not torch.allclose(out, c)
    plain = MLPDenoiser(8, kind)
    plain.load_state_dict(f.state_dict())
    torch.testing.assert_close(out, c + plain(x, torch.tensor([3]), c))

    model = build_model(ABLATION, 30, 8, {**SMALL, "denoiser": kind, "denoiser_residual": True, "sampler": "onestep",
                                            "guidance_w": 0.0})
    model.eval()
    h = histories()
    torch.testing.assert_close(model.query(h), model.guidance(h))  # one-step x0 = c at init


def test_history_mean_by_hand() -> None:
    """history_mean: at each position the mean of the real items' vectors so far (padding skipped)."""
    from dreamrec.models.dreamrec import history_mean

    history = torch.tensor([[0, 2, 3], [0, 0, 0], [4, 0, 5]])
    vectors = torch.tensor([[[9.0, 9.0], [1.0, 2.0], [3.0, 6.0]],
                            [[9.0, 9.0], [9.0, 9.0], [9.0, 9.0]],
                            [[2.0, 0.0], [9.0, 9.0], [4.0, 4.0]]])
    want = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]],
                         [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
                         [[2.0, 0.0], [2.0, 0.0], [3.0, 2.0]]])
    torch.testing.assert_close(history_mean(history, vectors), want)


def test_denoiser_history_reads_the_history_mean_and_drops_it_with_the_condition() -> None:
    """denoiser_history: the condition is [c; h_bar] (h_bar the mean of the history's item rows), the
    residual starts at f = c, the h_bar columns of the first layer move the query, and the guided
    one-step query is (1 + w) f(x_T, [c; h_bar]) - w f(x_T, [∅; 0]) by hand."""
    cfg = {**SMALL, "denoiser": "mlp2", "denoiser_residual": True, "denoiser_history": True, "sampler": "onestep",
           "guidance_w": 0.0}
    model = build_model(ABLATION, 30, 8, cfg)
    model.eval()
    h = histories()
    d = SMALL["hidden"]
    assert model.denoiser.fc_in.in_features == 4 * d
    cond = model.condition(h)
    E = model.item_embedding.weight
    real = (h > 0).float()
    h_bar = (E[h] * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp_min(1)
    torch.testing.assert_close(cond, torch.cat([model.guidance(h), h_bar], dim=1))
    torch.testing.assert_close(model.query(h), model.guidance(h))  # the residual starts at f = c
    with torch.no_grad():
        torch.nn.init.normal_(model.denoiser.fc_out.weight, std=0.1)
        q = model.query(h)
        model.denoiser.fc_in.weight[:, 2 * d : 3 * d].add_(0.5)  # the h_bar columns
    assert not torch.allclose(model.query(h), q)
    torch.testing.assert_close(model.null(), torch.cat([model.null_condition, torch.zeros(d)]))

    model.set_sampler(guidance_w=2.0)
    T1 = torch.tensor([model.scheduler.num_train_timesteps - 1])
    torch.manual_seed(5)
    got = model.query(h)
    torch.manual_seed(5)
    x_T = torch.randn(h.shape[0], d)
    null = model.null().expand(h.shape[0], -1)
    want = 3.0 * model.denoiser(x_T, T1, cond) - 2.0 * model.denoiser(x_T, T1, null)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="condition_width"):
        from dreamrec.nn.denoisers import MLPDenoiser
        MLPDenoiser(8, "mlp2", condition_width=4)


@pytest.mark.parametrize("params", [
    {"denoiser": "mlp1", "denoiser_history": True, "sampler": "ddim", "sampler_steps": 4, "guidance_w": 2.0},
    {"denoiser": "mlp2", "denoiser_history": True, "self_condition": True, "sampler": "ddim", "sampler_steps": 3},
    {"denoiser": "mlp2", "denoiser_history": True, "tie_items": False, "draws": 2, "ce_weight": 1.0},
    {"denoiser": "mlp2", "tie_items": False, "freeze_items": True, "sampler": "onestep"},
])
def test_history_and_untied_options_combine_with_the_others(params: dict) -> None:
    """Every combination trains (finite loss, gradients) and scores all items (finite, deterministic
    under a seed), with empty, short and full histories."""
    model = build_model(ABLATION, 30, 8, {**SMALL, "p_uncond": 0.3, **params})
    h, y = histories(), torch.tensor([3, 4, 5, 6, 7, 8])
    loss = model.loss(Batch(h, y))
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    torch.manual_seed(0)
    scores = model.score(h)
    torch.manual_seed(0)
    assert scores.shape == (6, 30) and torch.isfinite(scores).all() and torch.equal(model.score(h), scores)
    if params.get("freeze_items"):  # the frozen table is the target table; the encoder's input table learns
        assert model.item_embedding.weight.grad is None and model.encoder.item_embedding.weight.grad is not None


def test_untied_dreamrec_targets_and_keys_are_a_second_table() -> None:
    """tie_items=false: the x0 targets, the CE logits and the retrieval keys come from the target
    table; the encoder reads its own input table (by hand for the one-step CE loss)."""
    cfg = {**SMALL, "dropout": 0.0, "denoiser": "mlp2", "denoiser_residual": True, "sampler": "onestep",
           "guidance_w": 0.0, "p_uncond": 0.0, "train_timesteps": "last", "x0_weight": 0.5, "ce_weight": 1.0,
           "tie_items": False}
    model = build_model(ABLATION, 30, 8, cfg)
    E, M = model.item_embeddings(), model.encoder.item_embedding.weight
    assert E.shape == M.shape and E.data_ptr() != M.data_ptr()
    with torch.no_grad():
        torch.nn.init.normal_(model.denoiser.fc_out.weight, std=0.1)
    h, y = histories(), torch.tensor([3, 4, 5, 6, 7, 8])
    torch.manual_seed(2)
    loss = model.loss(Batch(h, y))
    torch.manual_seed(2)
    x0 = E[y]
    T1 = torch.full((6,), model.scheduler.num_train_timesteps - 1)
    x_t = model.scheduler.add_noise(x0, torch.randn_like(x0), T1)
    f = model.denoiser(x_t, T1, model.guidance(h))
    want = 0.5 * F.mse_loss(f, x0) + F.cross_entropy(f @ E[1:].T, y - 1)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert E.grad is not None and M.grad is not None and M.grad.abs().sum() > 0
    model.eval()
    torch.manual_seed(0)
    q = model.query(h)
    torch.manual_seed(0)
    torch.testing.assert_close(model.score(h), q @ E[1:].T)


def test_denoiser_dropout_acts_in_training_only_and_needs_mlp2() -> None:
    from dreamrec.nn.denoisers import MLPDenoiser

    torch.manual_seed(0)
    f = MLPDenoiser(8, "mlp2", dropout=0.5)
    plain = MLPDenoiser(8, "mlp2")
    plain.load_state_dict(f.state_dict())
    x, c, t = torch.randn(4, 8), torch.randn(4, 8), torch.tensor([2])
    f.eval()
    torch.testing.assert_close(f(x, t, c), plain(x, t, c))  # identity at evaluation
    f.train()
    torch.manual_seed(1)
    hidden = F.gelu(plain.fc_in(torch.cat([x, c, plain.time_embedding(t).expand(4, -1)], dim=1)))
    torch.manual_seed(1)
    mask = torch.nn.functional.dropout(torch.ones_like(hidden), 0.5, training=True)  # the same draw
    torch.manual_seed(1)
    torch.testing.assert_close(f(x, t, c), plain.fc_out(hidden * mask))
    with pytest.raises(ValueError, match="mlp2"):
        MLPDenoiser(8, "mlp1", dropout=0.1)
    with pytest.raises(Exception, match="denoiser_dropout needs denoiser mlp2"):
        build_model(ABLATION, 30, 8, {**SMALL, "denoiser_dropout": 0.2})


def test_denoiser_width_sets_the_mlp2_hidden_layer() -> None:
    model = build_model(ABLATION, 30, 8, {**SMALL, "denoiser": "mlp2", "denoiser_width": 40})
    assert model.denoiser.fc_in.out_features == 40 and model.denoiser.fc_out.in_features == 40
    assert model.score(histories()).shape == (6, 30)
    default = build_model(ABLATION, 30, 8, {**SMALL, "denoiser": "mlp2"})
    assert default.denoiser.fc_in.out_features == 2 * SMALL["hidden"]
    with pytest.raises(Exception, match="denoiser_width needs denoiser mlp2"):
        build_model(ABLATION, 30, 8, {**SMALL, "denoiser_width": 40})


@pytest.mark.parametrize("params", [{"ce_weight": 1.0, "x0_weight": 0.0}, {"ce_weight": 0.5, "p_uncond": 0.3},
                                    {"ce_weight": 1.0, "draws": 3, "denoiser": "mlp2", "denoiser_residual": True},
                                    {"ce_weight": 1.0, "p_uncond": 0.3, "denoiser": "mlp2", "denoiser_residual": True,
                                     "denoiser_history": True}])
def test_seq2seq_batches_are_the_pairs_of_every_prefix(params: dict) -> None:
    """A seq2seq window with a target at every position gives the loss of the pairs batch made of
    each labelled prefix (right-aligned) and its next item, in the same order: the causal encoder's
    state at position j is the guidance of the prefix ending at j. Position embeddings are zeroed
    (they are indexed from the right, so a prefix inside a window sits elsewhere than when it is a
    history of its own) and dropout is off; noise and condition dropping follow the same seed."""
    cfg = {**SMALL, "dropout": 0.0, "n_layers": 2, "n_heads": 2, **params}
    pairs_model = build_model(ABLATION, 30, 6, cfg)
    seq_model = build_model(ABLATION, 30, 6, {**cfg, "train_batches": "seq2seq"})
    seq_model.load_state_dict(pairs_model.state_dict())
    assert (pairs_model.batch_mode, seq_model.batch_mode) == ("pairs", "seq2seq")
    for m in (pairs_model, seq_model):
        torch.nn.init.zeros_(m.encoder.position_embedding.weight)
    inputs = torch.tensor([[0, 0, 3, 7, 9, 2], [4, 5, 6, 8, 1, 11]])
    labels = torch.tensor([[0, 0, 7, 9, 2, 12], [5, 6, 8, 1, 11, 0]])  # no label after the last input of row 2
    hist, tgt = [], []
    for b in range(2):
        for j in range(6):
            if labels[b, j] > 0:
                hist.append(torch.cat([torch.zeros(5 - j, dtype=torch.long), inputs[b, : j + 1]]))
                tgt.append(labels[b, j])
    pairs = Batch(torch.stack(hist), torch.stack(tgt))
    torch.manual_seed(3)
    want = pairs_model.loss(pairs)
    torch.manual_seed(3)
    got = seq_model.loss(Batch(inputs, labels[:, -1], labels))
    torch.testing.assert_close(got, want)
    got.backward()
    assert seq_model.encoder.blocks[0].attn is not None and all(
        p.grad is not None for n, p in seq_model.named_parameters() if n.startswith("encoder.blocks"))


def test_seq2seq_batches_cost_one_encoder_pass_per_window() -> None:
    """The trainer feeds a seq2seq DreamRec SASRec's windows: one row per window, not one per event."""
    import numpy as np

    from dreamrec.data.synthetic import SyntheticConfig, generate
    from dreamrec.train.trainer import batches

    ds = generate(SyntheticConfig(n_users=50, n_items=20, n_topics=2, max_len=9, window=8, seed=0)).dataset
    rng = np.random.default_rng(0)
    for mode in ("pairs", "seq2seq"):
        model = build_model(ABLATION, ds.n_items, ds.max_len, {**SMALL, "train_batches": mode})
        it, n_batches = batches(model, ds, 10_000, ds.max_len, rng)
        (batch,) = list(it)
        events = int(ds.train.lengths().clip(min=1).sum() - len(ds.train.lengths()))
        if mode == "pairs":
            assert batch.labels is None and len(batch.target) == events
        else:
            assert batch.history.shape[0] < events and int((batch.labels > 0).sum()) == events


# -- the research variants are separate models -------------------------------------------------


def test_dreamrec_has_only_the_papers_options() -> None:
    from dreamrec.models.dreamrec_variants import DreamRecAblation

    for option in ("ce_weight", "x0_weight", "target_grad", "train_timesteps", "denoiser_residual", "draws"):
        assert option not in MODELS["dreamrec"].Config.model_fields
        assert option in MODELS[ABLATION].Config.model_fields
    torch.manual_seed(0)
    paper = build_model("dreamrec", 30, 8, SMALL)
    torch.manual_seed(0)
    ablation = build_model(ABLATION, 30, 8, SMALL)  # its defaults are the paper's method: the same model
    assert isinstance(ablation, DreamRecAblation)
    for a, b in zip(paper.state_dict().values(), ablation.state_dict().values()):
        assert torch.equal(a, b)
    batch = Batch(histories(), torch.tensor([3, 4, 5, 6, 7, 8]))
    torch.manual_seed(1)
    want = paper.loss(batch)
    torch.manual_seed(1)
    assert torch.equal(ablation.loss(batch), want)
    paper.eval(), ablation.eval()
    torch.manual_seed(2)
    want = paper.score(histories())
    torch.manual_seed(2)
    assert torch.equal(ablation.score(histories()), want)


def test_reshead_ce_defaults_are_the_committed_zhihu_recipe() -> None:
    cfg = build_run_config(load_yaml(ROOT / "configs" / "reshead-ce" / "zhihu.yaml"))
    assert cfg.model == "reshead-ce"
    model = build_model("reshead-ce", 30, 8)
    assert model.config == type(model.config)(**cfg.params)
    c = model.config  # every diffusion component off: CE only, t = T only, one call, no guidance
    assert (c.x0_weight, c.ce_weight, c.train_timesteps, c.sampler, c.p_uncond, c.guidance_w) == (
        0.0, 1.0, "last", "onestep", 0.0, 0.0)


def test_a_run_saved_before_the_split_names_its_new_model(tmp_path: Path) -> None:
    """Old runs stored `model: dreamrec` with every option: a paper run (options at the paper's value) still
    builds as dreamrec; a recipe run fails with a one-line error naming reshead-ce."""
    from dreamrec.models.dreamrec_variants import DreamRecAblationConfig

    full_dump = DreamRecAblationConfig(**SMALL).model_dump()
    assert type(build_model("dreamrec", 30, 8, full_dump)) is DreamRec
    recipe = load_yaml(ROOT / "configs" / "reshead-ce" / "zhihu.yaml")["params"]
    with pytest.raises(ConfigError, match="set `model: reshead-ce`"):
        build_model("dreamrec", 30, 8, recipe)
    with pytest.raises(ConfigError, match="target_grad.*dreamrec-ablation"):
        build_model("dreamrec", 30, 8, {**SMALL, "target_grad": False})


def test_affine_guidance_equals_the_two_branch_mix() -> None:
    """For mlp1, ``f(x, t, c, c_proj=(1 + w) W_c c - w W_c ∅)`` is Eq. 15's ``(1 + w) f(x, c) - w f(x, ∅)``."""
    from dreamrec.diffusion.guidance import guided_prediction

    model = build_model("dreamrec", 30, 8, {**SMALL, "guidance_w": 3.0})
    f, w = model.denoiser, 3.0
    assert f.affine_in_condition
    c, x, t = torch.randn(5, 16), torch.randn(5, 16), torch.tensor([7])
    fused = f(x, t, c, c_proj=(1 + w) * f.project_condition(c) - w * f.project_condition(model.null_condition))
    torch.testing.assert_close(fused, guided_prediction(f, x, t, c, model.null_condition, w))
    mlp2 = build_model("dreamrec", 30, 8, {**SMALL, "denoiser": "mlp2"}).denoiser
    assert not mlp2.affine_in_condition
