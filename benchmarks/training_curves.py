"""Validation curves of trained runs, epoch by epoch: is a budget-stopped run still improving?

    python benchmarks/training_curves.py --name beauty-diffurec \\
        --run "DiffuRec, CPU=runs/s7/beauty-diffurec-cont" --run "DiffuRec, GPU=runs/gpu/beauty/diffurec/seed0" \\
        [--published "DiffuRec (paper)=11.11"] [--metric HR@20]

Reads each run directory's ``log.jsonl`` (one line per epoch, with the validation metrics; the last
epoch flagged best is the selected one; a saved ``*.jsonl`` log may stand in for the directory) and, when
present, ``metrics.json`` (the test metrics of the selected epoch; a run copied without it, or a log
alone, is drawn without its test value). Writes ``{name}.json`` (every
curve, the selected epoch and its test value) and ``{name}.png`` (validation ``--metric`` against the
epoch; the selected epoch marked and labelled with its test value; the papers' published TEST
numbers as dashed lines, for scale only: a validation curve and a test number are not the same
split) to ``benchmarks/results/training_curves/``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS  # noqa: E402

from dreamrec.eval.report import command_line, machine  # noqa: E402

OUT = RESULTS / "training_curves"


def labelled(text: str) -> tuple[str, str]:
    """``"label=value"`` -> (label, value); the label may hold commas and spaces, not '='."""
    label, sep, value = text.rpartition("=")
    if not sep or not label.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, got {text!r}")
    return label.strip(), value.strip()


def read_curve(run_dir: Path, metric: str) -> dict[str, Any]:
    """Epochs with a validation entry, their ``metric``, the selected epoch and (if saved) its test metrics.

    ``run_dir`` is a run directory or a saved copy of a run's log (a file ending in ``.jsonl``, such as the
    logs kept in ``benchmarks/results/survey_checks/``); a log alone has no test metrics.
    """
    log_only = run_dir.suffix == ".jsonl"
    if log_only:
        log = run_dir
        if not log.is_file():
            raise SystemExit(f"{log}: no such log file")
    else:
        log = run_dir / "log.jsonl"
        if not log.is_file():
            raise SystemExit(f"{run_dir}: no log.jsonl (not a run directory written by `dreamrec train`)")
    epochs, values, seconds, best = [], [], [], None
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        if "val" not in entry:
            continue
        if metric not in entry["val"]:
            raise SystemExit(f"{log}: no validation {metric!r} (has {sorted(entry['val'])})")
        epochs.append(int(entry["epoch"]))
        values.append(float(entry["val"][metric]))
        seconds.append(float(entry.get("seconds", 0.0)))
        if entry.get("best"):  # the trainer flags each new best on its own selection metric
            best = int(entry["epoch"])
    if not epochs:
        raise SystemExit(f"{log}: no epoch with a validation result")
    out: dict[str, Any] = {"epochs": epochs, "val": values, "seconds": seconds, "best_epoch": best, "test": None}
    metrics = run_dir / "metrics.json"
    if not log_only and metrics.is_file():
        m = json.loads(metrics.read_text())
        out["best_epoch"] = m.get("best_epoch")
        out["test"] = (m.get("test") or {}).get(metric)
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, run in enumerate(result["runs"]):
        color = f"C{i}"
        ax.plot(run["epochs"], [100 * v for v in run["val"]], color=color, label=run["label"])
        if run["best_epoch"] in run["epochs"]:
            j = run["epochs"].index(run["best_epoch"])
            ax.scatter([run["best_epoch"]], [100 * run["val"][j]], color=color, zorder=3)
            if run["test"] is not None:
                ax.annotate(f"test {100 * run['test']:.2f}", (run["best_epoch"], 100 * run["val"][j]),
                            textcoords="offset points", xytext=(-10, 8), ha="right", fontsize=8, color=color)
    for j, (label, value) in enumerate(result["published"].items()):
        ax.axhline(value, color="grey", linestyle=(0, (4, 2 + 2 * j)), linewidth=1)
        ax.annotate(f"{label}: {value:.2f} (test)", (0, value), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(4, 3), fontsize=8, color="grey")
    ax.margins(y=0.12)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric} (%)")
    ax.set_title(f"{result['name']}: validation {metric} by epoch (dot: selected epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="output file stem")
    ap.add_argument("--run", type=labelled, action="append", required=True,
                    help="LABEL=RUN_DIR or LABEL=LOG.jsonl (repeatable)")
    ap.add_argument("--published", type=labelled, action="append", default=[],
                    help="LABEL=VALUE: a published test number in percent, drawn for scale (repeatable)")
    ap.add_argument("--metric", default="HR@20")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    published = {}
    for label, value in args.published:
        try:
            published[label] = float(value)
        except ValueError:
            raise SystemExit(f"--published {label}={value}: the value must be a number (percent)") from None
    runs = [{"label": label, "path": path, **read_curve(Path(path), args.metric)} for label, path in args.run]
    result = {
        "name": args.name,
        "metric": args.metric,
        "runs": runs,
        "published": published,
        "plotted_on": machine(),  # where this script ran; each run trained where its label says
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / f"{args.name}.png")
    for run in runs:
        test = "-" if run["test"] is None else f"{100 * run['test']:.2f}"
        print(f"{run['label']}: {len(run['epochs'])} validations, last epoch {run['epochs'][-1]}, "
              f"best epoch {run['best_epoch']}, test {args.metric} {test} %")
    print(f"wrote {args.out / (args.name + '.json')} and .png")


if __name__ == "__main__":
    main()
