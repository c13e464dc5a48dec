"""Groups of finished runs under the new-item policy (:mod:`dreamrec.models.new_items`), with its
offset ``beta`` chosen on validation for each group, then compared on test.

    python benchmarks/new_item_offset.py --data DATA_DIR --group LABEL RUN [RUN ...] [--group LABEL RUN ...]
        (a RUN may be a quoted glob pattern, e.g. 'runs/zhihu/sasrec/seed*')
        [--own-group LABEL RUN ...] [--betas -3.5 -3.25 ... 4] [--metric HR@20] [--name NAME] [--threads 1]
        [--out DIR]

Items that occur nowhere in the training data get their standardised new-item score plus ``beta``; every
other item keeps its standardised score. An ``--own-group`` shifts the model's own standardised scores of
new items instead (``own_scores``: the ablation of the new-item score; the same as ``--group`` for a model
without new-item scores). Every run is evaluated as training evaluated it (its own seed,
eval mode, full ranking, every row counted) on validation and test, at ``beta = off`` (the model's own
ranking) and at every ``--betas`` value. Each group takes the point (``off`` included) with the best mean
validation ``--metric`` over its runs; test never enters the choice. The report gives each group's chosen
point with test HR@20 / NDCG@20 (mean and sample std over runs), its ``off`` row, and with two or more
groups Welch's t-test of the first group against each other at their chosen points.

Writes ``{name}.json`` and ``{name}.png`` (mean HR@20 against beta, validation and test, per group) to
``benchmarks/results/new_items/``; needs ``matplotlib`` and ``scipy`` (``pip install -e ".[bench]"``).
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
from compare_segments import expand_runs  # noqa: E402

from dreamrec.data.dataset import PreparedDataset  # noqa: E402
from dreamrec.eval.metrics import metrics_from_ranks  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.eval.new_items import ranks_by_offset  # noqa: E402
from dreamrec.models.new_items import new_item_mask  # noqa: E402
from dreamrec.train.run import load_run  # noqa: E402

OUT = RESULTS / "new_items"
METRICS = ("HR@20", "NDCG@20")
OFF = "off"


def sweep_run(run_dir: str, ds: PreparedDataset, new: np.ndarray, betas: list[float],
              own_scores: bool = False) -> dict[str, Any]:
    """``{"run", "seed", "points": {beta label: {split: {metric: value}, split + "_new": HR@20 on new targets}}}``."""
    run = load_run(run_dir)
    run.check_dataset(ds, "--data")
    seed = run.config.train.seed
    points: dict[str, dict[str, Any]] = {}
    for split in ("val", "test"):
        rows = ds.split(split)
        ranks = ranks_by_offset(run.model, rows, new, [None, *betas], max_len=int(run.info["max_len"]), seed=seed,
                                batch_size=run.config.train.eval_batch_size, own_scores=own_scores)
        new_target = new[rows.target]
        for b, r in ranks.items():
            m = metrics_from_ranks(r)
            p = points.setdefault(label(b), {})
            p[split] = {k: m[k] for k in METRICS}
            p[split + "_new_targets"] = float((r[new_target] < 20).mean()) if new_target.any() else None
    print(f"{run_dir}: val HR@20 off {points[OFF]['val']['HR@20']:.4f}, "
          f"best {max(v['val']['HR@20'] for v in points.values()):.4f}", flush=True)
    return {"run": run_dir, "seed": seed, "points": points}


def label(beta: float | None) -> str:
    return OFF if beta is None else f"{beta:g}"


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per beta label and split: mean, sample std and the per-run values of every metric."""
    out: dict[str, dict[str, Any]] = {}
    for b in runs[0]["points"]:
        out[b] = {}
        for split in ("val", "test"):
            out[b][split] = {}
            for k in METRICS:
                v = np.array([r["points"][b][split][k] for r in runs])
                out[b][split][k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                                    "runs": v.tolist()}
    return out


def welch(a: list[float], b: list[float]) -> float | None:
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if np.isnan(p) else p


