"""Table 1 of the DreamRec paper on Zhihu: search T and w on validation, then 5 seeds on test.

    python benchmarks/dreamrec_table1.py --zhihu DIR [--seeds 0 1 2 3 4] [--T 50 100 200 500 1000 2000]
        [--w 0 2 4 6 8 10] [--base configs/dreamrec/zhihu.yaml] [--variant paper] [--device cpu|cuda]
        [--work runs/bench] [--set key=value ...] [--quick]

Stage 1 trains one model per T (seed 0; ``benchmarks/bench.run_variant`` with variant
``{variant}-search-T{T}``, so a finished T is reused) and evaluates every w on validation with
that same model: w only enters at sampling time (training drops the condition with probability
``p_uncond``, so any w can be applied at inference). The (T, w) with the best validation HR@20
wins (ties: smaller T, then smaller w). Stage 2 trains the chosen T for every seed with the
chosen w (``{variant}-T{T}-w{w}``; model selection and test at that w; the search run is reused as
seed 0 when its resolved config is the same, i.e. when the chosen w is the config's) and writes one result JSON
in the report schema to ``benchmarks/results/``; the whole grid goes to
``benchmarks/results/dreamrec_search/zhihu__dreamrec__{variant}.json``.

``--quick`` runs the same pipeline on small synthetic data with tiny T lists and 2 epochs,
writing only under ``runs/quick`` (never into ``benchmarks/results``).
The helpers here (data preparation, quick data) are shared with dreamrec_sampling.py and timing.py.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS, ROOT, run_variant  # noqa: E402

from dreamrec.config import PrepareConfig  # noqa: E402
from dreamrec.data.dataset import PreparedDataset  # noqa: E402
from dreamrec.eval.evaluate import evaluate  # noqa: E402
from dreamrec.eval.report import command_line, machine, write_record  # noqa: E402
from dreamrec.train.run import load_run  # noqa: E402

QUICK_DIR = Path("runs/quick")
# tiny model and training for --quick (checks the pipeline, not the numbers)
QUICK_SET = ["hidden=16", "train.epochs=2", "train.eval_every=1", "train.patience=2", "train.threads=1"]


def prepare_zhihu(src: Path, work: Path) -> Path:
    """The DreamRec Zhihu split (directory of *_data.df) prepared once under ``work/data/zhihu``."""
    from dreamrec.data.prepare import prepare_source

    data_dir = work / "data" / "zhihu"
    if not (data_dir / "meta.json").exists():
        prepare_source(src, "dreamrec", PrepareConfig()).save(data_dir)
    return data_dir


def quick_data(work: Path = QUICK_DIR) -> Path:
    """Small synthetic data in the DreamRec protocol (300 users, 80 items) for --quick runs."""
    from dreamrec.data.synthetic import SyntheticConfig, generate

    data_dir = work / "data" / "synthetic"
    if not (data_dir / "meta.json").exists():
        generate(SyntheticConfig(n_users=300, n_items=80, n_topics=4, seed=3, protocol="dreamrec")).dataset.save(data_dir)
    return data_dir


def fmt_w(w: float) -> str:
    return f"{w:g}"


def search(
    *, dataset: str, data_dir: Path, base: Path, Ts: list[int], ws: list[float], variant: str,
    overrides: list[str], runs_dir: Path, search_dir: Path, device: str,
) -> dict[str, Any]:
    """Stage 1: one seed-0 run per T, every w evaluated on validation; returns the search record."""
    ds = PreparedDataset.load(data_dir)
    path = search_dir / f"{dataset}__dreamrec__{variant}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    runs: dict[str, Any] = {}
    grid: list[dict[str, Any]] = []
    for T in Ts:
        name = f"{variant}-search-T{T}"
        print(f"== search T={T}", flush=True)
        run_variant(dataset_name=dataset, data_dir=data_dir, config_path=base, seeds=[0], runs_dir=runs_dir,
                    results_dir=search_dir, overrides=[*overrides, f"timesteps={T}"], variant=name)
        seed0 = json.loads((search_dir / "seeds" / f"{dataset}__{name}__seed0.json").read_text())
        runs[str(T)] = {k: seed0[k] for k in ("config", "date", "best_epoch", "seconds")}
        same_run = old.get("runs", {}).get(str(T)) == runs[str(T)]
        cached = {g["w"]: g for g in old.get("grid", []) if g["T"] == T} if same_run else {}
        model = None
        for w in ws:
            if w not in cached:
                if model is None:
                    model = load_run(runs_dir / dataset / name / "seed0", device).model
                model.set_sampler(guidance_w=w)
                val = evaluate(model, ds.val, batch_size=seed0["config"]["train"]["eval_batch_size"],
                               device=device, seed=0)
                cached[w] = {"T": T, "w": w, "val": val}
            g = cached[w]
            grid.append(g)
            print(f"T={T:<5d} w={fmt_w(w):<4s} val HR@20 {100 * g['val']['HR@20']:.2f}  "
                  f"NDCG@20 {100 * g['val']['NDCG@20']:.2f}", flush=True)
    best = max(grid, key=lambda g: (g["val"]["HR@20"], -g["T"], -g["w"]))
    rec = {
        "dataset": dataset, "model": "dreamrec", "variant": variant, "base": str(base), "overrides": overrides,
        "T": Ts, "w": ws, "selection": "validation HR@20, seed 0, one model per T", "selected": {"T": best["T"], "w": best["w"]},
        "grid": grid, "runs": runs, "command": command_line(), "machine": machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    search_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2))
    print(f"selected T={best['T']} w={fmt_w(best['w'])} (val HR@20 {100 * best['val']['HR@20']:.2f}); wrote {path}")
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zhihu", type=Path, help="DreamRec Zhihu split directory (*_data.df)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--T", type=int, nargs="+", default=[50, 100, 200, 500, 1000, 2000])
    ap.add_argument("--w", type=float, nargs="+", default=[0, 2, 4, 6, 8, 10])
    ap.add_argument("--base", type=Path, default=ROOT.parent / "configs" / "dreamrec" / "zhihu.yaml")
    ap.add_argument("--variant", default="paper", help="name prefix of the results")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=Path("runs/bench"), help="prepared data and run directories")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], help="extra key=value overrides")
    ap.add_argument("--quick", action="store_true", help="tiny end-to-end check on synthetic data (runs/quick)")
    args = ap.parse_args()
    overrides = [*args.overrides, f"train.device={args.device}"]
    if args.quick:
        dataset, work, results = "synthetic", QUICK_DIR, QUICK_DIR / "results"
        data_dir = quick_data(work)
        overrides = [*QUICK_SET, *overrides]
        if args.T == ap.get_default("T"):
            args.T = [5, 10]
        if args.w == ap.get_default("w"):
            args.w = [0, 2]
        if args.seeds == ap.get_default("seeds"):
            args.seeds = [0, 1]
    else:
        if args.zhihu is None:
            ap.error("--zhihu DIR is required (or --quick)")
        dataset, work, results = "zhihu", args.work, RESULTS
        data_dir = prepare_zhihu(args.zhihu, work)
    runs_dir = work / "runs"
    found = search(dataset=dataset, data_dir=data_dir, base=args.base, Ts=args.T, ws=args.w, variant=args.variant,
                   overrides=overrides, runs_dir=runs_dir, search_dir=results / "dreamrec_search", device=args.device)
    T, w = found["selected"]["T"], found["selected"]["w"]
    name = f"{args.variant}-T{T}-w{fmt_w(w)}"
    print(f"== {name}: {len(args.seeds)} seeds", flush=True)
    rec = run_variant(dataset_name=dataset, data_dir=data_dir, config_path=args.base, seeds=args.seeds,
                      runs_dir=runs_dir, results_dir=results, variant=name,
                      overrides=[*overrides, f"timesteps={T}", f"guidance_w={w}"],
                      reuse=[(results / "dreamrec_search" / "seeds", f"{args.variant}-search-T{T}")])
    rec["search"] = {"T": args.T, "w": args.w, "selected": found["selected"], "selection": found["selection"],
                     "file": f"dreamrec_search/{dataset}__dreamrec__{args.variant}.json"}
    path = write_record(rec, results)
    m = rec["metrics"]
    print(f"{name}: test HR@20 {100 * m['HR@20']['mean']:.2f} ± {100 * m['HR@20']['std']:.2f}, "
          f"NDCG@20 {100 * m['NDCG@20']['mean']:.2f} ± {100 * m['NDCG@20']['std']:.2f} (%); wrote {path}")


if __name__ == "__main__":
    main()
