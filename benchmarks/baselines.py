"""Table: classic baselines (popularity, SASRec CE / BCE, GRU4Rec) on Zhihu, Beauty and ML-1M.

    python benchmarks/baselines.py --zhihu DIR --beauty beauty.pkl --ml1m ml-1m.pkl --seeds 0 1 2

Zhihu keeps the DreamRec authors' split (window 10); Beauty and ML-1M keep the DiffuRec
leave-one-out split (history window 50 for Beauty, 200 for ML-1M, as SASRec uses).
Configs: ``configs/baselines/<dataset>/<variant>.yaml``. Results: ``benchmarks/results/``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, ROOT, run_variant  # noqa: E402

from dreamrec.config import PrepareConfig  # noqa: E402
from dreamrec.data.prepare import prepare_source  # noqa: E402

CONFIGS = ROOT.parent / "configs" / "baselines"
SOURCES = {"zhihu": ("dreamrec", None), "beauty": ("diffurec", 50), "ml-1m": ("diffurec", 200)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zhihu", type=Path, help="DreamRec Zhihu split directory (*_data.df)")
    ap.add_argument("--beauty", type=Path, help="DiffuRec beauty.pkl")
    ap.add_argument("--ml1m", type=Path, help="DiffuRec ml-1m.pkl")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="*", help="config stems to run (default: all)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench"), help="prepared data and run directories")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra key=value overrides")
    args = ap.parse_args()
    paths = {"zhihu": args.zhihu, "beauty": args.beauty, "ml-1m": args.ml1m}
    for name, src in paths.items():
        if src is None:
            continue
        fmt, window = SOURCES[name]
        data_dir = args.work / "data" / name
        if not (data_dir / "meta.json").exists():
            prepare_source(src, fmt, PrepareConfig(protocol="loo", max_len=window)).save(data_dir)
        for cfg in sorted((CONFIGS / name).glob("*.yaml")):
            if args.variants and cfg.stem not in args.variants:
                continue
            print(f"== {name} / {cfg.stem}", flush=True)
            run_variant(dataset_name=name, data_dir=data_dir, config_path=cfg, seeds=args.seeds,
                        runs_dir=args.work / "runs", results_dir=RESULTS, overrides=args.overrides)


if __name__ == "__main__":
    main()
