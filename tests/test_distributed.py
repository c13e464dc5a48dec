"""Data-parallel training under torchrun (two CPU processes, Gloo): the same model as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from dreamrec.data.batching import Batch
from dreamrec.data.dataset import PreparedDataset, SampleRows, pad_left
from dreamrec.train.distributed import Dist, local_part, part_bounds

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, WIDTH = 40, 6


def rows_dataset(n_rows: int = 256, seed: int = 0) -> PreparedDataset:
    """(history, next item) rows of noisy cycles, as the DreamRec Zhihu split: one label per row."""
    rng = np.random.default_rng(seed)
    start = rng.integers(1, N_ITEMS + 1, size=n_rows + 2 * 60)
    hist = [[(s + k - 1) % N_ITEMS + 1 for k in range(rng.integers(1, WIDTH + 1))] for s in start]
    target = np.array([(h[-1] % N_ITEMS) + 1 if rng.random() < 0.8 else rng.integers(1, N_ITEMS + 1) for h in hist])
    h = pad_left(hist, WIDTH)
    cut = [0, n_rows, n_rows + 60, n_rows + 120]
    part = [SampleRows(h[a:b], target[a:b]) for a, b in zip(cut, cut[1:])]
    return PreparedDataset(item_ids=pd.Series(np.arange(N_ITEMS) + 500), train=part[0], val=part[1], test=part[2],
                           max_len=WIDTH, protocol="rows")


def test_parts_cover_every_row_once() -> None:
    for n in (0, 1, 7, 64):
        for world in (1, 2, 3):
            bounds = [part_bounds(n, Dist(rank=r, world=world)) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(e - s for s, e in bounds) - min(e - s for s, e in bounds) <= 1
    b = Batch(torch.arange(10).view(5, 2), torch.arange(5), None)
    got = [local_part(b, Dist(rank=r, world=2)) for r in range(2)]
    assert [p.target.tolist() for p in got] == [[0, 1, 2], [3, 4]]
    assert torch.equal(got[1].history, b.history[3:])


def _train(data: Path, out: Path, nproc: int, *extra: str) -> str:
    args = ["train", "--model", "sasrec", "--data", str(data), "--out", str(out), "--no-progress",
            *[f"--set={kv}" for kv in ("hidden=16", "n_layers=1", "n_heads=2", "dropout=0.0", "loss=ce", "train.epochs=3",
                                       "train.batch_size=32", "train.lr=0.005", "train.patience=10", "train.threads=1")],
            *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if nproc == 1:
        cmd = [sys.executable, "-m", "dreamrec.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "dreamrec.cli", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_two_processes_train_the_model_one_process_trains(tmp_path: Path) -> None:
    """Each rank trains on half of every batch and the gradients are averaged: without dropout (and
    with the full-softmax loss, which samples no negatives) the
    weights match a single process on the whole batches; the run directory is written once, by
    rank 0, and its test metrics count every test row."""
    data = rows_dataset().save(tmp_path / "data")
    _train(data, tmp_path / "one", 1)
    out = _train(data, tmp_path / "two", 2)
    assert out.count("\"out\": ") == 1  # rank 0 reports, once
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)  # float sums in another order
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["test"]["n"] == m1["test"]["n"] == 60
    assert m2["best_epoch"] == m1["best_epoch"]
    assert m2["test"]["HR@10"] == pytest.approx(m1["test"]["HR@10"])
    log = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]  # one writer: no duplicated lines
    # every rank resumes from rank 0's checkpoint
    _train(data, tmp_path / "two", 2, "--resume", "--set=train.epochs=4")
    log = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3, 4]
