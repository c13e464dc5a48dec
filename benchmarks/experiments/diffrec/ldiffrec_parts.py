"""Which part of a trained L-DiffRec ranks: the diffusion on the latent, or the autoencoder around it?

    python benchmarks/experiments/diffrec/ldiffrec_parts.py RUN [RUN ...] --data DATA_DIR [--name NAME]

For each finished L-DiffRec run (``dreamrec train`` with ``latent_clusters``), ranks validation and test twice with
the same trained weights and the run's own protocol (``train.exclude_seen``, its evaluation seed):

* ``full``: Algorithm 2 as the model runs it, ``decode(denoise(mu))`` (``mu``: the encoder's mean of the history's
  interaction vector);
* ``no diffusion``: ``decode(mu)``, the reverse chain skipped.

If the two agree, the latent diffusion adds nothing to the ranking and the multinomial-likelihood decoder carries
it. Nothing is retrained. Writes ``benchmarks/results/survey_checks/NAME.{json,md}``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT.parent / "src"))

from dreamrec.data.dataset import PreparedDataset
from dreamrec.eval.evaluate import evaluate
from dreamrec.eval.report import command_line, machine
from dreamrec.train.run import load_run

OUT = ROOT / "results" / "survey_checks"
METRICS = ("HR@20", "NDCG@20")


def rank_both(run_dir: Path, dataset: PreparedDataset) -> dict[str, Any]:
    run = load_run(run_dir)
    run.check_dataset(dataset, "--data")
    model, train = run.model, run.config.train
    if getattr(model, "vae", None) is None:
        raise SystemExit(f"{run_dir}: not an L-DiffRec run (no latent autoencoder)")
    out: dict[str, Any] = {}
    for label in ("full", "no diffusion"):
        if label == "no diffusion":
            model.denoise = lambda x: x  # this instance only: decode(mu)
        out[label] = {}
        for split in ("val", "test"):
            r = evaluate(model, getattr(dataset, split), ks=(20,), seed=train.seed, exclude_seen=train.exclude_seen)
            out[label][split] = {k: float(r[k]) for k in METRICS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--name", default="ldiffrec-parts-zhihu")
    args = ap.parse_args()
    dataset = PreparedDataset.load(args.data)
    runs = {str(r): rank_both(r, dataset) for r in args.runs}
    mean = {label: {split: {k: float(np.mean([r[label][split][k] for r in runs.values()])) for k in METRICS}
                    for split in ("val", "test")} for label in ("full", "no diffusion")}
    result = {"runs": runs, "mean": mean, "command": command_line(), "machine": machine(),
              "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    cell = lambda m: f"{100 * m['HR@20']:.2f} / {100 * m['NDCG@20']:.2f}"
    lines = [f"# {args.name}: L-DiffRec's ranking with and without its latent diffusion", "",
             f"`{result['command']}`, {result['date']}; {result['machine']}.", "",
             "HR@20 / NDCG@20 in %, the same trained weights, each run's own protocol; `full` = decode(denoise(mu)), "
             "`no diffusion` = decode(mu).", "",
             "| run | val full | val no diffusion | test full | test no diffusion |", "|---|---|---|---|---|"]
    for name, r in [*runs.items(), ("mean", mean)]:
        lines.append(f"| {name} | {cell(r['full']['val'])} | {cell(r['no diffusion']['val'])} "
                     f"| {cell(r['full']['test'])} | {cell(r['no diffusion']['test'])} |")
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
