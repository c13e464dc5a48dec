"""DiffuASR (dreamrec.augment): config validation, the SU-Net's shapes, training on the training split only,
exactly M items prepended to exactly the selected training sequences (rows) with validation and test
untouched, seeded determinism, valid ids, the planted topics, the CLI and the benchmark script."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dreamrec.augment import (
    DiffuASRConfig,
    SUNet,
    augment_dataset,
    diffuasr_config,
    selected,
    train_diffuasr,
    training_pairs,
)
from dreamrec.augment.sunet import from_grid, to_grid
from dreamrec.cli import app
from dreamrec.data.dataset import PreparedDataset, SampleRows, pad_left
from dreamrec.data.synthetic import SyntheticConfig, generate
from dreamrec.errors import ConfigError

# small enough for CPU tests: 4x4 item grids, 200 steps, 20 DDIM steps
SMALL = {"M": 2, "d": 16, "T": 200, "beta_end": 0.05, "channels": (16, 32), "sampling_steps": 20, "batch_size": 128,
         "lr": 2e-3, "train_windows": "all"}
TINY = {**SMALL, "epochs": 1, "channels": (8,), "train_windows": "start"}


@pytest.fixture(scope="module")
def fitted(small_synthetic):
    """The generator of the planted-pattern test: 15 epochs on the leave-one-out training sequences."""
    cfg = DiffuASRConfig(**SMALL, epochs=15, guidance_w=3.0)
    return train_diffuasr(small_synthetic.dataset, cfg, log=None)


@pytest.mark.parametrize("bad, needle", [
    ({"d": 15}, "perfect square"),
    ({"d": 8}, "perfect square"),
    ({"M": 0}, "M"),
    ({"T": 10, "sampling_steps": 20}, "sampling_steps"),
    ({"T": 20, "sampling_steps": 5}, "x_T would not be noise"),  # linear betas to 0.02 over 20 steps keep 82 %
    ({"p_uncond": 0.0}, "p_uncond"),
    ({"channels": []}, "channels"),
    ({"bogus": 1}, "bogus"),
    ({"row_width": "wide"}, "row_width"),
])
def test_config_validation(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        diffuasr_config(bad)
    assert diffuasr_config({"p_uncond": 0.0, "guidance_w": 0.0}).p_uncond == 0.0  # no guidance: nothing to train


def test_sunet_shapes_and_grid_round_trip():
    x = torch.arange(2 * 3 * 16, dtype=torch.float32).reshape(2, 3, 16)
    g = to_grid(x)
    assert g.shape == (2, 3, 4, 4) and g[1, 2, 1, 3] == x[1, 2, 7] and torch.equal(from_grid(g), x)
    torch.manual_seed(0)
    for M, d, channels in [(1, 4, (8,)), (3, 9, (8, 16)), (10, 64, (8, 16, 16)), (2, 1, (8, 8))]:
        net = SUNet(M=M, d=d, channels=channels, dropout=0.0).eval()
        x, c = torch.randn(5, M, d), torch.randn(5, d)
        out = net(x, torch.full((5,), 7), c)
        assert out.shape == x.shape
        assert torch.allclose(net(x, torch.tensor([7]), c), out, atol=1e-5)  # a shared step broadcasts
        assert not torch.allclose(net(x, torch.tensor([7]), torch.randn(5, d)), out)  # the guidance matters


def test_training_pairs_by_hand():
    from dreamrec.data.dataset import Sequences

    seqs = Sequences.from_lists([[1, 2, 3, 4], [5, 6], [7, 8, 9]])
    cfg = DiffuASRConfig(M=2, d=4, cond_len=1, train_windows="start")
    aug, raw = training_pairs(seqs, cfg)
    assert aug.tolist() == [[1, 2], [7, 8]] and raw.tolist() == [[3], [9]]  # [5, 6] has nothing after the block
    aug, raw = training_pairs(seqs, cfg.model_copy(update={"train_windows": "all", "cond_len": 3}))
    assert aug.tolist() == [[1, 2], [2, 3], [7, 8]] and raw.tolist() == [[3, 4, 0], [4, 0, 0], [9, 0, 0]]
    rows = SampleRows(np.array([[0, 0, 1], [0, 2, 3], [4, 5, 6]]), np.array([9, 8, 7]))
    aug, raw = training_pairs(rows, cfg.model_copy(update={"train_windows": "all", "cond_len": 3}))
    # a row is history + [target]; [1, 9] has nothing after its block; rows always start their window
    assert aug.tolist() == [[2, 3], [4, 5]] and raw.tolist() == [[8, 0, 0], [6, 7, 0]]


def test_loss_decreases(fitted):
    h = fitted.loss_history
    assert len(h) == 15 and np.mean(h[-3:]) < 0.6 * h[0], h


class _Unreadable:
    """A split that fails on any use: training must not read validation or test."""

    def __getattr__(self, name):
        raise AssertionError(f"validation/test read ({name})")

    def __len__(self):
        raise AssertionError("validation/test read (len)")


def test_training_and_augmentation_read_the_training_split_only(small_synthetic):
    ds = small_synthetic.dataset
    blind = replace(ds, val=_Unreadable(), test=_Unreadable())
    cfg = DiffuASRConfig(**TINY)
    out = augment_dataset(blind, train_diffuasr(blind, cfg, log=None), cfg)
    assert out.val is blind.val and out.test is blind.test


def _check_block(gen: np.ndarray, seqs: list[np.ndarray], n_items: int, exclusive: bool) -> None:
    assert gen.min() >= 1 and gen.max() <= n_items
    if exclusive:
        for g, s in zip(gen, seqs):
            assert not np.isin(g, s).any() and len(set(g.tolist())) == len(g)


def test_augment_sequences(fitted, small_synthetic, tmp_path):
    ds = small_synthetic.dataset
    cfg = fitted.config.model_copy(update={"augment_below": 8, "augment_min_len": 4})
    out = augment_dataset(ds, fitted, cfg)
    lengths = ds.train.lengths()
    sel = (lengths < 8) & (lengths >= 4)
    assert np.array_equal(selected(ds.train, cfg), sel) and 0 < sel.sum() < len(sel)
    assert np.array_equal(out.train.lengths(), lengths + cfg.M * sel)
    gen = np.array([out.train.get(u)[: cfg.M] for u in np.flatnonzero(sel)])
    for u in range(len(ds.train)):
        assert np.array_equal(out.train.get(u)[cfg.M * sel[u]:], ds.train.get(u))
    _check_block(gen, [ds.train.get(u) for u in np.flatnonzero(sel)], ds.n_items, exclusive=True)
    entry = out.info["augmentation"][-1]
    assert entry["method"] == "diffuasr" and entry["n_augmented"] == sel.sum() and entry["config"]["M"] == 2
    assert np.array_equal(out.train.user, ds.train.user) and out.max_len == ds.max_len
    # validation, test and the catalog are byte-identical on disk; the whole result is seeded
    ds.save(tmp_path / "a")
    out.save(tmp_path / "b")
    for f in ["val_history.npy", "val_target.npy", "val_user.npy", "test_history.npy", "test_target.npy",
              "test_user.npy", "items.parquet", "users.parquet", "item_meta.parquet"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    again = augment_dataset(ds, fitted, cfg)
    assert np.array_equal(again.train.items, out.train.items)
    other = augment_dataset(ds, fitted, cfg.model_copy(update={"seed": 1}))
    assert not np.array_equal(other.train.items, out.train.items)
    # without the exclusion some generated item repeats one of the sequence (the topics are small)
    free = augment_dataset(ds, fitted, cfg.model_copy(update={"exclude_seen": False}))
    g_free = np.array([free.train.get(u)[: cfg.M] for u in np.flatnonzero(sel)])
    _check_block(g_free, [], ds.n_items, exclusive=False)
    assert any(np.isin(g, ds.train.get(u)).any() for g, u in zip(g_free, np.flatnonzero(sel)))


def test_augment_rows_window_and_widen(fitted):
    ds = generate(SyntheticConfig(n_users=60, n_items=80, n_topics=4, seed=3, protocol="dreamrec", window=19)).dataset
    train, W, M = ds.train, ds.train.width, fitted.config.M
    n = (train.history != 0).sum(1)
    cfg = fitted.config.model_copy(update={"augment_min_len": 1})
    out = augment_dataset(ds, fitted, cfg)
    sel = (n >= 1) & (n < W)
    assert out.train.width == W and out.info["augmentation"][-1]["n_augmented"] == sel.sum()
    assert np.array_equal(out.train.target, train.target) and np.array_equal(out.val.history, ds.val.history)
    assert np.array_equal(out.train.history[~sel], train.history[~sel])  # empty and full windows untouched
    new_n = (out.train.history != 0).sum(1)
    assert np.array_equal(new_n[sel], np.minimum(n[sel] + M, W))
    for i in np.flatnonzero(sel):  # the most recent items kept: the history itself, then what precedes it
        row, old = out.train.history[i], train.history[i][train.history[i] != 0]
        assert np.array_equal(row[W - len(old):], old) and (row[: W - len(old)][-M:] != 0).all()
    wide = augment_dataset(ds, fitted, cfg.model_copy(update={"row_width": "widen"}))
    assert wide.train.width == W + M
    sel_w = n >= 1  # every non-empty history fits whole with its M new items
    assert np.array_equal((wide.train.history != 0).sum(1), n + M * sel_w)
    kept = [row[row != 0][M * s:] for row, s in zip(wide.train.history, sel_w)]
    assert np.array_equal(pad_left(kept, W), train.history)


def test_planted_topics(fitted, small_synthetic):
    """Generated items share the topic that dominates the sequence they precede far above chance (1/4)."""
    data, ds = small_synthetic, small_synthetic.dataset
    topic = data.item_topic
    out = augment_dataset(ds, fitted)
    M = fitted.config.M
    agree = []
    for u in range(len(ds.train)):
        s, g = ds.train.get(u), out.train.get(u)[:M]
        agree.append((topic[g - 1] == np.bincount(topic[s - 1], minlength=4).argmax()).mean())
    chance = 1 / 4  # balanced topics: a uniformly drawn item is in the majority topic with probability 1/4
    assert np.mean(agree) > 1.8 * chance, np.mean(agree)


def test_cli_augment_then_train(tmp_path, small_synthetic):
    runner = CliRunner()
    ds = small_synthetic.dataset
    ds.save(tmp_path / "data")
    sets = [f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()] + ["augment_below=6"]
    args = ["augment", str(tmp_path / "data"), "--out", str(tmp_path / "aug")]
    r = runner.invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    aug = PreparedDataset.load(tmp_path / "aug")
    assert summary["n_augmented"] == aug.info["augmentation"][-1]["n_augmented"] == (ds.train.lengths() < 6).sum()
    assert np.array_equal(aug.test.history, ds.test.history)
    r = runner.invoke(app, ["train", "--model", "sasrec", "--data", str(tmp_path / "aug"), "--out", str(tmp_path / "run"),
                            "--no-progress", "--set", "train.epochs=1", "--set", "hidden=16", "--set", "n_layers=1"])
    assert r.exit_code == 0, r.output
    for bad, needle in [(["--set", "d=15"], "perfect square"), (["--set", "bogus=1"], "bogus"),
                        (["--set", "M"], "key=value"), (["--method", "mixup"], "unknown augmentation method")]:
        r = runner.invoke(app, args + bad)
        assert r.exit_code == 2 and needle in r.output, r.output
    r = runner.invoke(app, ["augment", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not a prepared dataset" in r.output
    for out in (tmp_path / "data", tmp_path):  # the input itself, or a folder holding it
        r = runner.invoke(app, ["augment", str(tmp_path / "data"), "--out", str(out)])
        assert r.exit_code == 2 and "would replace the input" in r.output, r.output
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["augment", str(tmp_path / "data"), "--out", str(tmp_path / "notes")])
    assert r.exit_code == 2 and "not a prepared dataset" in r.output
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine" and PreparedDataset.load(tmp_path / "data")


def test_benchmark_script(tmp_path, small_synthetic):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from diffuasr_augment import main

    small_synthetic.dataset.save(tmp_path / "data")
    cfg = tmp_path / "sasrec.yaml"
    cfg.write_text("model: sasrec\nparams: {hidden: 16, n_layers: 1, n_heads: 1, loss: ce}\n"
                   "train: {epochs: 1, batch_size: 256}\n")
    sets = [f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    argv = ["--data", str(tmp_path / "data"), "--dataset", "tiny", "--config", str(cfg), "--seeds", "0",
            "--augment-set", *sets, "--work", str(tmp_path / "work"), "--results", str(tmp_path / "results")]
    res = main(argv)
    names = sorted(p.name for p in (tmp_path / "results").glob("*.json"))
    digest = res["diffuasr"]["variant"].split("-")[-1]
    assert names == ["tiny__sasrec__sasrec+diffuasr-" + digest + ".json"]  # the baseline's aggregate untouched
    rec = json.loads((tmp_path / "results" / names[0]).read_text())
    assert rec["baseline"]["variant"] == "sasrec" and rec["baseline"]["metrics"] == res["original"]["metrics"]
    assert rec["augmentation"]["method"] == "diffuasr" and rec["metrics"]["n"]["mean"] == len(small_synthetic.dataset.test)
    assert set(res["comparison"]) == {"HR@10", "NDCG@10", "HR@20", "NDCG@20"}
