"""What does a trained bag-of-items model rank: its own input, the popular items, or what follows the history?

    python benchmarks/experiments/diffrec/copy_share.py RUN [RUN ...] --data DATA_DIR [--name NAME] [--split val]

For each finished run (any model; DiffRec's ``score`` is its reconstruction of the history's interaction vector),
on every row of the split with a non-empty history, three measurements of the same scores:

* ``copy``: of the top ``m`` items of the all-item ranking (``m`` = the row's distinct history items), the share
  that are history items; 100 % means the ranking starts by returning the input;
* ``popular``: of the top 20 once the history is excluded (the DiffRec table's protocol), the share that are also
  in popularity's top 20 under the same exclusion (popularity fitted on the training targets);
* ``HR@20`` with the history excluded, on those rows.

A model that learned to copy its input, with a popularity prior for the rest, shows a high ``copy`` and a high
``popular`` share and popularity's HR@20. Nothing is retrained. Writes
``benchmarks/results/survey_checks/NAME.{json,md}``.
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT.parent / "src"))

from dreamrec.data.dataset import PreparedDataset
from dreamrec.eval.report import command_line, machine
from dreamrec.models.popularity import Popularity
from dreamrec.train.run import load_run

OUT = ROOT / "results" / "survey_checks"
K = 20


def excluded(scores: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """``scores`` [B, n_items] (column j = item j + 1) with each row's history items set to -inf."""
    out = scores.clone()
    rows, cols = torch.nonzero(history > 0, as_tuple=True)
    out[rows, history[rows, cols] - 1] = float("-inf")
    return out


@torch.no_grad()
def measure(model: Any, pop: Popularity, history: np.ndarray, target: np.ndarray, batch: int = 512) -> dict[str, float]:
    copy, popular, hits, n = 0.0, 0.0, 0, 0
    for s in range(0, len(history), batch):
        h = torch.from_numpy(history[s : s + batch]).long()
        t = torch.from_numpy(target[s : s + batch]).long()
        scores = model.score(h).float()
        pop_top = excluded(pop.score(h).float(), h).topk(K, dim=1).indices
        for i in range(len(h)):
            items = torch.unique(h[i][h[i] > 0]) - 1
            top_m = scores[i].topk(len(items)).indices
            copy += float(torch.isin(top_m, items).float().mean())
        top = excluded(scores, h).topk(K, dim=1).indices
        popular += float(sum(len(np.intersect1d(a, b)) for a, b in zip(top.numpy(), pop_top.numpy()))) / K
        hits += int((top == (t - 1)[:, None]).any(1).sum())
        n += len(h)
    return {"rows": n, "copy": copy / n, "popular": popular / n, "HR@20": hits / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--name", default="diffrec-copy-share-zhihu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dataset = PreparedDataset.load(args.data)
    rows = getattr(dataset, args.split)
    keep = (rows.history > 0).any(1)
    history, target = rows.history[keep], rows.target[keep]
    results: dict[str, Any] = {}
    for run_dir in args.runs:
        run = load_run(run_dir)
        run.check_dataset(dataset, "--data")
        model = run.model.eval()
        pop = Popularity(dataset.n_items, model.max_len)
        pop.fit_statistics(dataset)
        results[str(run_dir)] = {"model": run.config.model, **measure(model, pop, history, target)}
    result = {"split": args.split, "rows_with_history": int(keep.sum()), "rows": int(len(keep)), "runs": results,
              "command": command_line(), "machine": machine(),
              "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {args.name}: what a trained model ranks first", "",
             f"`{result['command']}`, {result['date']}; {result['machine']}.", "",
             f"{args.split} rows with a non-empty history ({result['rows_with_history']} of {result['rows']}), in %. "
             "`copy`: share of the all-item top m that are history items (m = distinct history items); `popular`: "
             "share of the top 20 without the history that popularity's top 20 (same exclusion) also holds; HR@20 "
             "without the history.", "",
             "| run | model | copy | popular | HR@20 |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| `{'/'.join(Path(name).parts[-2:])}` | {r['model']} | {100 * r['copy']:.1f} "
                     f"| {100 * r['popular']:.1f} | {100 * r['HR@20']:.2f} |")
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
