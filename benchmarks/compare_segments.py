"""Two groups of finished runs (e.g. the seeds of two models) compared bucket by bucket of target frequency.

    python benchmarks/compare_segments.py --data DATA_DIR --group LABEL RUN [RUN ...] --group LABEL RUN [RUN ...]
        (a RUN may be a quoted glob pattern, e.g. 'runs/zhihu/sasrec/seed*')
        [--edges 0 1 6 21 51 101] [--k 20] [--splits val test] [--name NAME] [--threads 1] [--out DIR]

Every run is evaluated as training evaluated it (its own seed, eval mode, full ranking over all items,
every row counted) on each split. The rows are grouped by how often their target occurs in the
training data (:mod:`dreamrec.eval.segments`; bucket ``0``: items never seen in training). For each
bucket the script reports its share of the rows, HR@K and NDCG@K per group (mean and sample std over
the group's runs), Welch's t-test between the two groups' run means, and the bucket's contribution
``share * (mean_A - mean_B)`` to the overall difference (the contributions sum to it). It also
reports the rows whose target was seen in training (count >= 1) as one segment.

Writes ``{name}.json`` and ``{name}.png`` (HR@K per bucket, one panel per split) to
``benchmarks/results/segments/``; needs ``matplotlib`` and ``scipy`` (``pip install -e ".[bench]"``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS  # noqa: E402

from dreamrec.data.dataset import PreparedDataset  # noqa: E402
from dreamrec.eval.evaluate import rank_targets  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.eval.segments import DEFAULT_EDGES, bucket_labels, frequency_buckets, metrics_by_segment  # noqa: E402
from dreamrec.train.run import load_run  # noqa: E402

OUT = RESULTS / "segments"
SEEN = "seen (1+)"


def run_segments(run_dir: Path, ds: PreparedDataset, splits: list[str], edges: list[int], k: int) -> dict[str, Any]:
    """``{"run", "seed", split: [{"segment", "n", "share", "metrics"}]}`` for one run: the buckets, then
    ``seen (1+)`` (every row whose target occurs in training) and ``all``."""
    run = load_run(run_dir)
    run.check_dataset(ds, "--data")
    seed = run.config.train.seed
    counts = ds.train_item_counts()
    labels = bucket_labels(edges)
    out: dict[str, Any] = {"run": str(run_dir), "seed": seed}
    for split in splits:
        rows = getattr(ds, split)
        ranks = rank_targets(run.model, rows, max_len=int(run.info["max_len"]), seed=seed)
        seg = frequency_buckets(counts, rows.target, edges)
        never = (counts[rows.target] == 0).astype(np.int64)  # 0: seen in training, 1: never
        per = (metrics_by_segment(ranks, seg, labels, ks=(k,))
               + metrics_by_segment(ranks, never, [SEEN, "never seen"], ks=(k,))[:1]
               + metrics_by_segment(ranks, np.zeros_like(never), ["all"], ks=(k,)))
        out[split] = per
        print(f"{run_dir} {split}: " + ", ".join(f"{p['segment']} {100 * p['metrics'].get(f'HR@{k}', float('nan')):.2f}"
                                                for p in per), flush=True)
    return out


def compare(groups: dict[str, list[dict[str, Any]]], splits: list[str], k: int) -> dict[str, list[dict[str, Any]]]:
    """Per split and segment: share, each group's mean/std/per-run metric, Welch p and the contribution."""
    from scipy import stats

    (la, ra), (lb, rb) = list(groups.items())[:2]
    out: dict[str, list[dict[str, Any]]] = {}
    for split in splits:
        rows = []
        for j, seg in enumerate(ra[0][split]):
            entry: dict[str, Any] = {"segment": seg["segment"], "n": seg["n"], "share": seg["share"]}
            if not seg["n"]:  # an empty bucket: nothing to compare
                rows.append(entry)
                continue
            for metric in (f"HR@{k}", f"NDCG@{k}"):
                vals = {}
                for label, runs in ((la, ra), (lb, rb)):
                    v = np.array([r[split][j]["metrics"].get(metric, np.nan) for r in runs])
                    vals[label] = v
                    entry.setdefault(label, {})[metric] = {
                        "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                        "per_run": v.tolist()}
                a, b = vals[la], vals[lb]
                diff = float(a.mean() - b.mean())
                # undefined with one run in a group, or no spread in either
                defined = len(a) > 1 and len(b) > 1 and (a.std() > 0 or b.std() > 0)
                p = float(stats.ttest_ind(a, b, equal_var=False).pvalue) if defined else None
                entry.setdefault("difference", {})[metric] = {
                    "mean": diff, "welch_p": None if p is None or np.isnan(p) else p,
                    "contribution": diff * seg["share"] if seg["segment"] not in (SEEN, "all") else None}
            rows.append(entry)
        out[split] = rows
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.transforms

    k, (la, lb), splits = result["k"], result["labels"], result["splits"]
    metric = f"HR@{k}"
    fig, axes = plt.subplots(1, len(splits), figsize=(6.5 * len(splits), 4.5), squeeze=False)
    for ax, split in zip(axes[0], splits):
        rows = [r for r in result["comparison"][split] if r["segment"] != "all" and r["n"]]
        x = np.arange(len(rows))
        for off, label in ((-0.2, la), (0.2, lb)):
            m = [100 * r[label][metric]["mean"] for r in rows]
            s = [100 * r[label][metric]["std"] for r in rows]
            ax.bar(x + off, m, 0.4, yerr=s, capsize=3, label=label)
        ax.set_xticks(x, [f"{r['segment']}\n{100 * r['share']:.1f} %" for r in rows], fontsize=8)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 3)
        ax.set_xlabel("target's number of training occurrences (share of the rows)")
        ax.set_ylabel(f"{metric} (%), mean ± std over runs (symlog)")
        top = matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)
        for xi, r in zip(x, rows):
            c = r["difference"][metric]["contribution"]
            if c is not None:
                ax.text(xi, 0.96, f"{100 * c:+.3f}", transform=top, ha="center", va="top", fontsize=7, color="dimgray")
        ax.set_title(f"{split}: all rows {la} {100 * result['comparison'][split][-1][la][metric]['mean']:.2f} %, "
                     f"{lb} {100 * result['comparison'][split][-1][lb][metric]['mean']:.2f} %", fontsize=9)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.9))
    fig.suptitle(f"{result['name']}: {metric} by target frequency (grey, at the top: the bucket's contribution "
                 f"to {la} - {lb}, points)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def expand_runs(patterns: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Run directories from paths or glob patterns (quoted, so that the recorded command stays short)."""
    runs: list[str] = []
    for pat in patterns:
        if Path(pat).is_dir():
            runs.append(pat)
            continue
        found = sorted(q for q in glob.glob(pat) if Path(q).is_dir()) if glob.has_magic(pat) else []
        if not found:
            parser.error(f"not a run directory (nor a pattern matching any): {pat}")
        runs += found
    return runs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the prepared dataset the runs were trained on")
    p.add_argument("--group", nargs="+", action="append", required=True, metavar="LABEL RUN",
                   help="a label, then that group's finished run directories; give exactly two groups")
    p.add_argument("--edges", nargs="+", type=int, default=list(DEFAULT_EDGES),
                   help="lower edges of the training-count buckets (start at 0)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--splits", nargs="+", default=["val", "test"], choices=["val", "test"])
    p.add_argument("--name", default="segments")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if len(args.group) != 2 or any(len(g) < 2 for g in args.group):
        p.error("give exactly two --group LABEL RUN [RUN ...], each with at least one run")
    labels = [g[0] for g in args.group]
    if labels[0] == labels[1]:
        p.error(f"the two groups need different labels, got {labels[0]!r} twice")
    bucket_labels(args.edges)  # fail before any evaluation on bad edges
    if args.k < 1:
        p.error("--k must be >= 1")
    args.group = [[g[0], *expand_runs(g[1:], p)] for g in args.group]
    torch.set_num_threads(args.threads)
    ds = PreparedDataset.load(args.data)
    groups = {g[0]: [run_segments(Path(r), ds, args.splits, args.edges, args.k) for r in g[1:]] for g in args.group}
    result = {
        "name": args.name, "k": args.k, "edges": args.edges, "labels": labels, "splits": args.splits,
        "runs": {label: [r["run"] for r in runs] for label, runs in groups.items()},
        "comparison": compare(groups, args.splits, args.k),
        "per_run": groups,
        "machine": machine(), "command": command_line(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / f"{args.name}.png")
    print(markdown(result))
    print("wrote", args.out / f"{args.name}.json", args.out / f"{args.name}.png")


def markdown(result: dict[str, Any]) -> str:
    """One table per split: segment, share, each group's HR@K and NDCG@K, difference, p, contribution."""
    k, (la, lb) = result["k"], result["labels"]
    hr, nd = f"HR@{k}", f"NDCG@{k}"
    lines = []
    for split in result["splits"]:
        lines += [f"{split}:", "",
                  f"| target's training count | rows | {la} {hr} | {lb} {hr} | difference (Welch p) | contribution | "
                  f"{la} {nd} | {lb} {nd} |", "|---|---|---|---|---|---|---|---|"]
        for r in result["comparison"][split]:
            if not r["n"]:
                lines.append(f"| {r['segment']} | 0 | | | | | | |")
                continue
            d = r["difference"][hr]
            pv = "—" if d["welch_p"] is None else f"{d['welch_p']:.2g}"
            c = "" if d["contribution"] is None else f"{100 * d['contribution']:+.3f}"
            cell = lambda lab, m: f"{100 * r[lab][m]['mean']:.2f} ± {100 * r[lab][m]['std']:.2f}"  # noqa: E731
            lines.append(f"| {r['segment']} | {r['n']:,} ({100 * r['share']:.1f} %) | {cell(la, hr)} | {cell(lb, hr)} | "
                         f"{100 * d['mean']:+.2f} ({pv}) | {c} | {cell(la, nd)} | {cell(lb, nd)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