def plot(groups: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, split in zip(axes, ("val", "test")):
        for name, g in groups.items():
            xs = [float(b) for b in g["summary"] if b != OFF]
            ys = [100 * g["summary"][b][split]["HR@20"]["mean"] for b in g["summary"] if b != OFF]
            line, = ax.plot(xs, ys, "o-", ms=3, label=f"{name} (chosen: {g['chosen']})")
            ax.axhline(100 * g["summary"][OFF][split]["HR@20"]["mean"], color=line.get_color(), ls=":", lw=1)
        ax.set_xlabel("beta, the new items' offset (row standard deviations)")
        ax.set_ylabel(f"{split} HR@20 (%), mean over runs")
        ax.set_title(f"{split} (dotted: policy off)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict[str, Any]) -> str:
    head = ("| group | runs | chosen beta | val HR@20 | test HR@20 | test NDCG@20 | test HR@20, policy off | "
            "new targets hit (test) |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for name, g in result["groups"].items():
        c, off = g["summary"][g["chosen"]], g["summary"][OFF]
        hit = [r["points"][g["chosen"]]["test_new_targets"] for r in g["runs"]]
        hit_s = "—" if any(h is None for h in hit) else f"{100 * float(np.mean(hit)):.1f} %"
        shown = f"{name} (own scores shifted)" if g.get("own_scores") else name
        lines.append(f"| {shown} | {len(g['runs'])} | {g['chosen']} | {100 * c['val']['HR@20']['mean']:.2f} | "
                     f"{100 * c['test']['HR@20']['mean']:.2f} ± {100 * c['test']['HR@20']['std']:.2f} | "
                     f"{100 * c['test']['NDCG@20']['mean']:.2f} ± {100 * c['test']['NDCG@20']['std']:.2f} | "
                     f"{100 * off['test']['HR@20']['mean']:.2f} ± {100 * off['test']['HR@20']['std']:.2f} | {hit_s} |")
    for cmp in result["comparisons"]:
        p = {k: "—" if v is None else f"{v:.2g}" for k, v in cmp["welch_p"].items()}
        lines.append(f"\n{cmp['a']} - {cmp['b']} at their chosen points: test HR@20 {100 * cmp['difference']['HR@20']:+.2f} "
                     f"(Welch p {p['HR@20']}), NDCG@20 {100 * cmp['difference']['NDCG@20']:+.2f} (p {p['NDCG@20']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the prepared dataset the runs were trained on")
    p.add_argument("--group", nargs="+", action="append", required=True, metavar="LABEL RUN",
                   help="a label, then that group's finished run directories")
    p.add_argument("--own-group", nargs="+", action="append", default=[], metavar="LABEL RUN",
                   help="as --group, with new items scored by the model's own scores shifted (after the --groups)")
    p.add_argument("--betas", nargs="+", type=float, default=[x / 4 for x in range(-14, 17)], help="offsets to try (default -3.5 to 4 by 0.25)")
    p.add_argument("--metric", default="HR@20", choices=METRICS, help="validation metric that chooses beta")
    p.add_argument("--name", default="new-items")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    specs = [(g, False) for g in args.group] + [(g, True) for g in args.own_group]
    if any(len(g) < 2 for g, _ in specs):
        p.error("each --group and --own-group needs a label and at least one run")
    names = [g[0] for g, _ in specs]
    if len(set(names)) != len(names):
        p.error(f"group labels must differ, got {names}")
    if any(not np.isfinite(b) for b in args.betas):
        p.error("--betas must be finite numbers (the policy off is always evaluated)")
    betas = sorted(set(args.betas))
    groups_runs = {g[0]: (expand_runs(g[1:], p), own) for g, own in specs}
    torch.set_num_threads(args.threads)
    ds = PreparedDataset.load(args.data)
    new = new_item_mask(ds)
    groups: dict[str, Any] = {}
    for name, (run_dirs, own) in groups_runs.items():
        runs = [sweep_run(r, ds, new, betas, own) for r in run_dirs]
        summary = summarise(runs)
        chosen = max(summary, key=lambda b: summary[b]["val"][args.metric]["mean"])
        edge = chosen in (label(betas[0]), label(betas[-1])) and len(betas) > 1
        if edge:
            print(f"warning: {name} chose beta = {chosen}, the edge of --betas; widen the grid", flush=True)
        groups[name] = {"chosen": chosen, "at_grid_edge": edge, "own_scores": own, "summary": summary, "runs": runs}
    first = names[0]
    comparisons = []
    for other in names[1:]:
        a, b = groups[first], groups[other]
        ca, cb = a["summary"][a["chosen"]]["test"], b["summary"][b["chosen"]]["test"]
        comparisons.append({"a": first, "b": other,
                            "difference": {k: ca[k]["mean"] - cb[k]["mean"] for k in METRICS},
                            "welch_p": {k: welch(ca[k]["runs"], cb[k]["runs"]) for k in METRICS}})
    result = {
        "name": args.name, "data": str(args.data), "n_new_items": int(new.sum()),
        "new_target_share": {s: float(new[ds.split(s).target].mean()) for s in ("val", "test")},
        "chosen_on": f"mean validation {args.metric}", "betas": betas,
        "groups": groups, "comparisons": comparisons,
        "machine": machine(), "command": command_line(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(groups, args.out / f"{args.name}.png", f"{args.name}: new-item offset chosen on validation")
    md = markdown(result)
    (args.out / f"{args.name}.md").write_text(f"# {args.name}\n\n{md}\n\nCommand: `{result['command']}`  \n"
                                              f"Machine: {result['machine']}; {result['date']}\n")
    print(md)
    print("wrote", args.out / f"{args.name}.json")


if __name__ == "__main__":
    main()
