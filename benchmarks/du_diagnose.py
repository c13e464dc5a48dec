"""Why is Du et al.'s model ("diffrec2") at popularity's level on Zhihu? What its denoiser ranks by, per step.

    python benchmarks/du_diagnose.py RUN [RUN ...] --data DATA_DIR [--json OUT.json]
    python benchmarks/du_diagnose.py --train-last OUT_DIR --config configs/diffrec2/zhihu.yaml --data DATA_DIR \
        [--seed 0] [--set key=value ...]
    python benchmarks/du_diagnose.py RUN [RUN ...] --data DATA_DIR --curves --json OUT.json

The first form loads trained ``diffrec2`` runs and ranks every validation row (full ranking by the rounding layer
``W f + b``, no exclusion, the target's rank = the number of items scored strictly above it) with:

* ``inference``: the model's own query (Algorithm 2 as configured: the ``unk`` slot at step N, one step,
  ``n_seeds`` draws averaged);
* ``slot n``: the denoiser's prediction when the slot holds the row's TRUE target, noised to step ``n``
  (``h_n = sqrt(abar_n) E(v) + sqrt(1 - abar_n) eps``, one draw), for a grid of ``n``: how much of the prediction
  comes from the slot rather than from the history; with it the MSE term ``||h^0 - f||^2`` at each ``n``;

and reports the item table's mean pairwise cosine (0 for a table of independent rows; 1 when every row points the
same way) and mean row norm. Prints one line per run and writes ``--json``.

``--train-last`` tests the consequence: it trains the same config with every training step drawn at ``n = N``
(the step inference starts from; ``DiffusionScheduler.sample_timesteps`` replaced in this process only), so the
slot never shows the answer and all of the loss must come from the history. The result (``metrics.json``) is in
``OUT_DIR``; the model is then not Du et al.'s method (its diffusion is gone), only a probe of it.

``--curves`` only collects the logged curves (loss, validation HR@20 per epoch), the loss settings, the test metrics
and the item table's cosine of the given runs into ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dreamrec.data.dataset import PreparedDataset
from dreamrec.diffusion.scheduler import DiffusionScheduler
from dreamrec.train.run import load_run

STEPS = (0, 10, 25, 50, 75, 90, 99)


def _hr20(scores: torch.Tensor, target: torch.Tensor) -> float:
    """HR@20 over rows: the target (1-based) ranks among the first 20 by strict count."""
    t = scores.gather(1, (target - 1)[:, None])
    return float(((scores > t).sum(1) < 20).double().mean())


@torch.no_grad()
def diagnose(run_dir: Path, ds: PreparedDataset, batch: int = 2048) -> dict:
    run = load_run(run_dir)
    model = run.model.eval()
    if run.config.model != "diffrec2":
        raise SystemExit(f"{run_dir}: a {run.config.model} run, not diffrec2")
    rows = ds.val
    N = model.scheduler.num_train_timesteps
    steps = [n for n in STEPS if n < N]
    hits: dict[str, list[float]] = {"inference": [], **{f"slot n={n + 1}": [] for n in steps}}
    mse: dict[str, list[float]] = {f"slot n={n + 1}": [] for n in steps}
    sizes = []
    gen = torch.Generator().manual_seed(0)
    for lo in range(0, len(rows), batch):
        h = torch.from_numpy(rows.history[lo : lo + batch])
        v = torch.from_numpy(rows.target[lo : lo + batch])
        sizes.append(len(v))
        W, b = model.rounding.weight, model.rounding.bias
        torch.manual_seed(lo)
        hits["inference"].append(_hr20(model.generate(h) @ W.T + b, v))
        e = model.slot_vector(v)
        for n in steps:
            nn_ = torch.full((len(v),), n, dtype=torch.long)
            h_n = model.scheduler.add_noise(e, torch.randn(e.shape, generator=gen), nn_)
            f = model.denoise(h, h_n, nn_)
            hits[f"slot n={n + 1}"].append(_hr20(f @ W.T + b, v))
            mse[f"slot n={n + 1}"].append(float((e - f).square().sum(-1).mean()))
    w = np.asarray(sizes, dtype=float) / sum(sizes)
    out = {k: round(100 * float(np.dot(w, v)), 2) for k, v in hits.items()}
    E = model.item_embedding.weight[1:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"run": str(run_dir), "val_rows": len(rows), "best_epoch": metrics["best_epoch"],
            "val_HR@20_by_query": out, "recorded_val_HR@20": round(100 * metrics["val"]["HR@20"], 2),
            "val_mse_by_slot": {k: round(float(np.dot(w, v)), 3) for k, v in mse.items()},
            "slot_norm_squared": float(model.config.hidden) if model.config.slot_norm else None,
            "item_mean_pairwise_cos": _table_cos(model),
            "item_mean_norm": round(float(E.norm(dim=1).mean()), 4),
            "test_HR@20": round(100 * metrics["test"]["HR@20"], 2)}


def train_last(out: Path, config: Path, data: Path, seed: int, overrides: list[str]) -> dict:
    from dreamrec.config import apply_overrides, build_run_config, load_yaml
    from dreamrec.train.run import train_run

    def at_last_step(self: DiffusionScheduler, batch_size: int, device=None) -> torch.Tensor:
        return torch.full((batch_size,), self.num_train_timesteps - 1, dtype=torch.long, device=device)

    DiffusionScheduler.sample_timesteps = at_last_step  # this process only: every training step at n = N
    raw = apply_overrides(load_yaml(config), [f"train.seed={seed}", "train.threads=1", *overrides])
    return train_run(build_run_config(raw, str(config)), data, out, progress=False)


def _table_cos(model: torch.nn.Module) -> float:
    """Mean pairwise cosine of the item table ``E`` (the history's and the diffusion target's table)."""
    U = torch.nn.functional.normalize(model.item_embedding.weight[1:].detach(), dim=1)
    n = U.shape[0]
    return round(float((U.sum(0).square().sum() - n) / (n * (n - 1))), 4)


def curves(run_dirs: list[Path]) -> list[dict]:
    """Each run's loss settings, its logged curve (loss, validation HR@20 and the rounding layer's mean pairwise
    cosine per epoch) and, for a finished run, the selected model's test metrics and item-table cosine."""
    import yaml

    out = []
    for r in run_dirs:
        cfg = yaml.safe_load((r / "config.yaml").read_text())
        rows = [json.loads(line) for line in (r / "log.jsonl").read_text().splitlines() if line.strip()]
        done = json.loads((r / "metrics.json").read_text()) if (r / "metrics.json").exists() else None
        out.append({"run": str(r), "params": {k: cfg["params"][k] for k in ("mse_weight", "rec_on", "target_grad")
                                             if k in cfg["params"]},
                    "best_epoch": done["best_epoch"] if done else None,
                    "test": {m: round(100 * done["test"][m], 2) for m in ("HR@20", "NDCG@20")} if done else None,
                    "curve": [{"epoch": x["epoch"], "loss": round(x["loss"], 3),
                               "val_HR@20": round(100 * x["val"]["HR@20"], 2) if "val" in x else None,
                               # the trainer's health log: the table it scores with, here the rounding layer [W; b]
                               "rounding_table_cos": round(x["item_cos"], 3) if "item_cos" in x else None}
                              for x in rows],
                    "selected_item_table_cos": _table_cos(load_run(r).model) if done else None})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="*")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--train-last", type=Path, help="train the probe (every step at n = N) into this folder")
    ap.add_argument("--config", type=Path, default=Path("configs/diffrec2/zhihu.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--curves", action="store_true", help="only collect the runs' logged curves into --json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.train_last is not None:
        m = train_last(args.train_last, args.config, args.data, args.seed, args.overrides)
        print(f"probe (n = N in training): best epoch {m['best_epoch']}, val HR@20 {100 * m['val']['HR@20']:.2f}, "
              f"test HR@20 {100 * m['test']['HR@20']:.2f} / NDCG@20 {100 * m['test']['NDCG@20']:.2f}")
        return
    if not args.runs:
        sys.exit("give trained diffrec2 run folders, or --train-last OUT")
    if args.curves:
        res = curves(args.runs)
        for c in res:
            print(c["run"], c["params"], [(x["epoch"], x["val_HR@20"]) for x in c["curve"]])
        if args.json:
            args.json.write_text(json.dumps({"command": " ".join(sys.argv), "runs": res}, indent=2) + "\n")
        return
    ds = PreparedDataset.load(args.data)
    results = []
    for r in args.runs:
        res = diagnose(r, ds)
        results.append(res)
        print(r, res["val_HR@20_by_query"], "recorded val", res["recorded_val_HR@20"], "mse", res["val_mse_by_slot"],
              "cos", res["item_mean_pairwise_cos"], flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
