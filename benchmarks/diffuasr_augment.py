"""DiffuASR augmentation (Liu et al., CIKM 2023): a baseline config trained on a prepared dataset and on its
DiffuASR-augmented copy, with the same seeds and protocol (benchmarks/bench.py's ``run_variant``).

    python benchmarks/diffuasr_augment.py --data runs/bench/data/beauty --dataset beauty \\
        --config configs/sasrec/beauty-ce.yaml --seeds 0 1 2 \\
        --augment-set M=10 epochs=200 augment_below=20 [--set train.epochs=100 ...]

The generator is fitted on the training split only and the augmented dataset written once to
``WORK/data/<dataset>-diffuasr-<digest>`` (``digest``: the DiffuASR settings and the source dataset's
``meta.json``) and reused by later calls; one augmented dataset serves every seed of the recommender
(its own seed is ``augment-set seed=``). The result lands in ``--results`` as
``<dataset>__<model>__<stem>+diffuasr-<digest>.json``, with the augmentation's provenance and the baseline's
metrics over the same seeds (``baseline``); the baseline's own aggregate ``<dataset>__<model>__<stem>.json`` is
left as it is (it may hold more seeds). Seeds are cached as for every benchmark (``results/seeds/``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, run_variant

from dreamrec.augment import augment_dataset, diffuasr_config, train_diffuasr
from dreamrec.config import parse_settings
from dreamrec.data.dataset import PreparedDataset
from dreamrec.eval.report import write_record

METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")


def augmented_data(data: Path, dataset_name: str, settings: dict[str, Any], work: Path) -> tuple[Path, str]:
    """(augmented dataset directory, digest): built unless an earlier call left it complete."""
    cfg = diffuasr_config(settings)
    meta = (data / "meta.json").read_bytes() if (data / "meta.json").is_file() else b""
    key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode() + meta
    digest = hashlib.sha1(key).hexdigest()[:8]
    out = work / "data" / f"{dataset_name}-diffuasr-{digest}"
    if (out / "meta.json").is_file():
        print(f"reusing the augmented dataset {out}")
        return out, digest
    ds = PreparedDataset.load(data)
    generator = train_diffuasr(ds, cfg, log=print)
    augment_dataset(ds, generator, cfg).save(out)
    return out, digest


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="prepared dataset directory")
    ap.add_argument("--dataset", required=True, help="dataset name used in the result file names")
    ap.add_argument("--config", type=Path, required=True, help="the recommender's config (e.g. a baseline)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--augment-set", dest="augment", nargs="*", default=[], help="DiffuASR key=value settings")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="recommender key=value overrides (both runs)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench"), help="WORK/data and WORK/runs are written")
    ap.add_argument("--results", type=Path, default=RESULTS, help="result JSON folder (default benchmarks/results)")
    args = ap.parse_args(argv)

    aug_dir, digest = augmented_data(args.data, args.dataset, parse_settings(args.augment, "--augment-set"), args.work)
    stem = args.config.stem
    common: dict[str, Any] = {"dataset_name": args.dataset, "config_path": args.config, "seeds": args.seeds,
                              "runs_dir": args.work / "runs", "results_dir": args.results, "overrides": args.overrides}
    base = run_variant(data_dir=args.data, variant=stem, write=False, **common)
    aug = run_variant(data_dir=aug_dir, variant=f"{stem}+diffuasr-{digest}", write=False, **common)
    aug["augmentation"] = PreparedDataset.load(aug_dir).info["augmentation"][-1]
    aug["augmented_data"] = str(aug_dir)
    aug["baseline"] = {"variant": stem, "data": str(args.data), "seeds": base["seeds"], "metrics": base["metrics"]}
    write_record(aug, args.results)
    rows = {m: {"original": base["metrics"][m]["mean"], "diffuasr": aug["metrics"][m]["mean"]}
            for m in METRICS if m in base["metrics"]}
    for m, r in rows.items():
        print(f"{m}: original {100 * r['original']:.2f}  diffuasr {100 * r['diffuasr']:.2f}  "
              f"({100 * (r['diffuasr'] - r['original']):+.2f})")
    return {"original": base, "diffuasr": aug, "comparison": rows}


if __name__ == "__main__":
    main()
