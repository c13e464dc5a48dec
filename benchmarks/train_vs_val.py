"""How much better a trained run ranks the rows it trained on than new users' rows: the memorisation gap.

    python benchmarks/train_vs_val.py RUN [RUN ...] --data runs/bench/data/zhihu-diffrec --name zhihu-diffrec

For each finished run directory (its selected weights), HR@20 and NDCG@20 on ``--n`` training rows drawn at random
(seeded), on the validation split and on the test split, all ranked as the run's config says (with
``train.exclude_seen``, without each row's history items). On the DreamRec protocol the three splits hold different
users, so a large train-over-validation gap is what a model that memorises its training windows shows; popularity
and SASRec-CE give the scale. Writes ``benchmarks/results/survey_checks/train_vs_val-<name>.{json,md}``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS  # noqa: E402

from dreamrec.data.dataset import PreparedDataset, SampleRows  # noqa: E402
from dreamrec.eval.evaluate import evaluate  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.threads import set_threads  # noqa: E402
from dreamrec.train.run import load_run  # noqa: E402

METRICS = ("HR@20", "NDCG@20")


def training_rows(ds: PreparedDataset, n: int, seed: int) -> SampleRows:
    """``n`` of the training (history, target) rows, drawn without replacement."""
    train = ds.train
    if not isinstance(train, SampleRows):
        raise SystemExit("this check needs a dataset whose training split is rows (the DreamRec protocol)")
    idx = np.sort(np.random.default_rng(seed).choice(len(train), size=min(n, len(train)), replace=False))
    return SampleRows(train.history[idx], train.target[idx], train.user[idx])


def check(run_dir: Path, ds: PreparedDataset, n: int, seed: int) -> dict:
    run = load_run(run_dir)
    cfg = run.config.train
    out = {"run": str(run_dir), "model": run.config.model, "exclude_seen": bool(cfg.exclude_seen)}
    splits = {"train": training_rows(ds, n, seed), "val": ds.val, "test": ds.test}
    for name, rows in splits.items():
        m = evaluate(run.model.eval(), rows, max_len=cfg.max_len, exclude_seen=cfg.exclude_seen)
        out[name] = {k: m[k] for k in (*METRICS, "n")}
    out["train_over_val"] = {k: out["train"][k] / max(out["val"][k], 1e-12) for k in METRICS}
    return out


def runs_and_rows_args(description: str, n_default: int) -> tuple[argparse.Namespace, PreparedDataset]:
    """The command line shared by the scripts that score run directories on training rows: RUN..., --data, --name,
    --n training rows, --seed, --threads (set here); returns the arguments and the loaded dataset."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="the prepared dataset the runs trained on")
    ap.add_argument("--name", required=True)
    ap.add_argument("--n", type=int, default=n_default, help="training rows to score (about the validation split's size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads, "evaluate")
    return args, PreparedDataset.load(args.data)


def main() -> None:
    args, ds = runs_and_rows_args(__doc__.splitlines()[0], 8000)
    rows = [check(r, ds, args.n, args.seed) for r in args.runs]
    record = {"name": args.name, "data": str(args.data), "n_train_rows": args.n, "command": command_line(),
              "machine": machine(), "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "runs": rows}
    out = RESULTS / "survey_checks"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"train_vs_val-{args.name}.json").write_text(json.dumps(record, indent=2))
    lines = [f"# Training rows against new users' rows: {args.name}", "",
             f"`{record['command']}`; {record['machine']}, {record['date']}. Percent; {args.n} training rows drawn "
             "with seed " + str(args.seed) + "; ranked as each run's config says.", "",
             "| run | model | train HR@20 | val HR@20 | test HR@20 | train NDCG@20 | val NDCG@20 | train / val HR@20 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{Path(r['run']).parent.name}/{Path(r['run']).name}` | {r['model']} | "
                     f"{100 * r['train']['HR@20']:.2f} | {100 * r['val']['HR@20']:.2f} | {100 * r['test']['HR@20']:.2f} | "
                     f"{100 * r['train']['NDCG@20']:.2f} | {100 * r['val']['NDCG@20']:.2f} | "
                     f"{r['train_over_val']['HR@20']:.2f} |")
    (out / f"train_vs_val-{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
