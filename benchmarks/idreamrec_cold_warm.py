"""Cold and warm items, one split: how a text-derived item table ranks items it never saw in training.

    python benchmarks/idreamrec_cold_warm.py --data DATA_DIR --config CONFIG --run RUN_DIR --name NAME
        [--frac 0.1] [--split-seed 0] [--set key=value ...]

Holds out ``frac`` of the catalog (:func:`dreamrec.eval.coldstart.cold_start_split`: every interaction with a
held-out item leaves the training and validation data; the test split stays whole), trains ``CONFIG`` on what is
left into ``RUN_DIR`` (a ``dreamrec train`` run directory; a checkpoint there is resumed, so a stopped job goes on;
a finished run is reported again without training),
and reports HR@20 / NDCG@20 on the test rows split by their target: cold (held out) and warm (seen in training),
for the model and for popularity fitted on the same reduced training data. Every test row is counted in one of the
two groups.

Used for iDreamRec against ``idreamrec-residual`` on ML-1M (the survey issue, item 5): the residual variant keeps
``r_j = 0`` for an item no training history holds, so a cold item is ranked by its text alone, as in iDreamRec.

Writes ``benchmarks/results/idreamrec_ml1m/cold_warm-NAME.json`` and regenerates ``cold_warm.md`` from every such
file there.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from dreamrec.config import apply_overrides, build_run_config, load_yaml
from dreamrec.data.dataset import PreparedDataset
from dreamrec.eval.coldstart import cold_start_split, evaluate_target_groups
from dreamrec.eval.report import command_line, machine
from dreamrec.train.run import load_run, train_run

OUT = ROOT / "results" / "idreamrec_ml1m"
KS = (20,)


def report(model: Any, dataset: PreparedDataset, cold: np.ndarray, seed: int) -> dict[str, Any]:
    """HR/NDCG@20 of ``model`` and of popularity (fitted on ``dataset``'s training data) per group of test rows."""
    groups = evaluate_target_groups(model, dataset, cold, ks=KS, seed=seed)
    return {group: {key: ({k: float(v[k]) for k in ("HR@20", "NDCG@20")} if key != "n" else v)
                    for key, v in g.items()} for group, g in groups.items()}


def table(out_dir: Path) -> str:
    files = sorted(out_dir.glob("cold_warm-*.json"))
    lines = ["# Cold and warm items on one split (`benchmarks/idreamrec_cold_warm.py`)", "",
             "Test HR@20 / NDCG@20 in %, rows grouped by their target: cold (held out of training and validation) "
             "or warm. Popularity is fitted on the same reduced training data (a cold item has count 0).", "",
             "| run | config | held out | epochs (best) | cold rows | cold: model | cold: popularity "
             "| warm rows | warm: model | warm: popularity |",
             "|---|---|---|---|---:|---|---|---:|---|---|"]
    cell = lambda m: f"{100 * m['HR@20']:.2f} / {100 * m['NDCG@20']:.2f}"
    for f in files:
        r = json.loads(f.read_text())
        g = r["groups"]
        lines.append(
            f"| {r['name']} | `{r['config']}` {' '.join(r['overrides'])} | {r['n_cold_items']} items "
            f"({r['frac']:.0%}, split seed {r['split_seed']}) | {r['epochs_trained']} ({r['best_epoch']}) "
            f"| {g['cold']['n']} | {cell(g['cold']['model'])} | {cell(g['cold']['popularity'])} "
            f"| {g['warm']['n']} | {cell(g['warm']['model'])} | {cell(g['warm']['popularity'])} |")
    lines += ["", "Commands, machine and date: in each `cold_warm-*.json`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="prepared dataset directory (with item texts)")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True, help="run directory (resumed where it holds a checkpoint)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--frac", type=float, default=0.1, help="share of the catalog held out (default 0.1)")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="config overrides key=value")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    config = build_run_config(apply_overrides(load_yaml(args.config), args.overrides), str(args.config))
    full = PreparedDataset.load(args.data)
    dataset, cold = cold_start_split(full, frac=args.frac, seed=args.split_seed)
    if (args.run / "metrics.json").exists():  # finished earlier: report it again, train nothing
        metrics = json.loads((args.run / "metrics.json").read_text())
        print(f"{args.run}: finished run, reported as it is")
    else:
        resume = (args.run / "checkpoint").is_dir()
        metrics = train_run(config, args.data, args.run, resume=resume, progress=False, dataset=dataset)
    run = load_run(args.run)
    result = {
        "name": args.name, "config": str(args.config), "overrides": args.overrides, "frac": args.frac,
        "split_seed": args.split_seed, "n_cold_items": len(cold), "run": str(args.run),
        "best_epoch": metrics["best_epoch"], "epochs_trained": metrics["epochs_trained"],
        "val_cold_split": {k: metrics["val"][k] for k in ("HR@20", "NDCG@20")},
        "groups": report(run.model, dataset, cold, seed=config.train.seed),
        "command": command_line(), "machine": machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cold_warm-{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "cold_warm.md").write_text(table(args.out))
    print(json.dumps(result["groups"], indent=2))


if __name__ == "__main__":
    main()
