"""Does a learned residual per item let collaborative signal into iDreamRec? The planted pattern of
``tests/test_idreamrec_residual.py`` (synthetic topics, 400 users, 80 items), with the item texts as generated (they
name the item's topic) and shuffled across items (they say nothing about it), test HR@20 after each of
``--epochs`` epochs' validation checkpoints (the trainer selects on validation HR@20).

    python benchmarks/idreamrec_residual_planted.py [--epochs 40] [--seeds 0 1]

Rows: ``idreamrec`` (the fixed text table), ``idreamrec-residual`` with the stop-gradient target (default) and with
the joint target, SASRec-CE and popularity for scale. One CPU thread; about 20 s per model and 15 epochs on a quiet
thread. Writes ``benchmarks/results/survey_checks/idreamrec_residual_planted.json`` after every run; a stopped
invocation, started again, skips the runs already there.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from dreamrec.config import TrainConfig  # noqa: E402
from dreamrec.data.synthetic import SyntheticConfig, generate  # noqa: E402
from dreamrec.eval.evaluate import evaluate  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.models import build_model  # noqa: E402
from dreamrec.train.trainer import train  # noqa: E402

OUT = ROOT / "results" / "survey_checks" / "idreamrec_residual_planted.json"
TEXT = dict(text_encoder="hashing:32", hidden=32, n_layers=1, n_heads=2, timesteps=100, beta_end=0.2,
            intent_source="topic", guidance_w=1.0, intent_rho=1.0, sampler="onestep")
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("idreamrec", "idreamrec", TEXT),
    ("idreamrec-residual (stopgrad target)", "idreamrec-residual", TEXT),
    ("idreamrec-residual (joint target)", "idreamrec-residual", {**TEXT, "residual_target": "joint"}),
    ("sasrec-ce", "sasrec", {"loss": "ce", "hidden": 32, "n_layers": 1}),
]


def fit(name: str, params: dict[str, Any], ds: Any, epochs: int, seed: int, tmp: Path) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = build_model(name, ds.n_items, 10, {**params, "text_cache_dir": str(tmp / "cache")}
                        if "text_encoder" in params else params)
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=3e-3, optimizer="adamw", val_metric="HR@20", patience=100,
                      eval_every=5, seed=seed, max_len=10, health_checks=False)
    t0 = time.perf_counter()
    r = train(model, ds, cfg, tmp / "run", progress=False, log=None)
    return {"test_HR@20": evaluate(model, ds.test, ks=(20,))["HR@20"], "best_epoch": r.best_epoch,
            "val_HR@20": [h.get("val", {}).get("HR@20") for h in r.history if h.get("val")],
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = generate(SyntheticConfig(n_users=400, n_items=80, n_topics=4, seed=3)).dataset
    meta = ds.item_meta.copy()
    meta["text"] = meta["text"].values[np.random.default_rng(0).permutation(len(meta))]
    data = {"shuffled texts": dataclasses.replace(ds, item_meta=meta), "texts": ds}
    pop = build_model("popularity", ds.n_items, 10)
    pop.fit_statistics(ds)
    res: dict[str, Any] = {"command": command_line(), "machine": machine(), "epochs": args.epochs,
                           "popularity_test_HR@20": evaluate(pop, ds.test, ks=(20,))["HR@20"], "runs": []}
    if args.out.exists():  # resume: keep the runs of an earlier invocation with the same epochs
        old = json.loads(args.out.read_text())
        if old.get("epochs") == args.epochs:
            res["runs"] = old["runs"]
    done = {(r["row"], r["texts"], r["seed"]) for r in res["runs"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for texts, d in data.items():
                for label, name, params in ROWS:
                    if (name == "sasrec" and texts != "texts") or (label, texts, seed) in done:
                        continue  # SASRec reads no text: one run
                    run = {"row": label, "texts": texts, "seed": seed,
                           **fit(name, params, d, args.epochs, seed, Path(tmp))}
                    print(f"{label:38s} {texts:15s} seed {seed}: test HR@20 {run['test_HR@20']:.4f} "
                          f"(best epoch {run['best_epoch']}, {run['seconds']:.0f} s)", flush=True)
                    res["runs"].append(run)
                    res["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                    args.out.write_text(json.dumps(res, indent=1) + "\n")  # after every run: resumable
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
