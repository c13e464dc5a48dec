"""DreamRec: shapes and empty histories, the x0 loss, guided sampling, the planted pattern, the CLI."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from dreamrec.config import TrainConfig, build_run_config, load_yaml
from dreamrec.data.batching import Batch
from dreamrec.eval.evaluate import evaluate
from dreamrec.models import MODELS, build_model
from dreamrec.models.dreamrec import DreamRec

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"hidden": 16, "timesteps": 20}


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
    model = build_model("dreamrec", 30, 8, {**SMALL, "denoiser": denoiser, "sampler": sampler, "sampler_steps": 5})
    h = histories()
    loss = model.loss(Batch(h, torch.randint(1, 31, (6,))))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.item_embedding.weight.grad is not None  # the table learns through the x0 target
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
    assert (cfg.hidden, cfg.p_uncond, cfg.guidance_w, cfg.beta_schedule, cfg.sampler) == (64, 0.1, 2.0, "exp", "ddpm")
    assert len(model.scheduler.timesteps) == cfg.timesteps  # Algorithm 2: all T steps by default
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


def test_generation_is_one_guided_call_per_step_and_seeded() -> None:
    model = build_model("dreamrec", 30, 8, {**SMALL, "guidance_w": 2.0})
    model.eval()
    sizes: list[int] = []
    model.denoiser.register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[0]))
    h = histories()
    a = model.score(h)
    assert sizes == [12] * 20  # T steps, each one call on 2B rows
    torch.manual_seed(5)
    b = model.score(h)
    torch.manual_seed(5)
    assert torch.equal(b, model.score(h))  # noise from torch's global generator
    assert not torch.equal(a, b)
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


def test_planted_pattern_near_bayes(tmp_path: Path) -> None:
    """DreamRec reaches 0.85 of the Bayes-optimal HR@20 on the planted topic structure in under a
    minute (measured: 0.95, ~26 s single-threaded on a loaded machine; see experiments/dreamrec/NOTES.md)."""
    from dreamrec.data.synthetic import SyntheticConfig, bayes_optimal, generate
    from dreamrec.train.trainer import seed_everything, train

    t0 = time.perf_counter()
    data = generate(SyntheticConfig(**PLANTED))
    ds = data.dataset
    cfg = TrainConfig(epochs=15, batch_size=256, lr=5e-3, optimizer="adamw", patience=3, val_metric="HR@20", seed=0)
    seed_everything(0)
    model = build_model("dreamrec", ds.n_items, ds.max_len, PLANTED_PARAMS)
    train(model, ds, cfg, tmp_path, progress=False)
    test = evaluate(model, ds.test, seed=0)
    bound = bayes_optimal(data, "test")
    elapsed = time.perf_counter() - t0
    assert elapsed < 60, elapsed
    assert test["HR@20"] >= 0.85 * bound["HR@20"], (test["HR@20"], bound["HR@20"])


# -- options beyond the paper ------------------------------------------------------------------


def test_cosine_x0_loss_matches_formula() -> None:
    from dreamrec.models.dreamrec import x0_loss

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
    model = build_model("dreamrec", 30, 8, {**SMALL, "x0_loss": "cosine"})
    loss = model.loss(Batch(histories(), torch.tensor([3, 4, 5, 6, 7, 8])))
    assert 0 <= loss.item() <= 2


def test_stop_gradient_target_gets_no_x0_gradient() -> None:
    h = torch.zeros(4, 8, dtype=torch.long)
    h[:, -2:] = torch.tensor([1, 2])  # histories use items 1, 2 only
    target = torch.tensor([10, 11, 12, 13])
    for target_grad in (True, False):
        model = build_model("dreamrec", 30, 8, {**SMALL, "target_grad": target_grad})
        model.loss(Batch(h, target)).backward()
        g = model.item_embedding.weight.grad
        assert g[1:3].abs().sum() > 0  # the table still learns as the encoder's input
        assert (g[10:14].abs().sum() > 0) == target_grad  # ... and from the x0 target only when joint
    frozen = build_model("dreamrec", 30, 8, {**SMALL, "freeze_items": True})
    frozen.loss(Batch(h, target)).backward()
    assert frozen.item_embedding.weight.grad is None


def test_train_timesteps_last_uses_step_T() -> None:
    model = build_model("dreamrec", 30, 8, {**SMALL, "train_timesteps": "last"})
    steps: list[torch.Tensor] = []
    model.denoiser.register_forward_hook(lambda mod, args, out: steps.append(args[1]))
    model.loss(Batch(histories(), torch.tensor([3, 4, 5, 6, 7, 8])))
    assert torch.equal(steps[0], torch.full((6,), 19))
    stats = model.on_epoch_end(1)
    assert -1 <= stats["item_cos"] <= 1


# -- end to end through the CLI ------------------------------------------------------------------


def test_cli_train_evaluate_recommend(tmp_path: Path, small_synthetic) -> None:
    from typer.testing import CliRunner

    from dreamrec.cli import app

    runner = CliRunner()
    data_dir = small_synthetic.dataset.save(tmp_path / "data")
    r = runner.invoke(app, ["train", "--model", "dreamrec", "--data", str(data_dir), "--out", str(tmp_path / "run"),
                            "--no-progress", "--set", "train.epochs=2", "--set", "hidden=16",
                            "--set", "timesteps=20", "--set", "denoiser=mlp2"])
    assert r.exit_code == 0, r.output
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert "item_norm" in log[0]
    r = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["n"] == len(small_synthetic.dataset.test) and 0.0 <= m["HR@20"] <= 1.0
    r2 = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--json"])
    assert json.loads(r2.stdout.strip().splitlines()[-1])["HR@20"] == m["HR@20"]  # deterministic
    known = small_synthetic.dataset.item_ids.tolist()
    r = runner.invoke(app, ["recommend", str(tmp_path / "run"), "--history", ",".join(map(str, known[:3])), "--k", "5"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["items"]) == 5 and set(out["items"]) <= set(known)


@pytest.mark.parametrize("denoiser", ["mlp1", "mlp2"])
@pytest.mark.parametrize("w", [0.0, 2.0])
def test_precomputed_condition_gives_identical_scores(denoiser: str, w: float) -> None:
    """generate() projects the condition once per call; the result is bit-identical to the
    plain loop that calls the denoiser on the full condition at every step."""
    from dreamrec.diffusion import ClassifierFreeGuidance, sample

    model = build_model("dreamrec", 30, 8, {**SMALL, "denoiser": denoiser, "guidance_w": w})
    model.eval()
    h = histories()
    for sampler, steps in (("ddpm", None), ("ddim", 5), ("onestep", None)):
        model.set_sampler(sampler, steps)
        torch.manual_seed(1)
        got = model.score(h)
        torch.manual_seed(1)
        with torch.no_grad():
            c = model.guidance(h)
            fn = ClassifierFreeGuidance(model.denoiser, c, model.null_condition, w)
            x0 = sample(fn, model.scheduler, tuple(c.shape))
            expected = x0 @ model.item_embeddings()[1:].T
        assert torch.equal(got, expected), (sampler, steps)


def test_set_sampler_changes_grid_and_config() -> None:
    model = build_model("dreamrec", 30, 8, {**SMALL, "guidance_w": 2.0})
    assert len(model.scheduler.timesteps) == 20
    model.set_sampler("ddim", 4, eta=0.5, guidance_w=6.0)
    cfg = model.config
    assert (cfg.sampler, cfg.sampler_steps, cfg.ddim_eta, cfg.guidance_w) == ("ddim", 4, 0.5, 6.0)
    assert model.scheduler.sampler == "ddim" and len(model.scheduler.timesteps) == 4
    model.set_sampler("onestep")
    assert model.config.sampler_steps is None and model.scheduler.timesteps.tolist() == [19]
    model.set_sampler(guidance_w=0.0)  # w alone keeps the sampler
    assert model.config.sampler == "onestep" and model.config.guidance_w == 0.0
    with pytest.raises(Exception):
        model.set_sampler("ddim", 0)


def test_sampler_chosen_at_load_time(tmp_path: Path, small_synthetic) -> None:
    """`evaluate`/`recommend`/`serve` can switch a trained run's sampler; other models refuse."""
    from dreamrec.config import RunConfig
    from dreamrec.errors import ConfigError
    from dreamrec.train.run import load_run, train_run

    ds = small_synthetic.dataset
    data_dir = ds.save(tmp_path / "data")
    cfg = RunConfig(model="dreamrec", params={"hidden": 16, "timesteps": 20}, train=TrainConfig(epochs=1))
    train_run(cfg, data_dir, tmp_path / "run", progress=False, log=None, dataset=ds)
    run = load_run(tmp_path / "run", sampler="ddim", steps=4)
    assert (run.model.config.sampler, run.model.config.sampler_steps) == ("ddim", 4)
    assert len(run.model.scheduler.timesteps) == 4 and run.config.params["sampler"] == "ddim"
    with pytest.raises(ConfigError, match="sampler"):
        load_run(tmp_path / "run", sampler="nope")
    pop = RunConfig(model="popularity")
    train_run(pop, data_dir, tmp_path / "pop", progress=False, log=None, dataset=ds)
    with pytest.raises(ConfigError, match="no diffusion sampler"):
        load_run(tmp_path / "pop", sampler="ddim")
