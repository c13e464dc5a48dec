"""End-to-end smoke of the newcomer's path, run in an environment with the core install alone.

For every registered model: ``dreamrec prepare`` a tiny synthetic log (CSV) -> ``train`` one epoch
(the model's small demo settings) -> ``evaluate`` -> ``recommend`` (known ids, and ids the catalog
does not know). Then ``dreamrec demo --epochs 1`` (the README's first command, shortened) and
``dreamrec serve`` without the ``serve`` extra, which must fail with a message naming it.

Each step runs the installed ``dreamrec`` command as a user would; any non-zero exit or missing
output fails the smoke with the step's stderr. Usage: ``python .ci/smoke.py BIN_DIR`` where
``BIN_DIR`` holds that environment's ``python`` and ``dreamrec``.
"""
from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fail(step: str, proc: subprocess.CompletedProcess[str]) -> None:
    print(f"SMOKE FAILED at {step} (exit {proc.returncode})\n--- stdout\n{proc.stdout[-3000:]}\n"
          f"--- stderr\n{proc.stderr[-5000:]}", file=sys.stderr)
    raise SystemExit(1)


def run(step: str, cmd: list[str], expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if expect_ok and proc.returncode != 0:
        fail(step, proc)
    print(f"  {step}: exit {proc.returncode} ({time.time() - t:.1f} s)", flush=True)
    return proc


def write_log(path: Path, meta: Path, seed: int = 0) -> None:
    """A small log with sequential structure (users walk a ring of 40 items, next = +1 or +2) and a
    metadata table with a text per item (iDreamRec reads item texts)."""
    with open(meta, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "title"])
        for j in range(40):
            w.writerow([f"i{j}", f"item {j} of shelf {j // 8}"])
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "ts"])
        for u in range(120):
            item = rng.randrange(40)
            for t in range(rng.randint(5, 12)):
                w.writerow([f"u{u}", f"i{item}", 1_600_000_000 + 60 * t])
                item = (item + rng.choice((1, 1, 2))) % 40


def main() -> None:
    bindir = Path(sys.argv[1]).resolve()
    py, cli = str(bindir / "python"), str(bindir / "dreamrec")
    listing = subprocess.run(
        [py, "-c", "import json; from dreamrec.models import MODELS; from dreamrec.demo import DEMO_PARAMS; "
         "print(json.dumps({m: DEMO_PARAMS.get(m, {}) for m in MODELS}))"],
        capture_output=True, text=True,
    )
    if listing.returncode != 0:
        fail("import dreamrec", listing)
    models: dict[str, dict] = json.loads(listing.stdout)
    if os.environ.get("SMOKE_MODELS"):  # a subset, when debugging the smoke itself
        models = {m: models[m] for m in os.environ["SMOKE_MODELS"].split(",")}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_log(root / "log.csv", root / "items.csv")
        run("prepare", [cli, "prepare", str(root / "log.csv"), "--format", "csv", "--user-col", "user",
                        "--item-col", "item", "--time-col", "ts", "--item-meta", str(root / "items.csv"),
                        "--out", str(root / "data")])
        for name, params in models.items():
            print(f"{name}:", flush=True)
            config = root / f"{name}.json"  # JSON is YAML: no YAML writer needed here
            config.write_text(json.dumps({"model": name, "params": params,
                                          "train": {"epochs": 1, "batch_size": 64, "eval_batch_size": 256}}))
            out = root / "runs" / name
            run("train", [cli, "train", "--config", str(config), "--data", str(root / "data"), "--out", str(out),
                          "--no-progress"])
            proc = run("evaluate", [cli, "evaluate", str(out), "--json"])
            metrics = json.loads(proc.stdout)
            if metrics["n"] != 120 or not 0 <= metrics["HR@20"] <= 1:
                fail(f"{name} evaluate: n={metrics['n']} HR@20={metrics['HR@20']}", proc)
            proc = run("recommend", [cli, "recommend", str(out), "--history", "i1,i2,i3", "--k", "5"])
            rec = json.loads(proc.stdout)
            if len(rec["items"]) != 5 or rec["unknown"]:
                fail(f"{name} recommend: {rec}", proc)
            proc = run("recommend unknown ids", [cli, "recommend", str(out), "--history", "1,2", "--k", "5"])
            rec = json.loads(proc.stdout)
            if len(rec["items"]) != 5 or "warning" not in proc.stderr:
                fail(f"{name} recommend with unknown ids: {rec}", proc)
        print("demo:", flush=True)
        proc = run("demo --epochs 1", [cli, "demo", "--epochs", "1"])
        if "Bayes-optimal" not in proc.stdout:
            fail("demo table", proc)
        has_serve = subprocess.run([py, "-c", "import fastapi, uvicorn"], capture_output=True).returncode == 0
        if not has_serve:
            proc = run("serve without the extra", [cli, "serve", str(root / "runs" / "popularity")], expect_ok=False)
            if proc.returncode != 2 or "dreamrec[serve]" not in proc.stderr or "Traceback" in proc.stderr:
                fail("serve without the serve extra must name the extra, without a traceback", proc)
    print(f"smoke passed: {len(models)} models, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
