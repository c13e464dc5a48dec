"""Shared runner for the benchmark scripts: a config over several seeds -> one result JSON."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from dreamrec.config import apply_overrides, build_run_config, load_yaml
from dreamrec.data.dataset import PreparedDataset
from dreamrec.eval.report import load_records, make_record, render_markdown, write_record
from dreamrec.train.run import resolve, train_run

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def run_variant(
    *,
    dataset_name: str,
    data_dir: Path,
    config_path: Path,
    seeds: list[int],
    runs_dir: Path,
    results_dir: Path = RESULTS,
    overrides: list[str] | None = None,
    variant: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``config_path`` once per seed on ``data_dir`` and write the aggregated result JSON."""
    ds = PreparedDataset.load(data_dir)
    raw = apply_overrides(load_yaml(config_path), overrides or [])
    variant = variant or config_path.stem
    test, val, secs = [], [], []
    resolved: dict[str, Any] = {}
    for seed in seeds:
        cfg = build_run_config(apply_overrides(raw, [f"train.seed={seed}"]), str(config_path))
        out = runs_dir / dataset_name / variant / f"seed{seed}"
        if out.exists():
            shutil.rmtree(out)
        t = time.time()
        m = train_run(cfg, data_dir, out, progress=progress, log=print, dataset=ds)
        secs.append(time.time() - t)
        test.append(m["test"])
        val.append(m["val"])
        resolved = resolve(cfg, ds)[0].model_dump(mode="json")
        resolved["train"].pop("seed")
        print(json.dumps({"variant": variant, "seed": seed, "best_epoch": m["best_epoch"],
                          "val_HR@20": m["val"].get("HR@20"), "test_HR@20": m["test"]["HR@20"],
                          "test_NDCG@20": m["test"]["NDCG@20"], "seconds": round(secs[-1], 1)}), flush=True)
    rec = make_record(
        dataset=dataset_name, protocol=ds.protocol, model=raw.get("model", "?"), variant=variant,
        config=resolved, seeds=seeds, test=test, val=val, seconds=secs,
    )
    write_record(rec, results_dir)
    return rec


def write_tables(results_dir: Path = RESULTS, out: Path = ROOT / "README.md", header: str = "") -> None:
    text = header + render_markdown(load_records(results_dir))
    out.write_text(text)
