"""One config on one prepared dataset over seeds -> one result JSON (the generic benchmark runner).

    python benchmarks/run_config.py --data runs/bench/data/zhihu --dataset zhihu \\
        --config benchmarks/configs/dreamrec/zhihu-d128.yaml --variant d128-T200-w0 --seeds 0 1 2 3 4 \\
        --set timesteps=200 guidance_w=0 train.epochs=60 train.eval_every=5 train.patience=20

Each seed is cached in ``<results>/seeds/`` (benchmarks/bench.py), so seeds can run as separate
processes (``--seeds 3``) and be aggregated afterwards by running the same command with all seeds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, run_variant  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="prepared dataset directory")
    ap.add_argument("--dataset", required=True, help="dataset name used in the result file names")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--variant", help="result name (default: the config's file stem)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="key=value overrides")
    ap.add_argument("--work", type=Path, default=Path("runs/bench"), help="run directories go to WORK/runs")
    ap.add_argument("--results", type=Path, default=RESULTS, help="result JSON folder (default benchmarks/results)")
    args = ap.parse_args()
    run_variant(dataset_name=args.dataset, data_dir=args.data, config_path=args.config, seeds=args.seeds,
                runs_dir=args.work / "runs", results_dir=args.results, overrides=args.overrides,
                variant=args.variant or args.config.stem)


if __name__ == "__main__":
    main()
