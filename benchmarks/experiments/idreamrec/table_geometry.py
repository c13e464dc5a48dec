"""Why scaling ranks near popularity and whitening does not: the geometry of the item table and of the queries.

    python benchmarks/experiments/idreamrec/table_geometry.py RUN [RUN ...] --data DATA_DIR [--rows 1000]

For the raw text embeddings ``e_j`` of the first run (every iDreamRec run of one dataset holds the same ones) and
both transforms of iDreamRec Sec. 3.2 (``dreamrec.text.transforms``), the item table ``x_j = A(e_j)``:

* ``mean_share``: ``|mean_j x_j|^2 / mean_j |x_j|^2``, the part of a target's second moment that every item shares
  (a constant an x0-MSE loss is mostly spent on, and that carries nothing for the ranking);
* ``top1_share`` and ``participation``: the largest eigenvalue's share of the item covariance and its participation
  ratio ``(sum lambda)^2 / sum lambda^2`` (how many directions the items spread over);
* ``mean_cos``: the mean cosine between two different items.

For each run (its own transform and trained weights, one-step queries on the first ``--rows`` validation rows):
the mean Spearman correlation, per row, between the model's catalog scores and the items' training counts, and
the share of the top-20 lists that falls among the 20 most frequent training items (popularity's own list).

Writes ``benchmarks/results/idreamrec_ml1m/table_geometry.{json,md}``.
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
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT.parent / "src"))

from dreamrec.data.dataset import PreparedDataset
from dreamrec.eval.report import command_line, machine
from dreamrec.text.transforms import fit_scaling, fit_whitening
from dreamrec.train.run import load_run

OUT = ROOT / "results" / "idreamrec_ml1m"


def geometry(X: np.ndarray) -> dict[str, float]:
    """Statistics of the rows of ``X [n, D]`` (the items, padding excluded)."""
    second = float((X ** 2).sum(1).mean())
    mean = X.mean(0)
    lam = np.clip(np.linalg.eigvalsh(np.cov(X, rowvar=False, bias=True)), 0, None)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    n = len(U)
    s = U.sum(0)
    return {"mean_share": float(mean @ mean) / second, "top1_share": float(lam.max() / lam.sum()),
            "participation": float(lam.sum() ** 2 / (lam ** 2).sum()),
            "mean_cos": float((s @ s - n) / (n * (n - 1)))}


def popularity_agreement(run_dir: Path, dataset: PreparedDataset, rows: int) -> dict[str, float]:
    run = load_run(run_dir, sampler="onestep")
    run.check_dataset(dataset, "--data")
    counts = run.items["train_count"].to_numpy(float)  # item j + 1's count in the run's training data
    top20 = set(np.argsort(-counts, kind="stable")[:20].tolist())
    hist = torch.from_numpy(dataset.val.history[:rows, -run.model.max_len:]).long()
    torch.manual_seed(0)
    with torch.no_grad():
        scores = run.model.score(hist).numpy()  # [rows, n]: items 1..n
    rho = [spearmanr(row, counts).statistic for row in scores]
    tops = np.argsort(-scores, axis=1, kind="stable")[:, :20]
    return {"transform": run.config.params["transform"], "rows": len(scores),
            "spearman_scores_vs_train_count": float(np.mean(rho)),
            "top20_share_in_popular20": float(np.mean([len(top20 & set(t.tolist())) / 20 for t in tops]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=1000)
    args = ap.parse_args()
    dataset = PreparedDataset.load(args.data)
    first = load_run(args.runs[0])
    E = first.model.item_text_emb[1:].double()
    tables = {"raw e": E, "scaling": None, "whitening": None}
    mu, W = fit_scaling(E)
    tables["scaling"] = (E - mu) @ W
    mu, W = fit_whitening(E)
    tables["whitening"] = (E - mu) @ W
    result: dict[str, Any] = {
        "geometry": {k: geometry(v.numpy()) for k, v in tables.items()},
        "runs": {str(r): popularity_agreement(r, dataset, args.rows) for r in args.runs},
        "command": command_line(), "machine": machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "table_geometry.json").write_text(json.dumps(result, indent=2) + "\n")
    g = result["geometry"]
    lines = ["# iDreamRec's item table under each transform, and how far its rankings follow popularity", "",
             f"`{result['command']}`, {result['date']}.", "",
             "| table | mean share of the second moment | top eigenvalue share | participation ratio | mean cosine |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['mean_share']:.3f} | {v['top1_share']:.3f} | {v['participation']:.1f} | {v['mean_cos']:.3f} |"
              for k, v in g.items()]
    lines += ["", "| run | transform | rows | Spearman(scores, training count), mean per row | top-20 share in the 20 most "
              "frequent items |", "|---|---|---:|---:|---:|"]
    lines += [f"| `{k}` | {v['transform']} | {v['rows']} | {v['spearman_scores_vs_train_count']:.3f} "
              f"| {v['top20_share_in_popular20']:.3f} |" for k, v in result["runs"].items()]
    (OUT / "table_geometry.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
