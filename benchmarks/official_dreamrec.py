"""Run the DreamRec authors' code (YangZhengyi98/DreamRec) and time it, for side-by-side speed ratios.

Their ``DreamRec.py`` is run unmodified from a plain checkout (``git archive`` of the repository; nothing of it
is copied into this project), as their README runs it on Zhihu, in a scratch folder whose ``data/zhihu``
points at the split. Timing comes from when each of its output lines arrives (it runs with ``python -u``),
not from its own whole-second "Time cost": one epoch is the time between two consecutive ``Epoch`` lines
(so start-up and data loading are excluded); its validation pass (500-step DDPM over every full batch of
100 validation sequences) is the time between its ``VAL PHRASE`` and ``TEST PHRASE`` lines, printed after
epoch 10 only.

    python benchmarks/official_dreamrec.py --checkout /work/official/DreamRec --zhihu DIR [--epochs 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# the authors' README command for Zhihu
README_ARGS = ["--data", "zhihu", "--timesteps", "500", "--lr", "0.01", "--beta_sche", "linear", "--w", "4",
               "--optimizer", "adamw", "--diffuser_type", "mlp1", "--random_seed", "100"]
BATCH = 256  # their --batch_size default
EVAL_BATCH = 100  # their evaluate()'s batch size


def run_official(checkout: Path, zhihu: Path, epochs: int = 3, threads: int = 1) -> dict[str, Any]:
    """Run their training for ``epochs`` epochs; seconds per epoch (every interval between epoch lines),
    training samples per second, and, when ``epochs >= 10``, seconds per 1,000 validation sequences."""
    import pandas as pd

    script = Path(checkout) / "DreamRec.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: --checkout must be a plain checkout of YangZhengyi98/DreamRec")
    if epochs < 2:
        raise ValueError("epochs must be >= 2 (an epoch is timed between two epoch lines)")
    zhihu = Path(zhihu).resolve()
    n_train = len(pd.read_pickle(zhihu / "train_data.df"))
    n_val = len(pd.read_pickle(zhihu / "val_data.df"))
    epoch_samples = (n_train // BATCH) * BATCH  # their loop: int(rows / batch) batches of `batch` sampled rows
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix="dreamrec-official-") as tmp:
        (Path(tmp) / "data").mkdir()
        (Path(tmp) / "data" / "zhihu").symlink_to(zhihu)
        cmd = [sys.executable, "-u", str(script.resolve()), *README_ARGS, "--epoch", str(epochs)]
        lines: list[tuple[float, str]] = []
        t0 = time.perf_counter()
        with subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append((time.perf_counter() - t0, line.rstrip()))
        if proc.returncode != 0:
            tail = "\n".join(text for _, text in lines[-20:])
            raise RuntimeError(f"the authors' DreamRec.py exited with {proc.returncode}:\n{tail}")
    epoch_t = [t for t, text in lines if text.startswith("Epoch ")]
    if len(epoch_t) < 2:
        raise RuntimeError("fewer than two epoch lines in the authors' output")
    per_epoch = [b - a for a, b in zip(epoch_t, epoch_t[1:])]
    # an epoch after a validation also holds that validation: time only epochs whose interval holds none
    val_marks = [t for t, text in lines if "VAL PHRASE" in text]
    clean = [d for (a, b), d in zip(zip(epoch_t, epoch_t[1:]), per_epoch) if not any(a < v < b for v in val_marks)]
    best = min(clean)
    out: dict[str, Any] = {
        "command": " ".join(["python", "-u", "DreamRec.py", *README_ARGS, "--epoch", str(epochs)]),
        "threads": threads, "epochs": epochs, "epoch_samples": epoch_samples, "s_per_epoch_all": clean,
        "s_per_epoch": best, "train_samples_per_s": epoch_samples / best,
        "loss": [text for _, text in lines if text.startswith("Epoch ")],
    }
    test_marks = [t for t, text in lines if "TEST PHRASE" in text]
    if val_marks and test_marks:
        n_eval = (n_val // EVAL_BATCH) * EVAL_BATCH
        seconds = test_marks[0] - val_marks[0]
        out.update(val_sequences=n_eval, val_seconds=seconds, eval_s_per_1k=1000 * seconds / n_eval)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkout", type=Path, required=True, help="plain checkout of YangZhengyi98/DreamRec")
    ap.add_argument("--zhihu", type=Path, required=True, help="the authors' Zhihu folder (*_data.df)")
    ap.add_argument("--epochs", type=int, default=3, help=">= 10 also times their validation")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(json.dumps(run_official(args.checkout, args.zhihu, args.epochs, args.threads), indent=2))


if __name__ == "__main__":
    main()
