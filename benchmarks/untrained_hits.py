"""Where does a trained run's test HR@20 come from: items it was trained on, or items that were never a training
target (whose rows keep their initialisation when the loss has no negatives, as DreamRec's)?

    PYTHONPATH=src python benchmarks/untrained_hits.py RUN [RUN ...] --data PREPARED_DATA [--json OUT.json]

For each run: test HR@20 over every row (the evaluator's ranking, the run's sampler, seed 0), the share of test
targets that never occur as a training target, the hits on those and on the others, the share of each top 20
taken by never-trained items, and the mean row norm of trained and never-trained items.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dreamrec.data.dataset import PreparedDataset  # noqa: E402
from dreamrec.eval.evaluate import rank_targets  # noqa: E402
from dreamrec.train.run import load_run  # noqa: E402


def untrained_hits(run: Path, ds: PreparedDataset) -> dict:
    model = load_run(run).model.eval()
    never = ds.train_item_counts() == 0  # index = internal id; [0] is padding
    never[0] = False
    ranks, top = rank_targets(model, ds.test, topk=20, seed=0)
    hit = ranks < 20
    cold = never[ds.test.target]
    out = {
        "test_rows": int(len(ranks)), "hr20": round(float(hit.mean()), 4),
        "never_trained_items": int(never.sum()), "test_targets_never_trained": round(float(cold.mean()), 4),
        "hits_on_never_trained": int((hit & cold).sum()), "hits_on_trained": int((hit & ~cold).sum()),
        "hr20_on_trained_targets": round(float(hit[~cold].mean()), 4),
        "top20_share_never_trained": round(float(never[top].mean()), 4),
    }
    if hasattr(model, "item_embeddings"):
        with torch.no_grad():
            norms = model.item_embeddings().norm(dim=-1).cpu().numpy()
        out["mean_norm_trained"] = round(float(norms[1:][~never[1:]].mean()), 3)
        out["mean_norm_never_trained"] = round(float(norms[1:][never[1:]].mean()), 3) if never.any() else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = PreparedDataset.load(args.data)
    res = {"data": str(args.data), "runs": {}}
    for run in args.runs:
        res["runs"][str(run)] = untrained_hits(run, ds)
        print(run, json.dumps(res["runs"][str(run)]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
