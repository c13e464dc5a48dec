"""Trainer tests on a planted dataset: learning, pickle-free artifacts, exact resume, early stop."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dreamrec.config import TrainConfig
from dreamrec.data.dataset import PreparedDataset, Sequences, SampleRows, pad_left
from dreamrec.errors import ArtifactError, ConfigError
from dreamrec.models import build_model
from dreamrec.models.base import SequentialRecommender
from dreamrec.train.checkpoint import load_checkpoint, load_weights
from dreamrec.train.trainer import TrainResult, epoch_lr, train

N_ITEMS = 30
MAX_LEN = 10


def planted(n_users: int = 60, seq_len: int = 17) -> PreparedDataset:
    """Deterministic cycles: item i is always followed by item i % 30 + 1; leave-one-out split."""
    seqs = [[(u + t) % N_ITEMS + 1 for t in range(seq_len)] for u in range(n_users)]
    train_seqs = [s[:-2] for s in seqs]
    val = SampleRows(pad_left([s[:-2] for s in seqs], MAX_LEN), np.array([s[-2] for s in seqs]))
    test = SampleRows(pad_left([s[:-1] for s in seqs], MAX_LEN), np.array([s[-1] for s in seqs]))
    return PreparedDataset(
        item_ids=pd.Series(np.arange(N_ITEMS) + 1000),
        train=Sequences.from_lists(train_seqs),
        val=val,
        test=test,
        max_len=MAX_LEN,
        protocol="loo",
    )


@pytest.fixture(scope="module")
def dataset() -> PreparedDataset:
    return planted()


SASREC = {"hidden": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.1}
GRU = {"embedding": 32, "hidden": 32, "dropout": 0.1}


def fit(name: str, params: dict, ds: PreparedDataset, out: Path, **train_kw) -> tuple[SequentialRecommender, TrainResult]:
    resume = train_kw.pop("resume", False)
    cfg = TrainConfig(**{"batch_size": 32, "lr": 0.01, "val_metric": "HR@5", "seed": 7, **train_kw})
    torch.manual_seed(123)
    model = build_model(name, ds.n_items, cfg.max_len or ds.max_len, params)
    logs: list[str] = []
    result = train(model, ds, cfg, out, resume=resume, progress=False, log=logs.append)
    assert len(logs) >= 1
    return model, result


@pytest.mark.parametrize("name,params", [("sasrec", SASREC), ("gru4rec", GRU)])
def test_learns_planted_cycles(name: str, params: dict, dataset: PreparedDataset, tmp_path: Path) -> None:
    model, result = fit(name, params, dataset, tmp_path, epochs=25, patience=3)
    assert result.best_val["HR@5"] > 0.9, result.history
    # the returned model holds the best weights
    from dreamrec.eval.evaluate import evaluate

    again = evaluate(model, dataset.val, max_len=MAX_LEN, ks=(5, 10, 20, 50))
    assert again["HR@5"] == pytest.approx(result.best_val["HR@5"])
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == len(result.history)
    first = json.loads(lines[0])
    assert {"epoch", "loss", "seconds", "val"} <= set(first)


def test_popularity_is_far_lower(dataset: PreparedDataset, tmp_path: Path) -> None:
    model, result = fit("popularity", {}, dataset, tmp_path, epochs=5)
    assert result.best_epoch == 0 and len(result.history) == 1
    assert result.best_val["HR@5"] < 0.3
    fresh = build_model("popularity", N_ITEMS, MAX_LEN)
    load_weights(fresh, tmp_path / "model.safetensors")
    assert torch.equal(fresh.counts, model.counts)
    assert fresh.counts.sum() == len(dataset.train.items)


def test_exclude_seen_evaluates_without_history_items(tmp_path: Path, small_synthetic) -> None:
    """train.exclude_seen (DiffRec's protocol): validation and test rank without each row's history items,
    the same numbers as evaluate(..., exclude_seen=True); the default ranks every item."""
    from dreamrec.config import RunConfig
    from dreamrec.eval.evaluate import evaluate
    from dreamrec.train.run import load_run, train_run

    ds = small_synthetic.dataset
    got = {}
    for flag in (False, True):
        cfg = RunConfig(model="popularity", train=TrainConfig(epochs=1, exclude_seen=flag))
        got[flag] = train_run(cfg, ds.save(tmp_path / f"d{flag}"), tmp_path / f"r{flag}", progress=False, log=None,
                              dataset=ds)
        model = load_run(tmp_path / f"r{flag}").model
        want = evaluate(model, ds.test, exclude_seen=flag, seed=cfg.train.seed)
        assert got[flag]["test"]["HR@20"] == pytest.approx(want["HR@20"])
    assert got[True]["test"]["HR@20"] != got[False]["test"]["HR@20"]  # the repeated items of the data do matter


def _is_safetensors(path: Path) -> bool:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return isinstance(header, dict)


def test_run_dir_has_no_pickle(dataset: PreparedDataset, tmp_path: Path) -> None:
    fit("sasrec", {**SASREC, "loss": "bce"}, dataset, tmp_path, epochs=2)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.relative_to(tmp_path).as_posix() for p in files}
    assert "model.safetensors" in names and "checkpoint/state.json" in names
    assert sum(p.name == "optimizer.safetensors" for p in files) == 1  # old checkpoints removed
    for p in files:
        head = p.read_bytes()[:2]
        assert head != b"PK" and not head.startswith(b"\x80"), p  # zip (torch.save) or pickle
        if p.suffix == ".safetensors":
            assert _is_safetensors(p)
            load_file(str(p))
        elif p.suffix == ".jsonl":
            for line in p.read_text().splitlines():
                json.loads(line)
        else:
            assert p.suffix == ".json", p
            json.loads(p.read_text())
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["state"]["epoch"] == 2
    assert state["numpy_rng"]["bit_generator"] == "PCG64"


@pytest.mark.parametrize("name,params", [("sasrec", {**SASREC, "loss": "bce"}), ("gru4rec", GRU)])
def test_resume_equals_uninterrupted(name: str, params: dict, dataset: PreparedDataset, tmp_path: Path) -> None:
    kw = {"epochs": 6, "patience": 50, "lr": 0.003}
    full_model, full = fit(name, params, dataset, tmp_path / "full", **kw)
    fit(name, params, dataset, tmp_path / "part", **{**kw, "epochs": 3})
    # a process that died after epoch 3: a fresh model object (different init) resumes
    torch.manual_seed(999)
    resumed_model, resumed = fit(name, params, dataset, tmp_path / "part", **kw, resume=True)
    assert resumed.best_val == full.best_val
    assert resumed.best_epoch == full.best_epoch
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    a, b = full_model.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "part" / "log.jsonl").read_text().splitlines()) == 6


def test_step_decay_learning_rate(dataset: PreparedDataset, tmp_path: Path) -> None:
    """``lr_decay_step``: epoch e trains at lr * gamma ** ((e - 1) // step) (hand-computed), the optimiser
    really uses it, and a run resumed across a decay equals the uninterrupted one."""
    cfg = TrainConfig(lr=0.01, lr_decay_step=2, lr_decay_gamma=0.5)
    assert [epoch_lr(cfg, e) for e in (1, 2, 3, 4, 5)] == [0.01, 0.01, 0.005, 0.005, 0.0025]
    assert epoch_lr(TrainConfig(lr=0.01), 500) == 0.01
    kw = {"epochs": 5, "patience": 50, "lr": 0.003, "lr_decay_step": 2, "lr_decay_gamma": 0.5}
    full_model, full = fit("gru4rec", GRU, dataset, tmp_path / "full", **kw)
    assert [h["lr"] for h in full.history] == [0.003, 0.003, 0.0015, 0.0015, 0.00075]
    logged = [json.loads(line)["lr"] for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert logged == [0.003, 0.003, 0.0015, 0.0015, 0.00075]
    fit("gru4rec", GRU, dataset, tmp_path / "part", **{**kw, "epochs": 3})
    torch.manual_seed(999)
    resumed_model, resumed = fit("gru4rec", GRU, dataset, tmp_path / "part", **kw, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    a, b = full_model.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a decay to ~0 after epoch 1: epoch 2 leaves the weights where epoch 1 put them
    one, _ = fit("gru4rec", GRU, dataset, tmp_path / "one", epochs=1, patience=50)
    two, result = fit("gru4rec", GRU, dataset, tmp_path / "two", epochs=2, patience=50, lr_decay_step=1,
                      lr_decay_gamma=1e-12, eval_every=2)
    assert result.history[1]["loss"] is not None
    a, b = one.state_dict(), two.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-9, rtol=0) for k in a)
    changed, _ = fit("gru4rec", GRU, dataset, tmp_path / "three", epochs=2, patience=50, eval_every=2)
    assert not all(torch.allclose(a[k], changed.state_dict()[k], atol=1e-9, rtol=0) for k in a)


def test_early_stopping(dataset: PreparedDataset, tmp_path: Path) -> None:
    # a learning rate too small to change any float32 weight: validation never improves
    model, result = fit("gru4rec", GRU, dataset, tmp_path, epochs=30, patience=2, lr=1e-12)
    assert result.stopped_early
    assert result.best_epoch == 1
    assert len(result.history) == 3
    # resuming a stopped run trains no further
    _, again = fit("gru4rec", GRU, dataset, tmp_path, epochs=30, patience=2, lr=1e-12, resume=True)
    assert again.stopped_early and len(again.history) == 3
    fresh = build_model("gru4rec", N_ITEMS, MAX_LEN, GRU)
    state = load_checkpoint(tmp_path / "checkpoint", fresh, restore_torch_rng=False)
    assert state["epoch"] == 3 and state["bad_epochs"] == 2
    # resuming with a larger patience goes on until the new patience runs out
    _, longer = fit("gru4rec", GRU, dataset, tmp_path, epochs=30, patience=4, lr=1e-12, resume=True)
    assert longer.stopped_early and [h["epoch"] for h in longer.history] == [1, 2, 3, 4, 5]


def test_time_budget_stops_after_the_epoch_that_spends_it(dataset: PreparedDataset, tmp_path: Path) -> None:
    """``max_minutes``: the epoch that spends the budget is validated even off the eval_every grid, training
    stops there with the best weights kept, and a resumed run goes on past it."""
    budget = 1e-9  # spent by the first epoch
    model, result = fit("gru4rec", GRU, dataset, tmp_path, epochs=10, patience=50, eval_every=4, max_minutes=budget)
    assert result.stopped_by_budget and not result.stopped_early
    assert len(result.history) == 1 and "val" in result.history[0] and result.history[0]["budget_spent"]
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged[-1]["budget_spent"] and logged[-1]["epoch"] == 1  # the flag reaches the log file too
    assert result.best_epoch == 1
    _, again = fit("gru4rec", GRU, dataset, tmp_path, epochs=10, patience=50, eval_every=4, max_minutes=budget,
                   resume=True)
    assert again.stopped_by_budget and [e["epoch"] for e in again.history] == [1, 2]
    # a budget that is not spent changes nothing; the last epoch is not a budget stop
    _, free = fit("gru4rec", GRU, dataset, tmp_path / "free", epochs=2, patience=50, max_minutes=60.0)
    assert not free.stopped_by_budget and len(free.history) == 2 and "budget_spent" not in free.history[-1]
    # the final epoch spending the budget is an ordinary end, not a budget stop
    _, last = fit("gru4rec", GRU, dataset, tmp_path / "last", epochs=1, patience=50, max_minutes=budget)
    assert not last.stopped_by_budget


def test_best_weights_live_in_the_committed_checkpoint(dataset: PreparedDataset, tmp_path: Path) -> None:
    """A run that dies mid-training leaves no model.safetensors; the best weights so far sit in the
    committed checkpoint, and the finished run's model.safetensors equals the best epoch's weights."""
    from dreamrec.train.checkpoint import best_weights_path

    class Dies(RuntimeError):
        pass

    kw = {"epochs": 4, "patience": 50, "lr": 0.003}
    torch.manual_seed(123)
    model = build_model("gru4rec", dataset.n_items, MAX_LEN, GRU)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(epoch: int) -> dict[str, float]:
        snapshots[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if epoch == 3:
            raise Dies("killed during epoch 3")
        return {}

    model.on_epoch_end = on_epoch_end  # type: ignore[method-assign]
    cfg = TrainConfig(**{"batch_size": 32, "val_metric": "HR@5", "seed": 7, **kw})
    with pytest.raises(Dies):
        train(model, dataset, cfg, tmp_path, progress=False)
    assert not (tmp_path / "model.safetensors").exists()
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())["state"]
    assert state["epoch"] == 2
    best = best_weights_path(tmp_path / "checkpoint")
    assert best is not None
    saved = load_file(str(best))
    expect = snapshots[state["best_epoch"]]
    assert all(torch.equal(saved[k], expect[k]) for k in saved)

    _, full = fit("gru4rec", GRU, dataset, tmp_path / "full", **kw)
    assert best_weights_path(tmp_path / "full" / "checkpoint") is not None
    final = load_file(str(tmp_path / "full" / "model.safetensors"))
    in_ckpt = load_file(str(best_weights_path(tmp_path / "full" / "checkpoint")))
    assert final.keys() == in_ckpt.keys() and all(torch.equal(final[k], in_ckpt[k]) for k in final)


BF16_MODELS = [
    ("sasrec", SASREC),
    ("gru4rec", GRU),
    ("caser", {"hidden": 16}),
    ("cl4srec", {"hidden": 16, "n_layers": 1, "n_heads": 2}),
    ("dreamrec", {"hidden": 16, "timesteps": 10}),
    ("diffurec", {"hidden": 16, "n_blocks": 1, "n_heads": 2, "timesteps": 4}),
]


@pytest.mark.parametrize("name,params", BF16_MODELS)
def test_bf16_autocast_training_keeps_float32_weights(name: str, params: dict, dataset: PreparedDataset,
                                                       tmp_path: Path) -> None:
    """``precision: bf16`` runs the forward pass and loss under bfloat16 autocast: training stays
    finite, parameters stay float32, and the loss differs from float32 only by rounding."""
    from dreamrec.train.trainer import autocast

    model, result = fit(name, params, dataset, tmp_path / name, epochs=2, precision="bf16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(np.isfinite(e["loss"]) for e in result.history)
    from dreamrec.data.batching import iter_pairs, iter_seq2seq

    it = iter_seq2seq if model.batch_mode == "seq2seq" else iter_pairs
    batch = next(it(dataset.train, 64, MAX_LEN, np.random.default_rng(0)))
    model.eval()  # no dropout: both losses see the same network
    losses = []
    for precision in ("fp32", "bf16"):
        torch.manual_seed(3)
        with torch.no_grad(), autocast(TrainConfig(precision=precision), torch.device("cpu")):
            losses.append(model.loss(batch).item())
            probe = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
        assert probe.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    assert losses[1] == pytest.approx(losses[0], rel=0.05, abs=0.05)


def test_val_sampler_is_used_for_validation_only(dataset: PreparedDataset, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``val_sampler``: the epochs are selected with the cheap sampler; the model keeps its own."""
    from dreamrec.train import distributed

    seen: list[tuple] = []
    real = distributed.evaluate_sharded

    def spy(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if model.name != "popularity":  # the reference the trainer compares validations with
            seen.append((model.config.sampler, model.config.sampler_steps, len(model.scheduler.timesteps)))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(distributed, "evaluate_sharded", spy)
    params = {"hidden": 16, "n_blocks": 1, "n_heads": 2, "timesteps": 8, "sampler": "ddpm"}
    model, _ = fit("diffurec", params, dataset, tmp_path, epochs=2, val_sampler="ddim", val_sampler_steps=2)
    assert seen == [("ddim", 2, 2)] * 2
    assert (model.config.sampler, model.config.sampler_steps, len(model.scheduler.timesteps)) == ("ddpm", None, 8)
    with pytest.raises(ConfigError, match="val_sampler"):
        fit("gru4rec", GRU, dataset, tmp_path / "gru", epochs=1, val_sampler="onestep")


def _has_c_compiler() -> bool:
    import shutil

    return any(shutil.which(c) for c in ("cc", "gcc", "clang"))


@pytest.mark.skipif(not _has_c_compiler(), reason="torch.compile on the CPU needs a C compiler")
def test_compiled_training_matches_eager(dataset: PreparedDataset, tmp_path: Path, monkeypatch) -> None:
    """``train.compile``: the compiled loss trains the same model as eager; with inductor drawing its
    random numbers as eager does (``fallback_random``), the losses agree to float tolerance."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    kw = {"epochs": 2, "patience": 50, "lr": 0.003}
    _, eager = fit("sasrec", SASREC, dataset, tmp_path / "eager", **kw)
    import warnings

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="train.compile")  # no silent fallback to eager
        _, compiled = fit("sasrec", SASREC, dataset, tmp_path / "compiled", **kw, compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the loss really went through the compiler
    assert [h["loss"] for h in compiled.history] == pytest.approx([h["loss"] for h in eager.history], rel=1e-4)
    torch._dynamo.reset()


def test_compile_failure_falls_back_to_eager(dataset: PreparedDataset, tmp_path: Path, monkeypatch) -> None:
    """A loss that fails to compile trains on uncompiled, says so, and gives the eager result exactly."""
    kw = {"epochs": 2, "patience": 50, "lr": 0.003}
    _, eager = fit("sasrec", SASREC, dataset, tmp_path / "eager", **kw)

    def broken(fn):
        def call(*args, **kwargs):
            raise RuntimeError("no backend here")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="compilation failed.*no backend here.*training uncompiled"):
        _, fallback = fit("sasrec", SASREC, dataset, tmp_path / "fallback", **kw, compile=True)
    assert [h["loss"] for h in fallback.history] == [h["loss"] for h in eager.history]


def test_weight_average_equations() -> None:
    """``theta_bar <- d_n theta_bar + (1 - d_n) theta`` with ``d_n = min(decay, (1 + n) / (10 + n))``,
    hand-computed; frozen parameters are not averaged; ``applied`` swaps the average in and back."""
    from dreamrec.train.ema import WeightAverage

    net = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(1, 1, bias=False))
    net[1].weight.requires_grad_(False)
    w = net[0].weight
    with torch.no_grad():
        w.copy_(torch.tensor([[1.0, 2.0]]))
    avg = WeightAverage(net, decay=0.2)
    assert avg.names == ["0.weight"]
    with torch.no_grad():
        w.copy_(torch.tensor([[3.0, 6.0]]))
    avg.update()  # d_1 = min(0.2, 2 / 11) = 2 / 11
    expect = (2 / 11) * torch.tensor([1.0, 2.0]) + (9 / 11) * torch.tensor([3.0, 6.0])
    assert torch.allclose(avg.shadow[0][0], expect)
    with torch.no_grad():
        w.copy_(torch.tensor([[0.0, 1.0]]))
    avg.update()  # d_2 = min(0.2, 3 / 12) = 0.2
    expect = 0.2 * expect + 0.8 * torch.tensor([0.0, 1.0])
    assert torch.allclose(avg.shadow[0][0], expect)
    assert avg.rate(1000) == 0.2 and WeightAverage(net, 0.999).rate(1000) == pytest.approx(1001 / 1010)
    with avg.applied():
        assert torch.allclose(w[0], expect)
    assert torch.equal(w, torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, 1.0)
    # a checkpoint's average is restored exactly, and one for another model is refused by name
    other = WeightAverage(net, decay=0.2)
    other.load(avg.tensors(), avg.updates)
    assert torch.equal(other.shadow[0], avg.shadow[0]) and other.updates == 2
    with pytest.raises(ArtifactError, match="weight average tensors do not match"):
        other.load({"1.weight": torch.zeros(1, 1)}, 2)
    with pytest.raises(ArtifactError, match="0.weight has shape"):
        other.load({"0.weight": torch.zeros(2, 1)}, 2)


def test_ema_training_validates_and_keeps_the_average(dataset: PreparedDataset, tmp_path: Path) -> None:
    """With ``ema_decay`` the validated, selected and saved weights are the running average: it learns
    the planted cycles, the kept weights score what validation reported, they differ from the raw
    weights, and a decay near 0 (the average is the last step) reproduces training without one."""
    from dreamrec.eval.evaluate import evaluate
    from dreamrec.train.checkpoint import best_weights_path

    kw = {"epochs": 25, "patience": 3}
    model, result = fit("sasrec", SASREC, dataset, tmp_path / "ema", ema_decay=0.9, **kw)
    assert result.best_val["HR@5"] > 0.9, result.history
    again = evaluate(model, dataset.val, max_len=MAX_LEN, ks=(5, 10, 20, 50))
    assert again["HR@5"] == pytest.approx(result.best_val["HR@5"])
    final = load_file(str(tmp_path / "ema" / "model.safetensors"))
    kept = load_file(str(best_weights_path(tmp_path / "ema" / "checkpoint")))
    assert all(torch.equal(final[k], kept[k]) for k in final)
    # validated once, after the last epoch: what is kept is the checkpoint's average, not the raw weights
    from dreamrec.train.trainer import batches

    once_model, once = fit("sasrec", SASREC, dataset, tmp_path / "once", ema_decay=0.9, epochs=2, eval_every=2)
    per_epoch = batches(once_model, dataset, 32, MAX_LEN, np.random.default_rng(0))[1]
    assert once.best_epoch == 2
    state = json.loads((tmp_path / "once" / "checkpoint" / "state.json").read_text())
    raw = load_file(str(tmp_path / "once" / "checkpoint" / state["tensors"] / "model.safetensors"))
    average = load_file(str(tmp_path / "once" / "checkpoint" / state["tensors"] / "average.safetensors"))
    final = load_file(str(tmp_path / "once" / "model.safetensors"))
    assert state["state"]["ema_updates"] == 2 * per_epoch and set(average) <= set(raw) == set(final)
    assert all(torch.equal(final[k], average[k]) for k in average)
    assert not all(torch.equal(raw[k], average[k]) for k in average)

    short = {"epochs": 3, "patience": 50}
    plain_model, plain = fit("sasrec", SASREC, dataset, tmp_path / "plain", **short)
    last_model, last = fit("sasrec", SASREC, dataset, tmp_path / "last", ema_decay=1e-12, **short)
    assert [h["loss"] for h in last.history] == [h["loss"] for h in plain.history]
    assert last.best_val == pytest.approx(plain.best_val)


def test_ema_resume_equals_uninterrupted(dataset: PreparedDataset, tmp_path: Path) -> None:
    """The average travels in the checkpoint: an interrupted run resumes to the same result; resuming
    with another ``ema_decay`` than the checkpoint's is refused by name."""
    kw = {"epochs": 6, "patience": 50, "lr": 0.003, "ema_decay": 0.8}
    full_model, full = fit("sasrec", SASREC, dataset, tmp_path / "full", **kw)
    fit("sasrec", SASREC, dataset, tmp_path / "part", **{**kw, "epochs": 3})
    torch.manual_seed(999)
    resumed_model, resumed = fit("sasrec", SASREC, dataset, tmp_path / "part", **kw, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.best_val == full.best_val and resumed.best_epoch == full.best_epoch
    a, b = full_model.state_dict(), resumed_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="ema_decay"):
        fit("sasrec", SASREC, dataset, tmp_path / "part", **{**kw, "ema_decay": None, "epochs": 8}, resume=True)
    with pytest.raises(ConfigError, match="ema_decay"):
        fit("sasrec", SASREC, dataset, tmp_path / "full", **{**kw, "ema_decay": 0.9, "epochs": 8}, resume=True)


class _FakeClock:
    """The trainer's budget clock, advanced by the test: ``step`` seconds per training step (a function of the
    step count) and ``val`` seconds per validation of the trained model (popularity's reference is free)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, step, val: float) -> None:
        from dreamrec.train import distributed, trainer

        self.now, self.steps = 0.0, 0
        monkeypatch.setattr(trainer, "_clock", lambda: self.now)
        real_step, real_eval = trainer.train_step, distributed.evaluate_sharded

        def train_step(*args, **kwargs):  # noqa: ANN002, ANN003
            self.steps += 1
            self.now += step(self.steps)
            return real_step(*args, **kwargs)

        def evaluate(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            if model.name != "popularity":
                self.now += val
            return real_eval(model, *args, **kwargs)

        monkeypatch.setattr(trainer, "train_step", train_step)
        monkeypatch.setattr(distributed, "evaluate_sharded", evaluate)


def test_time_budget_bounds_the_whole_call_validations_included(dataset: PreparedDataset, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """No epoch starts that would not end, with its validation, inside ``max_minutes``; an epoch that turns out
    slower is dropped midway (its steps never reach the checkpoint), and the validated best is kept."""
    from dreamrec.train.trainer import batches

    model = build_model("gru4rec", dataset.n_items, MAX_LEN, GRU)
    per_epoch = batches(model, dataset, 32, MAX_LEN, np.random.default_rng(0))[1]
    assert per_epoch >= 3
    clock = _FakeClock(monkeypatch, step=lambda n: 10.0, val=25.0)
    # epoch = 10 s * per_epoch, validation 25 s; the budget holds two epochs and two validations, not three
    budget = 2 * (10 * per_epoch + 25) + 5
    _, result = fit("gru4rec", GRU, dataset, tmp_path / "a", epochs=10, patience=50, max_minutes=budget / 60)
    assert [e["epoch"] for e in result.history] == [1, 2] and result.stopped_by_budget
    assert result.history[-1]["budget_spent"] and clock.now <= budget

    # the third epoch's steps are three times slower than the estimate: it is dropped where the budget ends
    clock = _FakeClock(monkeypatch, step=lambda n: 10.0 if n <= 2 * per_epoch else 30.0, val=25.0)
    budget = 3 * (10 * per_epoch + 25) + 5
    _, result = fit("gru4rec", GRU, dataset, tmp_path / "b", epochs=10, patience=50, max_minutes=budget / 60)
    assert [e["epoch"] for e in result.history] == [1, 2] and result.stopped_by_budget
    assert clock.now <= budget and clock.steps < 3 * per_epoch
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["state"]
    assert state["epoch"] == 2  # the dropped epoch never reached the checkpoint
    logged = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in logged] == [1, 2]


def test_collapse_and_below_popularity_are_logged_and_warned(dataset: PreparedDataset, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A table whose rows all point one way, and a validation no better than popularity's, end the run with
    warnings naming the cause (also in the epoch log); a healthy run has none."""
    from dreamrec.train import distributed, trainer
    from dreamrec.train.health import item_table_health

    _, healthy = fit("sasrec", SASREC, dataset, tmp_path / "ok", epochs=6, patience=50)
    assert healthy.warnings == [] and "item_cos" in healthy.history[-1] and healthy.popularity_val is not None
    real_step, real_eval = trainer.train_step, distributed.evaluate_sharded

    def collapsing_step(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        value = real_step(model, *args, **kwargs)
        with torch.no_grad():  # every item row becomes the same vector, as a collapsed table does
            table = model.item_embeddings()
            table[1:] = table[1:].mean(0, keepdim=True) + 1e-4 * torch.randn_like(table[1:])
        return value

    def popularity_wins(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        m = real_eval(model, *args, **kwargs)
        return m if model.name == "popularity" else {k: (0.0 if "@" in k else v) for k, v in m.items()}

    monkeypatch.setattr(trainer, "train_step", collapsing_step)
    monkeypatch.setattr(distributed, "evaluate_sharded", popularity_wins)
    with pytest.warns(RuntimeWarning, match="collapsed"):
        model, result = fit("sasrec", SASREC, dataset, tmp_path / "bad", epochs=2, patience=50)
    assert item_table_health(model)["item_cos"] > 0.8
    assert len(result.warnings) == 2
    assert "item table collapsed from epoch 1" in result.warnings[0] and "pairwise cosine" in result.warnings[0]
    assert "not above the popularity ranking's" in result.warnings[1]
    logged = [json.loads(line) for line in (tmp_path / "bad" / "log.jsonl").read_text().splitlines()]
    assert logged[0]["collapse"] and logged[0]["below_popularity"] and logged[0]["item_cos"] > 0.8


def test_item_table_health_by_hand() -> None:
    from dreamrec.train.health import collapse_cause, item_table_health

    class Table(torch.nn.Module):
        batch_mode = "pairs"

        def __init__(self, rows):  # noqa: ANN001
            super().__init__()
            self.rows = torch.tensor(rows, dtype=torch.float32)

        def item_embeddings(self) -> torch.Tensor:
            return self.rows

    # rows 1..3 (row 0 is padding): unit vectors e1, e1, e2 -> cosines (1, 0, 0) over the 3 unordered pairs
    h = item_table_health(Table([[9.0, 9.0], [1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]))
    assert h["item_cos"] == pytest.approx(1 / 3) and h["item_norm"] == pytest.approx(2.0)
    assert collapse_cause(h, initial_norm=2.0) is None
    assert "shrank" in collapse_cause({"item_cos": 0.1, "item_norm": 0.001}, initial_norm=1.0)
    assert "one way" in collapse_cause({"item_cos": 0.99, "item_norm": 1.0}, initial_norm=1.0)
