"""SIGKILL during training, then --resume: same final metrics and weights as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

EPOCHS = 8
TRAIN_ARGS = ["--model", "sasrec", "--no-progress", "--set", "hidden=16", "--set", "n_layers=1",
              "--set", f"train.epochs={EPOCHS}", "--set", "train.batch_size=32", "--set", "train.threads=1",
              "--set", "train.patience=100", "--set", "train.seed=7"]


def _train(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "dreamrec.cli", "train", "--data", str(data), "--out", str(out),
                             *TRAIN_ARGS, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from dreamrec.data.synthetic import SyntheticConfig, generate

    ds = generate(SyntheticConfig(n_users=1000, n_items=150, n_topics=6, seed=5)).dataset
    return ds.save(tmp_path_factory.mktemp("resume") / "data")


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, data_dir):
    full = _train(data_dir, tmp_path / "full")  # runs alongside the one we kill
    killed = _train(data_dir, tmp_path / "killed")
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.time() + 90
    while not state.exists():
        assert killed.poll() is None, "training ended before its first checkpoint appeared"
        assert time.time() < deadline, "no checkpoint within 90 s"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    epoch_at_kill = json.loads(state.read_text())["state"]["epoch"]
    assert 1 <= epoch_at_kill < EPOCHS, "the kill must land mid-training"
    assert not (tmp_path / "killed" / "metrics.json").exists()

    _finish(_train(data_dir, tmp_path / "killed", "--resume"))
    _finish(full)
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    a.pop("seconds"), b.pop("seconds")  # wall-clock times differ
    assert a == b  # best epoch, best validation metrics and test metrics, exactly
    wa, wb = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)

    def epochs(run: str) -> list[dict]:
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]

    assert epochs("full") == epochs("killed") and len(epochs("full")) == EPOCHS
