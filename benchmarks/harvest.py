"""Copy finished seeds from run directories into results/seeds/ (for runs started before that existed).

    python benchmarks/harvest.py runs/bench/runs
"""
from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS  # noqa: E402

from dreamrec.eval.report import machine  # noqa: E402

if __name__ == "__main__":
    root = Path(sys.argv[1])
    for metrics in sorted(root.glob("*/*/seed*/metrics.json")):
        run = metrics.parent
        dataset, variant, seed = run.parent.parent.name, run.parent.name, run.name.removeprefix("seed")
        dst = RESULTS / "seeds" / f"{dataset}__{variant}__seed{seed}.json"
        if dst.exists():
            continue
        m = json.loads(metrics.read_text())
        log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
        date = _dt.datetime.fromtimestamp(metrics.stat().st_mtime, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        rec = {"config": yaml.safe_load((run / "config.yaml").read_text()), "seconds": sum(e["seconds"] for e in log),
               "best_epoch": m["best_epoch"], "val": m["val"], "test": m["test"], "machine": machine(),
               "command": f"python benchmarks/baselines.py (seed {seed}, harvested from {run})", "date": date}
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(rec, indent=2))
        print(f"wrote {dst}")
