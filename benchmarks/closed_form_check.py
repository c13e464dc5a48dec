"""Does the closed-form sampler rank as the step-by-step loop does? One trained DreamRec run, both ways.

    python benchmarks/closed_form_check.py --run RUN_DIR --data DATA_DIR [--seeds 0 1 2 3 4] [--name zhihu]

DreamRec's ``mlp1`` denoiser is affine in ``x_t``, so the output of its whole reverse process (DDPM over all T
steps, or DDIM) is Gaussian with a law computed once per set of weights (``dreamrec.diffusion.affine_chain``);
``closed_form: true`` (the default) draws from it in one step. The two ways share the law, not the noise draws,
so their metrics agree only up to evaluation noise. This script evaluates the run's test split with the loop
and with the closed form under ``--seeds`` evaluation seeds each, at the run's own sampler, and reports each
seed's HR@20 / NDCG@20, the mean and spread of each way, and the seconds per 1,000 sequences (one thread).

Writes ``benchmarks/results/timing/closed_form_{name}.json``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import RESULTS  # noqa: E402
from dreamrec_sampling import timed_evaluate  # noqa: E402

from dreamrec.data.dataset import PreparedDataset  # noqa: E402
from dreamrec.eval.report import command_line, machine  # noqa: E402
from dreamrec.train.run import load_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished DreamRec run directory (mlp1 denoiser)")
    ap.add_argument("--data", type=Path, required=True, help="its prepared dataset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--name", default="zhihu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "timing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    model, ds = run.model, PreparedDataset.load(args.data)
    if model.output_law(torch.device("cpu"), torch.float32) is None:
        sys.exit(f"{args.run}: the closed form does not apply (it needs an mlp1 denoiser and a ddpm or ddim sampler)")
    ways: dict[str, list[dict]] = {}
    for way, closed in (("loop", False), ("closed form", True)):
        model.config = model.config.model_copy(update={"closed_form": closed})
        ways[way] = []
        for seed in args.seeds:
            r = timed_evaluate(model, ds.test, seed=seed)
            r.pop("metrics")
            ways[way].append({"seed": seed, **r})
            print(f"{way:12s} seed {seed}: HR@20 {100 * r['HR@20']:.3f}  NDCG@20 {100 * r['NDCG@20']:.3f}  "
                  f"{r['wall_s_per_1k']:.3f} s/1k", flush=True)
    summary = {}
    for way, rows in ways.items():
        summary[way] = {m: {"mean": statistics.mean(r[m] for r in rows),
                            "std": statistics.stdev(r[m] for r in rows) if len(rows) > 1 else 0.0}
                        for m in ("HR@20", "NDCG@20")}
        summary[way]["wall_s_per_1k"] = min(r["wall_s_per_1k"] for r in rows)
    cfg = model.config
    rec = {"run": str(args.run), "sampler": cfg.sampler, "sampler_steps": cfg.sampler_steps, "T": cfg.timesteps,
           "w": cfg.guidance_w, "n_test": len(ds.test), "ways": ways, "summary": summary,
           "speed_up": summary["loop"]["wall_s_per_1k"] / summary["closed form"]["wall_s_per_1k"],
           "threads": args.threads, "command": command_line(), "machine": machine(),
           "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"closed_form_{args.name}.json"
    path.write_text(json.dumps(rec, indent=2) + "\n")
    for way, s in summary.items():
        print(f"{way:12s} HR@20 {100 * s['HR@20']['mean']:.3f} ± {100 * s['HR@20']['std']:.3f}  "
              f"NDCG@20 {100 * s['NDCG@20']['mean']:.3f} ± {100 * s['NDCG@20']['std']:.3f}  "
              f"{s['wall_s_per_1k']:.3f} s/1k")
    print(f"speed-up {rec['speed_up']:.1f}x; wrote {path}")


if __name__ == "__main__":
    main()
