"""DreamRec with a residual denoiser: accuracy against the inference scale s of its correction.

    python benchmarks/dreamrec_correction_scale.py --runs RUN_DIR [RUN_DIR ...] --data DATA_DIR
        [--scales 0.5 1 2 4 8] [--name zhihu-ce-mlp2-res-do-b2048] [--exclude-seen] [--threads 1] [--out DIR]

A run trained with ``denoiser_residual: true`` generates ``f(x_t, c, t) = c + MLP(...)``; with
``correction_scale = s`` every generation step uses ``c + s (f - c)`` instead (``s = 1``: as trained).
The scale is set on the loaded model (``set_sampler(correction_scale=s)``), no retraining. Each run is
evaluated on BOTH the validation and the test split at every ``s``, with its own training seed as the
evaluation seed (``train.seed`` of the run's config, as training evaluated it).
``--exclude-seen`` also evaluates every point with the history's items removed from the ranking.

The scale is chosen on VALIDATION only: the ``s`` with the best mean validation ``--metric`` over the runs
(test never enters the choice). Writes ``{name}.json`` (every run, split and scale, plus the means) and
``{name}.png`` (mean HR@20 and NDCG@20 against s, validation and test, the chosen s marked) to
``benchmarks/results/dreamrec_correction_scale/``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS  # noqa: E402

from dreamrec.data.dataset import PreparedDataset  # noqa: E402
from dreamrec.eval.evaluate import evaluate  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.train.run import load_run  # noqa: E402

OUT = RESULTS / "dreamrec_correction_scale"
METRICS = ("HR@20", "NDCG@20")


def sweep_run(run_dir: Path, ds: PreparedDataset, scales: list[float], exclude_seen: bool) -> dict[str, Any]:
    """``{"run", "seed", "points": [{"s", "val", "test" (, "val_excl", "test_excl")}]}`` for one run."""
    run = load_run(run_dir)
    run.check_dataset(ds, "--data")
    model = run.model
    if not getattr(model.config, "denoiser_residual", False):
        raise SystemExit(f"{run_dir}: not a DreamRec run with denoiser_residual: true")
    seed = run.config.train.seed  # the seed training evaluated with
    max_len = int(run.info["max_len"])
    points = []
    for s in scales:
        model.set_sampler(correction_scale=s)
        point: dict[str, Any] = {"s": s}
        for split in ("val", "test"):
            for excl in (False, True) if exclude_seen else (False,):
                r = evaluate(model, getattr(ds, split), max_len=max_len, seed=seed, exclude_seen=excl)
                point[split + ("_excl" if excl else "")] = {k: r[k] for k in METRICS}
        points.append(point)
        print(f"{run_dir} s={s:g}: val HR@20 {point['val']['HR@20']:.4f} test HR@20 {point['test']['HR@20']:.4f}",
              flush=True)
    return {"run": str(run_dir), "seed": seed, "points": points}


def means(runs: list[dict[str, Any]], scales: list[float]) -> list[dict[str, Any]]:
    """Mean and sample std over runs of every metric, per scale and split."""
    out = []
    for i, s in enumerate(scales):
        row: dict[str, Any] = {"s": s}
        for split in runs[0]["points"][i]:
            if split == "s":
                continue
            row[split] = {}
            for k in METRICS:
                v = np.array([r["points"][i][split][k] for r in runs])
                row[split][k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        out.append(row)
    return out


def plot(summary: list[dict[str, Any]], chosen: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = [r["s"] for r in summary]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, k in zip(axes, METRICS):
        for split, style in (("val", "o-"), ("test", "s-")):
            y = [100 * r[split][k]["mean"] for r in summary]
            ax.plot(s, y, style, label=split)
        ax.axvline(chosen, color="grey", ls=":", label=f"chosen on val: s = {chosen:g}")
        ax.axvline(1.0, color="black", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("correction scale s (log)")
        ax.set_ylabel(f"{k} (%), mean over runs")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="finished DreamRec run directories")
    p.add_argument("--data", type=Path, required=True, help="the prepared dataset the runs were trained on")
    p.add_argument("--scales", nargs="+", type=float, default=[0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 100])
    p.add_argument("--metric", default="HR@20", choices=METRICS, help="validation metric that chooses s")
    p.add_argument("--name", default="correction-scale")
    p.add_argument("--exclude-seen", action="store_true", help="also evaluate with the history's items excluded")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if any(s < 0 for s in args.scales):
        raise SystemExit("--scales must be >= 0")
    torch.set_num_threads(args.threads)
    scales = sorted(set(args.scales))
    ds = PreparedDataset.load(args.data)
    runs = [sweep_run(r, ds, scales, args.exclude_seen) for r in args.runs]
    summary = means(runs, scales)
    best = max(summary, key=lambda r: r["val"][args.metric]["mean"])
    chosen = best["s"]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "name": args.name,
        "chosen_scale": chosen,
        "chosen_on": f"mean validation {args.metric}",
        "chosen": best,
        "summary": summary,
        "runs": runs,
        "machine": machine(),
        "command": command_line(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(summary, chosen, args.out / f"{args.name}.png", f"{args.name}: {len(runs)} runs, correction scale at inference")
    t = best["test"]
    print(f"chosen s = {chosen:g} (mean val {args.metric} {100 * best['val'][args.metric]['mean']:.2f} %): "
          f"test HR@20 {100 * t['HR@20']['mean']:.2f} ± {100 * t['HR@20']['std']:.2f}, "
          f"NDCG@20 {100 * t['NDCG@20']['mean']:.2f} ± {100 * t['NDCG@20']['std']:.2f} "
          f"-> {args.out / (args.name + '.json')}")


if __name__ == "__main__":
    main()
